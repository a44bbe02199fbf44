"""A checkpoint that cannot be written ends the run with one line and leaves
the earlier checkpoints restorable."""

import errno
from pathlib import Path
import resource
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_binaries import TINY_RUN
from test_binaries import _shared_compilation_cache  # noqa: F401 (autouse)
from test_binaries import binary_env
from test_binaries import run_binary

from dsbs_jax import checkpoint_import
from dsbs_jax import checkpoints
from dsbs_jax import trainer

PERIOD = 20


def _restore(model_dir: Path, step: int):
  return ocp.PyTreeCheckpointer().restore(
    (model_dir / f'checkpoint_{step}' / 'default').absolute()
  )


@pytest.fixture(scope='module')
def reference_checkpoint(tmp_path_factory):
  """The train state an undisturbed run saves at step PERIOD."""
  model_dir = tmp_path_factory.mktemp('reference')
  result = run_binary(
    'train',
    *TINY_RUN,
    f'--gin.TRAIN_STEPS={PERIOD}',
    f"--gin.MODEL_DIR='{model_dir}'",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return _restore(model_dir, PERIOD)


@pytest.mark.slow
@pytest.mark.parametrize(
  'steps,file_size_limit',
  [(100, 0), (2 * PERIOD, 64 * 1024)],
  ids=['nothing_writable_seen_by_the_next_save', 'data_too_big_seen_by_wait'],
)
def test_a_failed_save_stops_the_run_and_keeps_earlier_checkpoints(
  tmp_path, steps, file_size_limit, reference_checkpoint
):
  """The fault is real and hits orbax's own write path: once the first
  periodic checkpoint is committed, the test lowers the running process's
  RLIMIT_FSIZE (`prlimit`), so that writing a file past that size fails
  with EFBIG, "File too large" (Python ignores SIGXFSZ), as a full disk
  fails with ENOSPC. (chmod cannot be used: the tests run as root.)

  - 0 bytes, 100 steps: nothing can be written any more (orbax's JSON
    metadata and tensorstore's array files alike), seen by the next save
    (orbax saves asynchronously: save N + 1 reports the failure of save N).
  - 64 KiB, 40 steps: small files (summaries, orbax's JSON) still work but
    the checkpoint's array data, one ~0.5 MB tensorstore file, does not (a
    tensorstore error); the failing save is the last, seen by the final
    wait for it.

  Summaries are written only at the last step, so that with 100 steps the
  checkpoint is the first file the limit hits.
  """
  args = [
    *TINY_RUN,
    f'--gin.TRAIN_STEPS={steps}',
    f'--gin.CHECKPOINT_PERIOD={PERIOD}',
    '--gin.KEEP_CHECKPOINTS=None',
    '--gin.train.train.log_period=1000',
  ]
  model_dir = tmp_path / 'run'
  process = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'dsbs_jax.train',
      *args,
      f"--gin.MODEL_DIR='{model_dir}'",
    ],
    env=binary_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 300
  while not (model_dir / f'checkpoint_{PERIOD}').exists():
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.005)
  limit = (file_size_limit, file_size_limit)
  resource.prlimit(process.pid, resource.RLIMIT_FSIZE, limit)
  _, stderr = process.communicate(timeout=300)

  assert process.returncode == 2, stderr[-3000:]
  message = stderr.strip().splitlines()[-1]
  print(message)
  # Orbax logs its failed threads; the run itself ends with no traceback.
  assert 'In call to configurable' not in stderr
  assert message.startswith(
    f'Could not write a checkpoint to {model_dir}: [Errno {errno.EFBIG}] '
    'File too large.'
  )
  assert f'the newest intact one is {model_dir}/checkpoint_{PERIOD}' in message
  # The failed save left no checkpoint_40, only its temporary directory;
  # orbax (a resumed run) picks checkpoint_20.
  assert checkpoints.finished_steps(str(model_dir))[-1] == PERIOD
  assert list(model_dir.glob(f'checkpoint_{2 * PERIOD}.orbax-checkpoint-tmp*'))
  manager = ocp.CheckpointManager(
    model_dir.absolute(),
    options=ocp.CheckpointManagerOptions(
      step_prefix=checkpoints.CHECKPOINT_PREFIX, read_only=True
    ),
  )
  assert manager.latest_step() == PERIOD

  # It restores: its step, finite values equal to what a run that was never
  # disturbed saved at that step.
  saved = _restore(model_dir, PERIOD)
  assert int(saved['step']) == PERIOD
  leaves = jax.tree.leaves(saved)
  assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == 'f')
  reference = jax.tree.leaves(reference_checkpoint)
  assert len(reference) == len(leaves)
  for want, got in zip(reference, leaves):
    np.testing.assert_array_equal(got, want)


def test_storage_errors_are_told_from_bugs():
  assert (
    checkpoints.storage_error(OSError(errno.ENOSPC, 'No space left on device'))
    == '[Errno 28] No space left on device'
  )
  tensorstore = ValueError(
    'OUT_OF_RANGE: Error writing local file "/x/_sharding": Failed to write '
    "202 bytes to file 5: File too large [os_error_code='27'] [tensorstore"
  )
  assert checkpoints.storage_error(tensorstore) == '[Errno 27] File too large'
  wrapped = RuntimeError('save failed')
  wrapped.__cause__ = PermissionError(errno.EACCES, 'Permission denied')
  assert checkpoints.storage_error(wrapped) == '[Errno 13] Permission denied'
  cloud = ValueError('PERMISSION_DENIED: gs://bucket/run: access denied\nmore')
  assert checkpoints.storage_error(cloud) == (
    'PERMISSION_DENIED: gs://bucket/run: access denied'
  )
  assert checkpoints.storage_error(TypeError('a bug')) is None


def test_resuming_a_state_of_another_optimizer_says_so(tmp_path):
  """A MODEL_DIR written with another optimizer (Adafactor's factored state
  against AdamW's moments, say): one CheckpointError, not orbax's traceback."""
  params = {'w': np.ones((2, 3), np.float32)}

  def state(opt_state):
    return trainer.TrainState(
      step=np.int32(4), params=params, opt_state=opt_state
    )

  saver = checkpoints.TrainCheckpointer(str(tmp_path), period=1)
  saver.save(4, state({'v_row': np.zeros(2, np.float32)}))
  saver.wait()
  other = state(
    {'mu': np.zeros((2, 3), np.float32), 'nu': np.zeros((2, 3), np.float32)}
  )
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), other)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree.map(lambda _: device, other)
  with pytest.raises(
    checkpoint_import.CheckpointError, match='another optimizer'
  ):
    checkpoints.TrainCheckpointer(str(tmp_path), period=1).restore_latest(
      shapes, shardings
    )
