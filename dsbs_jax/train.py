r"""Trains a model configured by gin; resumes from the latest checkpoint.

  python -m dsbs_jax.train \
    --gin_file=runs/dsbs.gin --gin_file=models/t5_1_1_base.gin \
    --gin.MODEL_DIR="'/tmp/dsbs'" --gin.TRAIN_STEPS=10000

Writes checkpoints (`checkpoint_<step>`), TensorBoard summaries (`train/`,
`eval_<split>/`) and the operative gin config (`config.gin`) to MODEL_DIR.
Killed at any moment, the same command continues from the last checkpoint and
sees exactly the batches an uninterrupted run would. On SIGTERM (what Cloud
TPU spot VMs send before they take the machine) or SIGINT it finishes the
current step, checkpoints it and exits normally, ready to resume.
"""

import collections
from collections.abc import Callable
import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
import gin
import jax
import numpy as np
import tensorflow as tf

from dsbs_jax import checkpoints
from dsbs_jax import data
from dsbs_jax import errors
from dsbs_jax import gin_utils
from dsbs_jax import inference
from dsbs_jax import models
from dsbs_jax import partitioning
from dsbs_jax import trainer as trainer_lib


@gin.configurable
def train(
  *,
  model: models.EncoderDecoderModel,
  train_dataset: data.DatasetConfig,
  model_dir: str,
  train_steps: int,
  partitioner: partitioning.Partitioner | None = None,
  trainer_cls: Callable[..., trainer_lib.Trainer] = trainer_lib.Trainer,
  checkpoint_period: int = 1000,
  keep_checkpoints: int | None = None,
  log_period: int = 100,
  eval_period: int | None = None,
  eval_split: str = 'validation',
  final_eval_split: str | None = None,
  write_rationales: bool = False,
  initial_checkpoint_path: str | None = None,
  max_consecutive_nonfinite_steps: int | None = 5,
  debug_nans: bool = False,
) -> trainer_lib.TrainState:
  """The training loop. Returns the final train state.

  Every `eval_period` steps the `eval_split` is decoded and scored; after the
  last step, `final_eval_split` too, writing predictions with generated
  rationales when `write_rationales`.

  SIGTERM or SIGINT ends the run after the current step, with a checkpoint
  of it (`_StopSignals`). A step with a non-finite loss or gradient norm
  changes nothing (the trainer skips it); `max_consecutive_nonfinite_steps`
  of them in a row stop the run (None: never). `debug_nans` turns on jax's
  NaN checker, which names the first operation that produces a NaN (slow).
  """
  _ensure_writable_dir(model_dir)
  if debug_nans:
    jax.config.update('jax_debug_nans', True)
  partitioner = partitioner or partitioning.Partitioner()
  try:  # Before any work, rather than at the first step.
    partitioner.check_batch_size(train_dataset.batch_size)
  except ValueError as e:
    raise gin_utils.GinConfigError(str(e)) from e
  trainer = trainer_cls(model=model, partitioner=partitioner)
  converter = model.FEATURE_CONVERTER_CLS(pack=train_dataset.pack)
  input_shapes = data.model_input_shapes(train_dataset, converter)
  checkpointer = checkpoints.TrainCheckpointer(
    model_dir, checkpoint_period, keep_checkpoints
  )
  state = _initial_state(
    trainer, checkpointer, input_shapes, initial_checkpoint_path
  )
  start_step = int(state.step)
  batches = data.get_batches(train_dataset, converter, start_step=start_step)
  writer = metric_writers.create_default_writer(
    os.path.join(model_dir, 'train'), just_logging=jax.process_index() > 0
  )

  def evaluation(split, rationales):
    dataset = dataclasses.replace(
      train_dataset, split=split, shuffle=False, pack=False
    )
    return inference.Evaluation(
      model,
      partitioner,
      dataset,
      jax.tree.map(lambda x: x.sharding, state.params),
      os.path.join(model_dir, f'eval_{split}'),
      write_rationales and rationales,
    )

  periodic_eval = evaluation(eval_split, False) if eval_period else None
  nonfinite = _NonFiniteSteps(max_consecutive_nonfinite_steps, checkpointer)
  # Examples and target tokens since the last log: this host's counts times
  # the number of hosts, an estimate of the global batches' (hosts' shards
  # differ a little where examples are packed).
  seen = np.zeros(2, np.int64)
  steps_since_log = 0
  last_log = time.time()
  with _StopSignals(checkpointer) as stop_signals, _flushing(writer):
    for step in range(start_step + 1, train_steps + 1):
      local_batch = next(batches)
      seen += np.array(data.batch_statistics(local_batch)) * jax.process_count()
      state, metrics = trainer.train_step(
        state, partitioner.global_batch(local_batch)
      )
      nonfinite.add(step, metrics)
      steps_since_log += 1
      if step == start_step + 1:
        _write_config(model_dir)
      if step % log_period == 0 or step == train_steps:
        values = trainer_lib.compute_metrics(metrics)  # Waits for the step.
        values.update(nonfinite.period_counts())
        elapsed = time.time() - last_log
        values.update(trainer_lib.throughput(steps_since_log, elapsed, *seen))
        writer.write_scalars(step, values)
        logging.info(
          'step %d/%d  loss %.4f  %.2f steps/s  ETA %s',
          step,
          train_steps,
          values['loss'],
          values['steps_per_second'],
          _eta(train_steps - step, values['steps_per_second']),
        )
        seen[:], steps_since_log, last_log = 0, 0, time.time()
      stop = stop_signals.reached(step)
      checkpointer.save(step, state, force=stop or step == train_steps)
      if stop:
        break
      if periodic_eval and (step % eval_period == 0 or step == train_steps):
        periodic_eval(state.params, step)
    nonfinite.settle()
    checkpointer.wait()  # Until the last checkpoint is committed.
    # With one process on its own, also true for a signal during that wait:
    # then the final evaluation is skipped too.
    preempted = stop_signals.reached(int(state.step))
  # Stop the endless input pipeline now: left to interpreter exit, its
  # threads (and the packer's Python generator) hold the process for seconds.
  del batches
  if preempted:
    stop_signals.report(train_steps, model_dir)
    return state
  if final_eval_split:
    evaluation(final_eval_split, True)(state.params, int(state.step))
  return state


