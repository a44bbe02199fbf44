"""Non-finite steps: skipped without changing the state, counted in the
metrics, and too many in a row stop the run with one line.

Faults are injected through the data: a batch whose loss weights are
infinite has a non-finite loss and gradients (no hook in the code)."""

import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from test_binaries import TINY_RUN
from test_binaries import _shared_compilation_cache  # noqa: F401 (autouse)
from test_binaries import binary_env
from test_trainer import CONFIG
from test_trainer import VOCABULARY

from dsbs_jax import checkpoints
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import partitioning
from dsbs_jax import trainer as trainer_lib


def _batch(seed: int, poisoned: bool = False) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  targets = rng.integers(2, CONFIG.vocab_size, (4, 6)).astype(np.int32)
  decoder_inputs = np.zeros_like(targets)
  decoder_inputs[:, 1:] = targets[:, :-1]
  weights = np.ones(targets.shape, np.float32)
  if poisoned:
    weights[0, 0] = np.inf
  return {
    'encoder_input_tokens': rng.integers(2, 64, (4, 8)).astype(np.int32),
    'decoder_input_tokens': decoder_inputs,
    'decoder_target_tokens': targets,
    'decoder_loss_weights': weights,
  }


def _run(optimizer, batches):
  """Host copies of the state after each step, and each step's metrics."""
  partitioner = partitioning.Partitioner(
    mesh_shape=(1, 1), devices=jax.devices()[:1]
  )
  model = models.EncoderDecoderModel(
    network.Transformer(CONFIG), VOCABULARY, VOCABULARY
  )
  trainer = trainer_lib.Trainer(model, partitioner, optimizer)
  state = trainer.init_state({k: v.shape for k, v in batches[0].items()})
  states, metrics = [jax.device_get(state)], []
  for batch in batches:
    state, step_metrics = trainer.train_step(
      state, partitioner.shard_full_batch(batch)
    )
    states.append(jax.device_get(state))
    metrics.append(trainer_lib.compute_metrics(step_metrics))
  return states, metrics


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_a_nonfinite_step_changes_neither_parameters_nor_optimizer_state():
  adamw = trainer_lib.adamw(1e-2, weight_decay=0.1)
  states, metrics = _run(
    adamw, [_batch(1), _batch(2, True), _batch(3, True), _batch(4)]
  )
  assert [int(s.step) for s in states] == [0, 1, 2, 3, 4]
  assert [m['nonfinite_steps'] for m in metrics] == [0, 1, 1, 0]
  assert not np.isfinite(metrics[1]['loss'])
  for skipped in states[2:4]:
    _assert_same(skipped.params, states[1].params)
    _assert_same(skipped.opt_state, states[1].opt_state)
  # The step after them is the one a run without those batches takes.
  clean, clean_metrics = _run(adamw, [_batch(1), _batch(4)])
  _assert_same(states[4].params, clean[2].params)
  _assert_same(states[4].opt_state, clean[2].opt_state)
  assert metrics[3]['loss'] == clean_metrics[1]['loss']


@pytest.mark.slow
def test_an_update_that_overflows_is_skipped_too():
  """Finite loss and gradients, but the new parameters would not be."""
  overflowing = optax.stateless(
    lambda updates, params: jax.tree.map(lambda u: u * jnp.inf, updates)
  )
  states, [metrics] = _run(overflowing, [_batch(1)])
  assert np.isfinite(metrics['loss']) and np.isfinite(metrics['grad_norm'])
  assert metrics['nonfinite_steps'] == 1
  _assert_same(states[1].params, states[0].params)


