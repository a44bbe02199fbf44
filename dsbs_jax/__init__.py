"""dsbs_jax: Distilling step-by-step (Hsieh et al., 2023) on a t5x-compatible JAX/Flax T5 stack."""

__version__ = "0.1.0"
