"""The train, eval and infer binaries as a user runs them (subprocesses)."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from conftest import T5X_TINY_DIR
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

# End to end: the binaries in subprocesses, each compiling and training.
pytestmark = pytest.mark.slow

# A tiny DSbS run on the synthetic data set: seconds per hundred steps on CPU.
TINY_RUN = [
  '--gin_file=runs/dsbs.gin',
  '--gin_file=models/t5_1_1_tiny.gin',
  "--gin.DATASET='synthetic'",
  '--gin.BATCH_SIZE=16',
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 48}",
  '--gin.LEARNING_RATE=0.01',
  '--gin.EVAL_PERIOD=None',
  '--gin.train.train.log_period=1',
]


_COMPILATION_CACHE = {}


@pytest.fixture(autouse=True, scope='module')
def _shared_compilation_cache(tmp_path_factory):
  """The binaries' runs share jax's persistent compilation cache, so the
  second run of the same configuration does not compile again."""
  _COMPILATION_CACHE['dir'] = str(tmp_path_factory.mktemp('jax_cache'))


def binary_env() -> dict[str, str]:
  """One CPU device, quiet TensorFlow, this Python's console scripts first on
  PATH, and the shared compilation cache when there is one."""
  env = dict(
    os.environ,
    XLA_FLAGS='',
    JAX_PLATFORMS='cpu',
    TF_CPP_MIN_LOG_LEVEL='2',
    PATH=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get('PATH', '')]
    ),
  )
  if 'dir' in _COMPILATION_CACHE:
    env.update(
      JAX_COMPILATION_CACHE_DIR=_COMPILATION_CACHE['dir'],
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )
  return env


def run_binary(
  binary: str, *args: str, timeout: int = 600
) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', f'dsbs_jax.{binary}', *args],
    capture_output=True,
    text=True,
    env=binary_env(),
    timeout=timeout,
    check=False,
  )


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def scalars(log_dir: Path, tag: str) -> list[dict[int, float]]:
  """{step: value} of `tag` in each TensorBoard event file, oldest first."""
  runs = []
  for path in sorted(
    log_dir.glob('events.out.tfevents.*'),
    key=lambda p: int(p.name.split('.')[3]),
  ):
    values = {}
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
    runs.append(values)
  return runs


def final_params(model_dir: Path, step: int):
  directory = (model_dir / f'checkpoint_{step}' / 'default').absolute()
  return ocp.PyTreeCheckpointer().restore(directory)['params']


def test_train_lowers_the_loss_then_eval_and_infer_read_the_checkpoint(
  tmp_path,
):
  model_dir = tmp_path / 'run'
  common = [*TINY_RUN, f"--gin.MODEL_DIR='{model_dir}'"]
  _ok(
    run_binary(
      'train', *common, '--gin.TRAIN_STEPS=80', '--gin.CHECKPOINT_PERIOD=40'
    )
  )
  [losses] = scalars(model_dir / 'train', 'loss')
  assert sorted(losses) == list(range(1, 81))
  first = np.mean([losses[s] for s in range(1, 6)])
  last = np.mean([losses[s] for s in range(76, 81)])
  assert last < 0.5 * first, (first, last)
  assert (model_dir / 'config.gin').read_text().count('TRAIN_STEPS = 80')

  result = _ok(
    run_binary(
      'eval',
      *common,
      '--gin_file=runs/eval.gin',
      "--gin.EVAL_SPLIT='validation'",
    )
  )
  metrics = json.loads(
    (model_dir / 'eval_validation' / 'metrics.json').read_text()
  )
  assert metrics['step'] == 80
  [task_metrics] = metrics['metrics'].values()
  assert 0.0 <= task_metrics['accuracy'] <= 1.0
  assert 'accuracy = ' in result.stdout

  output = tmp_path / 'predictions.jsonl'
  _ok(
    run_binary(
      'infer',
      *common,
      '--gin_file=runs/infer.gin',
      f"--gin.OUTPUT_PATH='{output}'",
    )
  )
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(records) == 100  # the synthetic test split
  for record in records:
    assert record['input'].startswith('[label] ')
    assert {'prediction', 'target', 'score', 'rationale'} <= set(record)
    assert record['score'] <= 0.0  # a log-probability


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
  steps, period = 150, 30
  args = [
    *TINY_RUN,
    f'--gin.TRAIN_STEPS={steps}',
    f'--gin.CHECKPOINT_PERIOD={period}',
    '--gin.KEEP_CHECKPOINTS=None',
  ]
  straight = tmp_path / 'straight'
  _ok(run_binary('train', *args, f"--gin.MODEL_DIR='{straight}'"))

  killed = tmp_path / 'killed'
  process = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'dsbs_jax.train',
      *args,
      f"--gin.MODEL_DIR='{killed}'",
    ],
    env=binary_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while not (killed / f'checkpoint_{period}').exists():
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = sorted(
    int(p.name.split('_')[1])
    for p in killed.glob('checkpoint_*')
    if p.name.split('_')[1].isdigit()
  )
  assert process.returncode == -signal.SIGKILL and saved[-1] < steps

  _ok(run_binary('train', *args, f"--gin.MODEL_DIR='{killed}'"))
  # The same program on the same values: the very same bits.
  want, got = final_params(straight, steps), final_params(killed, steps)
  for a, b in zip(jax_leaves(want), jax_leaves(got)):
    np.testing.assert_array_equal(b, a)
  # The resumed run logs each step after its checkpoint exactly once.
  *_, resumed = scalars(killed / 'train', 'loss')
  assert sorted(resumed) == list(range(saved[-1] + 1, steps + 1))
  [uninterrupted] = scalars(straight / 'train', 'loss')
  for step in resumed:
    assert resumed[step] == uninterrupted[step], step


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top

  return jax.tree.leaves(tree)


def _short_error(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  return result.stderr.strip().splitlines()[-1]


def test_configuration_mistakes_stop_with_a_short_message(tmp_path):
  model_dir = f"--gin.MODEL_DIR='{tmp_path / 'run'}'"
  message = _short_error(
    run_binary(
      'train', *TINY_RUN, model_dir, '--gin.trainer.Trainer.num_microbatchs=2'
    )
  )
  assert "doesn't have a parameter named 'num_microbatchs'" in message

  message = _short_error(
    run_binary('train', '--gin_file=runs/no_such_run.gin', model_dir)
  )
  assert 'runs/no_such_run.gin' in message

  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  message = _short_error(
    run_binary('train', *TINY_RUN, f"--gin.MODEL_DIR='{blocker / 'run'}'")
  )
  assert 'MODEL_DIR' in message and 'cannot be written' in message

  message = _short_error(
    run_binary(
      'train',
      *TINY_RUN,
      model_dir,
      '--gin.network.T5Config.mlp_dim=48',
      f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY_DIR}/legacy_checkpoint_400'",
    )
  )
  assert 'mlp/wi_0/kernel' in message and '(32, 64)' in message