# The train binary with infinite loss weights at the steps given first.
_POISONED_TRAIN = textwrap.dedent(
  """
  import sys
  import numpy as np
  from dsbs_jax import data, gin_utils, train

  poisoned = {int(s) for s in sys.argv.pop(1).split(',')}
  get_batches = data.get_batches

  def poisoned_batches(config, converter, start_step=0, **kwargs):
    batches = get_batches(config, converter, start_step=start_step, **kwargs)
    for step, batch in enumerate(batches, start=start_step + 1):
      weights = batch['decoder_loss_weights'].astype(np.float32)
      if step in poisoned:
        weights = np.where(weights > 0, np.inf, 0).astype(np.float32)
      yield dict(batch, decoder_loss_weights=weights)

  data.get_batches = poisoned_batches
  gin_utils.run(train.train)
  """
)
SKIPPED_BUT_GOING_ON = range(11, 15)  # 4 in a row: below the limit of 5
SKIPPED_TO_THE_END = range(21, 41)  # the 5th in a row, step 25, stops it


def _logged_metrics(stderr: str) -> dict[int, dict[str, float]]:
  """{step: {name: value}} from clu's logging writer lines."""
  logged = {}
  for step, values in re.findall(
    r'logging_writer.py:\d+\] \[(\d+)\] (.*)', stderr
  ):
    pairs = (pair.split('=') for pair in values.split(', '))
    logged[int(step)] = {name: float(value) for name, value in pairs}
  return logged


@pytest.mark.slow
def test_the_binary_skips_counts_and_stops_after_the_limit(tmp_path):
  model_dir = tmp_path / 'run'
  poisoned = [*SKIPPED_BUT_GOING_ON, *SKIPPED_TO_THE_END]
  result = subprocess.run(
    [
      sys.executable,
      '-c',
      _POISONED_TRAIN,
      ','.join(map(str, poisoned)),
      *TINY_RUN,
      '--gin.TRAIN_STEPS=40',
      '--gin.CHECKPOINT_PERIOD=2',
      '--gin.KEEP_CHECKPOINTS=None',
      f"--gin.MODEL_DIR='{model_dir}'",
    ],
    capture_output=True,
    text=True,
    env=binary_env(),
    timeout=600,
    check=False,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  message = result.stderr.strip().splitlines()[-1]
  print(message)
  assert message.startswith(
    'Training stopped at step 25: 5 steps in a row had a non-finite loss, '
    'gradient norm or update (they were skipped); the last good checkpoint '
    f'is {model_dir}/checkpoint_24.'
  )
  assert 'In call to configurable' not in result.stderr  # no traceback
  skipped = [
    int(s) for s in re.findall(r'Step (\d+) skipped: its loss', result.stderr)
  ]
  assert skipped == [*SKIPPED_BUT_GOING_ON, *range(21, 26)]

  # Counted per log period (here one step) and in total.
  logged = _logged_metrics(result.stderr)
  assert sorted(logged) == list(range(1, 25))
  for step, values in logged.items():
    assert values['nonfinite_steps'] == (step in poisoned), step
  total = {
    step: values['nonfinite_steps_total'] for step, values in logged.items()
  }
  assert (total[10], total[14], total[20], total[24]) == (0, 4, 4, 8)

  # The skipped steps changed nothing: checkpoints inside a run of them
  # hold the state of the step before it; no checkpoint holds a NaN.
  def state(step):
    return ocp.PyTreeCheckpointer().restore(
      (model_dir / f'checkpoint_{step}' / 'default').absolute()
    )

  saved = checkpoints.finished_steps(str(model_dir))
  assert saved[-1] == 24
  for step in saved:
    leaves = jax.tree.leaves(state(step))
    assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == 'f')
  for first, later in [(10, 12), (10, 14), (20, 22), (20, 24)]:
    a, b = state(first), state(later)
    assert int(b['step']) == later
    _assert_same(a['params'], b['params'])
    _assert_same(a['opt_state'], b['opt_state'])
  changed = jax.tree.leaves(
    jax.tree.map(
      lambda a, b: bool(np.any(a != b)),
      state(14)['params'],
      state(16)['params'],
    )
  )
  assert any(changed)  # steps 15 and 16 trained
