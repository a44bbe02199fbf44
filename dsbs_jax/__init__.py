"""dsbs_jax: Distilling step-by-step (Hsieh et al., 2023) on a JAX/Flax T5.

The T5 stack is t5x-compatible: its parameters are t5x's.
"""

__version__ = '0.1.0'
