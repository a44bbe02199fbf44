"""Shared test fixtures: reference paths and the t5x reference's tiny T5.

Everything the default suite reads is in tests/testdata, so it passes on a
bare clone: the t5x reference (t5x_tiny/) and a sample of the released data
in the release's layout (datasets/). Tests that need the whole release take
its directory from the environment variable DSBS_TEST_DATA_DIR (.ci/run sets
it to ../shared/data/datasets) and skip, naming it, where it is unset.
"""

import os
from pathlib import Path

# Tests run on the CPU, with 8 simulated devices for the sharding tests.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from dsbs_jax import checkpoint_import  # pylint: disable=g-import-not-at-top
from dsbs_jax import network  # pylint: disable=g-import-not-at-top

TESTDATA_DIR = Path(__file__).resolve().parent / 'testdata'
# A verbatim copy of the reference written by the real t5x (its README).
T5X_TINY_DIR = TESTDATA_DIR / 't5x_tiny'
# A few dozen records per split of the release, with their teacher
# completions (its README says which).
SAMPLE_DATA_DIR = TESTDATA_DIR / 'datasets'

# The full release data (cqa, svamp; esnli and anli1 validation), if given.
FULL_DATA_ENV = 'DSBS_TEST_DATA_DIR'
FULL_DATA_DIR = (
  Path(os.environ[FULL_DATA_ENV]).resolve()
  if os.environ.get(FULL_DATA_ENV)
  else None
)
_NO_FULL_DATA = (
  f'needs the full release data: set {FULL_DATA_ENV} to its directory '
  '(as .ci/run does, ../shared/data/datasets)'
)


@pytest.fixture
def release_data_dir() -> Path:
  """The full release data, for tests that only make sense on all of it;
  skips where DSBS_TEST_DATA_DIR is unset."""
  if FULL_DATA_DIR is None:
    pytest.skip(_NO_FULL_DATA)
  if not FULL_DATA_DIR.is_dir():
    pytest.fail(f'{FULL_DATA_ENV}={FULL_DATA_DIR}: not a directory')
  return FULL_DATA_DIR


@pytest.fixture(params=['sample', 'full'])
def any_data_dir(request) -> Path:
  """The sample, then the full release data (skipped where not given)."""
  if request.param == 'sample':
    return SAMPLE_DATA_DIR
  return request.getfixturevalue('release_data_dir')


@pytest.fixture
def tiny_config() -> network.T5Config:
  """The configuration of the t5x reference, T5X_TINY_DIR (its README)."""
  return network.T5Config(
    vocab_size=384,
    emb_dim=32,
    num_heads=4,
    head_dim=8,
    mlp_dim=64,
    mlp_activations=('gelu', 'linear'),
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
    logits_via_embedding=False,
  )


@pytest.fixture(scope='session')
def expected() -> dict[str, np.ndarray]:
  """What t5x computed from its checkpoint: logits, loss, decodes (README)."""
  return dict(np.load(T5X_TINY_DIR / 'expected.npz'))


@pytest.fixture(scope='session')
def reference_params():
  """The parameters t5x wrote (its legacy checkpoint), in our tree."""
  return checkpoint_import.load_params(T5X_TINY_DIR / 'legacy_checkpoint_400')


def reference_batch(expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The batch t5x computed `expected`'s logits and loss on."""
  names = (
    'encoder_input_tokens',
    'decoder_input_tokens',
    'decoder_target_tokens',
  )
  return {name: expected[name] for name in names}


def task_example_dataset(examples) -> tf.data.Dataset:
  """Examples ({'inputs': ids, 'targets': ids, 'task': 1 or 2}) as the
  dataset a feature converter takes."""
  signature = {
    'inputs': tf.TensorSpec([None], tf.int32),
    'targets': tf.TensorSpec([None], tf.int32),
    'task': tf.TensorSpec([], tf.int32),
  }
  return tf.data.Dataset.from_generator(
    lambda: iter(examples), output_signature=signature
  )