class _StopSignals:
  """SIGTERM and SIGINT as a request to stop after the current step.

  Cloud TPU spot VMs and queued resources send SIGTERM a little while before
  they take the machine. Where jax's multi-host runtime runs
  (`jax.distributed.initialize`, with one process or many), its preemption
  service watches SIGTERM itself, so we leave that signal alone: it agrees on
  the first step every process can reach, which orbax's `reached_preemption`
  reports, and SIGINT is passed on to it as SIGTERM. Without it (one process
  on its own), a handler notes the signal and `reached` reports it after the
  step in flight. A second signal ends the process at once.
  """

  def __init__(self, checkpointer: checkpoints.TrainCheckpointer):
    self._checkpointer = checkpointer
    self._use_preemption_service = (
      jax.distributed.is_initialized()
      and jax.config.jax_enable_preemption_service
    )
    self._previous = {}
    # The name of the signal this process's handler got (with several
    # processes, jax's handler takes SIGTERM).
    self.received: str | None = None
    self.stopped_at: int | None = None

  def __enter__(self) -> '_StopSignals':
    if threading.current_thread() is threading.main_thread():
      signals = [signal.SIGINT]
      if not self._use_preemption_service:
        signals.append(signal.SIGTERM)
      for signum in signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      # None: a handler installed outside Python (jax's), which we never
      # replace; restore the default rather than fail.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()

  def reached(self, step: int) -> bool:
    """Whether to stop after `step` (the same answer on every process)."""
    if self._use_preemption_service:
      stop = self._checkpointer.reached_preemption(step)
    else:
      stop = self.received is not None
    if stop:
      self.stopped_at = step
    return stop

  def report(self, train_steps: int, model_dir: str) -> None:
    logging.warning(
      'Stopped at step %d of %d for a preemption signal (%s); its checkpoint '
      'is in %s. Rerunning the same command resumes from it.',
      self.stopped_at,
      train_steps,
      self.received or 'SIGTERM to one of the processes',
      model_dir,
    )

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.received is not None:  # The second one: no more waiting.
      previous = self._previous.pop(signum)
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
      signal.raise_signal(signum)
      return
    self.received = signal.Signals(signum).name
    logging.warning(
      '%s received: stopping after the current step (send it again to stop '
      'at once).',
      self.received,
    )
    if self._use_preemption_service:
      signal.raise_signal(signal.SIGTERM)  # To jax's preemption service.


class NonFiniteTrainingError(errors.UserError):
  """Too many steps in a row had a non-finite loss or gradient norm."""


