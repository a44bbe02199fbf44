"""dsbs_jax: Distilling step-by-step on a t5x-compatible JAX/Flax T5 stack."""

import setuptools

_CORE = [
  'absl-py',
  'clu>=0.0.12',
  'flax>=0.12.8',
  'gin-config>=0.5.0',
  'jax>=0.10.2',
  'matplotlib',
  'msgpack',
  'numpy>=2.0',
  'openai>=1.0',
  'optax>=0.2.8',
  'orbax-checkpoint>=0.12.8',
  'safetensors',
  'seqio>=0.0.20',
  'sentencepiece',
  'tensorflow-cpu>=2.21.0',
  'tensorboard',
  'tensorflow-datasets>=4.9.10',
  'tensorstore>=0.1.86',
  'tqdm',
]

setuptools.setup(
  name='dsbs_jax',
  version='0.1.0',
  description=(
    'Distilling step-by-step (Hsieh et al., 2023) with a '
    't5x-compatible JAX/Flax T5 trainer.'
  ),
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  python_requires='>=3.11',
  # gin/ ships inside the package as dsbs_jax/gin (gin_utils finds either).
  # tasks/ installs as `dsbs_tasks`: a top-level `tasks` is a generic name
  # that other installs may also claim.
  packages=['dsbs_jax', 'dsbs_jax.gin', 'dsbs_tasks'],
  package_dir={'dsbs_jax.gin': 'gin', 'dsbs_tasks': 'tasks'},
  package_data={
    'dsbs_jax.gin': ['*/*.gin'],
    'dsbs_tasks': ['prompts/*.txt', 'prompts/*.jsonl'],
  },
  install_requires=_CORE,
  extras_require={
    'test': ['pytest>=8', 'torch==2.13.0', 'transformers>=5.0', 'ruff==0.17.6'],
    'tpu': ['jax[tpu]'],
    # libtpu, the TPU compiler, for tools/aot_compile.py on any machine.
    'aot': ['jax[tpu]'],
    'gpu': ['jax[cuda12]'],
    # t5x is not on PyPI: install it from its repository (see README.md).
    't5x': [],
  },
  entry_points={
    'console_scripts': [
      'dsbs-train = dsbs_jax.train:main',
      'dsbs-eval = dsbs_jax.eval:main',
      'dsbs-infer = dsbs_jax.infer:main',
      'dsbs-export-hf = dsbs_jax.export_hf:main',
      'dsbs-annotate = dsbs_tasks.annotate:main',
      'dsbs-data-efficiency = dsbs_tasks.data_efficiency:main',
      'dsbs-lengths = dsbs_tasks.lengths:main',
    ],
  },
)
