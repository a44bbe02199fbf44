r"""Trains a model configured by gin; resumes from the latest checkpoint.

  python -m dsbs_jax.train \
    --gin_file=runs/dsbs.gin --gin_file=models/t5_1_1_base.gin \
    --gin.MODEL_DIR="'/tmp/dsbs'" --gin.TRAIN_STEPS=10000

Writes checkpoints (`checkpoint_<step>`), TensorBoard summaries (`train/`,
`eval_<split>/`) and the operative gin config (`config.gin`) to MODEL_DIR.
Killed at any moment, the same command continues from the last checkpoint and
sees exactly the batches an uninterrupted run would.
"""

from collections.abc import Callable
import dataclasses
import os
import time

from absl import logging
from clu import metric_writers
import jax
import numpy as np
import tensorflow as tf

from dsbs_jax import checkpoints
from dsbs_jax import data
from dsbs_jax import eval as eval_lib
from dsbs_jax import gin_utils
from dsbs_jax import models
from dsbs_jax import partitioning
from dsbs_jax import trainer as trainer_lib
import gin


def ensure_writable_dir(path: str) -> None:
  """Fails early, with a short message, when `path` cannot be written."""
  if '://' in path:  # Cloud storage: orbax reports problems itself.
    return
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise gin_utils.GinConfigError(
      f'MODEL_DIR {path!r} cannot be written ({e.strerror}); choose another '
      'with --gin.MODEL_DIR=...'
    ) from e


def write_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(model_dir, 'config.gin'), 'w') as f:
      f.write(gin.operative_config_str())


def initial_state(
  trainer: trainer_lib.Trainer,
  checkpointer: checkpoints.TrainCheckpointer,
  input_shapes: dict[str, tuple[int, ...]],
  initial_checkpoint_path: str | None,
) -> trainer_lib.TrainState:
  """The newest checkpoint in MODEL_DIR, else a fresh state.

  A fresh state takes its parameters from `initial_checkpoint_path` (a t5x
  or HuggingFace checkpoint) when given, with a new optimizer state.
  """
  shapes, shardings = trainer.state_shapes_and_shardings(input_shapes)
  state = checkpointer.restore_latest(shapes, shardings)
  if state is not None:
    logging.info('Resuming from step %d.', int(state.step))
    return state
  params = None
  if initial_checkpoint_path:
    params = checkpoints.load_params(
      initial_checkpoint_path, trainer.model.module.config
    )
  return trainer.init_state(input_shapes, params)


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
  rationale_prefix: str | None = None,
  label_prefix: str = '[label] ',
  initial_checkpoint_path: str | None = None,
) -> trainer_lib.TrainState:
  """The training loop. Returns the final train state.

  Every `eval_period` steps the `eval_split` is decoded and scored; after the
  last step, `final_eval_split` too, writing predictions with generated
  rationales when `rationale_prefix` is given.
  """
  ensure_writable_dir(model_dir)
  partitioner = partitioner or partitioning.Partitioner()
  trainer = trainer_cls(model=model, partitioner=partitioner)
  converter = model.FEATURE_CONVERTER_CLS(pack=train_dataset.pack)
  input_shapes = data.model_input_shapes(train_dataset, converter)
  checkpointer = checkpoints.TrainCheckpointer(
    model_dir, checkpoint_period, keep_checkpoints
  )
  state = initial_state(
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
    return eval_lib.Evaluation(
      model,
      partitioner,
      dataset,
      jax.tree.map(lambda x: x.sharding, state.params),
      os.path.join(model_dir, f'eval_{split}'),
      rationale_prefix if rationales else None,
      label_prefix,
    )

  periodic_eval = evaluation(eval_split, False) if eval_period else None
  # Examples and target tokens since the last log, from all hosts' batches.
  seen = np.zeros(2, np.int64)
  steps_since_log = 0
  last_log = time.time()
  for step in range(start_step + 1, train_steps + 1):
    local_batch = next(batches)
    seen += np.array(data.batch_statistics(local_batch)) * jax.process_count()
    state, metrics = trainer.train_step(
      state, partitioner.global_batch(local_batch)
    )
    steps_since_log += 1
    if step == start_step + 1:
      write_config(model_dir)
    if step % log_period == 0 or step == train_steps:
      values = trainer_lib.compute_metrics(metrics)  # Waits for the step.
      elapsed = time.time() - last_log
      values.update(throughput(steps_since_log, elapsed, *seen))
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
    checkpointer.save(step, state, force=step == train_steps)
    if periodic_eval and (step % eval_period == 0 or step == train_steps):
      periodic_eval(state.params, step)
  checkpointer.wait()
  writer.flush()
  if final_eval_split:
    evaluation(final_eval_split, True)(state.params, int(state.step))
  return state


def throughput(
  steps: int, seconds: float, examples: int, target_tokens: int
) -> dict[str, float]:
  seconds = max(seconds, 1e-9)
  return {
    'steps_per_second': steps / seconds,
    'examples_per_second': examples / seconds,
    'target_tokens_per_second': target_tokens / seconds,
  }


def _eta(steps_left: int, steps_per_second: float) -> str:
  seconds = int(steps_left / max(steps_per_second, 1e-9))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s'


def main(argv) -> None:
  del argv
  gin_utils.parse_gin_flags()
  partitioning.initialize_distributed()
  with gin_utils.config_errors():
    train()


def console_main() -> None:
  gin_utils.run(main)


if __name__ == '__main__':
  # Run the package module: gin configures its functions, not __main__'s.
  from dsbs_jax import train as module  # pylint: disable=g-import-not-at-top

  module.console_main()