class _NonFiniteSteps:
  """Counts the steps the trainer skipped for a non-finite loss, gradient
  norm or update, per log period and in total, and stops the run with
  `NonFiniteTrainingError` after `limit` in a row.

  Each step's flag is read one step late, when the device has (about)
  finished it, so the host never waits for the step it just dispatched.
  """

  def __init__(
    self, limit: int | None, checkpointer: checkpoints.TrainCheckpointer
  ):
    self._limit = limit
    self._checkpointer = checkpointer
    self._pending = collections.deque()  # (step, its flag, on device)
    self._in_period = self._total = self._in_a_row = 0

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    self._pending.append((step, metrics['nonfinite_steps']))
    while len(self._pending) > 1:
      self._check(*self._pending.popleft())

  def settle(self) -> None:
    while self._pending:
      self._check(*self._pending.popleft())

  def period_counts(self) -> dict[str, float]:
    """Skipped steps since the last call and since the run started."""
    self.settle()
    counts = {
      'nonfinite_steps': float(self._in_period),
      'nonfinite_steps_total': float(self._total),
    }
    self._in_period = 0
    return counts

  def _check(self, step: int, flag: Any) -> None:
    if not int(flag.compute()):
      self._in_a_row = 0
      return
    self._in_period += 1
    self._total += 1
    self._in_a_row += 1
    logging.warning(
      'Step %d skipped: its loss, gradient norm or update is not finite '
      '(%d in a row).',
      step,
      self._in_a_row,
    )
    if self._limit and self._in_a_row >= self._limit:
      last = self._checkpointer.latest_step()
      good = (
        f'the last good checkpoint is {self._checkpointer.step_dir(last)}'
        if last is not None
        else 'no checkpoint has been saved yet'
      )
      raise NonFiniteTrainingError(
        f'Training stopped at step {step}: {self._in_a_row} steps in a row '
        f'had a non-finite loss, gradient norm or update (they were '
        f'skipped); {good}. Lower the learning rate or check the data '
        '(--gin.train.train.debug_nans=True names the operation that first '
        'makes a NaN), then rerun to resume from it.'
      )


@contextlib.contextmanager
def _flushing(writer: metric_writers.MetricWriter):
  """Flushes the summaries at the end, also of a failed run (whose error
  then comes after the last steps' metrics in the log)."""
  try:
    yield
  except BaseException:
    with contextlib.suppress(Exception):
      writer.flush()
    raise
  writer.flush()


def _ensure_writable_dir(path: str) -> None:
  """Fails early, with a short message, when `path` cannot be written."""
  if '://' in path:  # Cloud storage: orbax reports problems itself.
    return
  try:
    os.makedirs(path, exist_ok=True)
    # One probe per host: hosts may share the folder (NFS, Lustre, GCSFuse).
    probe = os.path.join(path, f'.write_test.{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise gin_utils.GinConfigError(
      f'MODEL_DIR {path!r} cannot be written ({e.strerror}); choose another '
      'with --gin.MODEL_DIR=...'
    ) from e


def _write_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(model_dir, 'config.gin'), 'w') as f:
      f.write(gin.operative_config_str())


def _initial_state(
  trainer: trainer_lib.Trainer,
  checkpointer: checkpoints.TrainCheckpointer,
  input_shapes: dict[str, tuple[int, ...]],
  initial_checkpoint_path: str | None,
) -> trainer_lib.TrainState:
  """The newest checkpoint in MODEL_DIR, else a fresh state.

  A fresh state takes its parameters from `initial_checkpoint_path` when
  given, with a new optimizer state: another run of ours (its MODEL_DIR, for
  the newest checkpoint, or one `checkpoint_<step>` in it), or a t5x or
  HuggingFace checkpoint.
  """
  shapes, shardings = trainer.state_shapes_and_shardings(input_shapes)
  state = checkpointer.restore_latest(shapes, shardings)
  if state is not None:
    logging.info('Resuming from step %d.', int(state.step))
    return state
  params = None
  if initial_checkpoint_path:
    # Read shard by shard into the parameters' shardings.
    params, step = checkpoints.restore_params(
      initial_checkpoint_path,
      shapes.params,
      shardings.params,
      trainer.model.module.config,
    )
    logging.info(
      'Starting from the parameters of %s (step %d).',
      initial_checkpoint_path,
      step,
    )
  return trainer.init_state(input_shapes, params)


def _eta(steps_left: int, steps_per_second: float) -> str:
  seconds = int(steps_left / max(steps_per_second, 1e-9))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s'


def main() -> None:
  gin_utils.run(train)


if __name__ == '__main__':
  main()
