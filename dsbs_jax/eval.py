r"""Evaluates a checkpoint: generation on a task split and the task's metrics.

  python -m dsbs_jax.eval --gin_file=runs/dsbs.gin --gin_file=runs/eval.gin \
    --gin_file=models/t5_1_1_base.gin --gin.MODEL_DIR="'/tmp/dsbs'"

Reads the newest checkpoint in MODEL_DIR (or CHECKPOINT_PATH: one of ours, a
t5x or a HuggingFace checkpoint) and writes under MODEL_DIR/eval_<split>/:
seqio's TensorBoard summaries and predictions, `metrics.json`, and with
RATIONALE_PREFIX set `predictions_<step>.jsonl` with generated rationales.
"""

import json
import os
from typing import Any

from absl import logging
import jax
import tensorflow as tf

from dsbs_jax import checkpoints
from dsbs_jax import data
from dsbs_jax import gin_utils
from dsbs_jax import inference
from dsbs_jax import models
from dsbs_jax import partitioning
from dsbs_jax import trainer
import gin


class Evaluation:
  """Metrics (and optionally predictions with rationales) of one split.

  Built once per run and called with the parameters of each step, so the
  decode function compiles once.
  """

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    partitioner: partitioning.Partitioner,
    dataset: data.DatasetConfig,
    params_shardings: Any,
    out_dir: str,
    rationale_prefix: str | None = None,
    label_prefix: str = '[label] ',
    num_examples: int | None = None,
  ):
    self.dataset = dataset
    self.num_examples = num_examples
    self.out_dir = out_dir
    self.rationale_prefix = rationale_prefix
    self.label_prefix = label_prefix
    self.evaluator = inference.make_evaluator(
      dataset.mixture_or_task_name,
      model,
      dataset.task_feature_lengths,
      dataset.split,
      out_dir,
      num_examples,
    )
    self.predictor = inference.Predictor(
      model, partitioner, dataset.batch_size, params_shardings
    )

  def __call__(self, params: Any, step: int) -> dict[str, dict[str, Any]]:
    results = inference.evaluate(self.predictor, params, self.evaluator, step)
    if jax.process_index() == 0:
      tf.io.gfile.makedirs(self.out_dir)
      with tf.io.gfile.GFile(
        os.path.join(self.out_dir, 'metrics.json'), 'w'
      ) as f:
        json.dump({'step': step, 'metrics': results}, f, indent=2, default=str)
    if self.rationale_prefix is not None:
      records = inference.predict_split(
        self.predictor,
        params,
        self.dataset.mixture_or_task_name,
        self.dataset.task_feature_lengths,
        self.dataset.split,
        self.dataset.use_cached,
        self.rationale_prefix,
        self.label_prefix,
        self.num_examples,
      )
      path = os.path.join(self.out_dir, f'predictions_{step}.jsonl')
      if jax.process_index() == 0:
        inference.write_jsonl(records, path)
        print(f'Wrote {len(records)} predictions with rationales to {path}')
    for task, metrics in results.items():
      logging.info('%s (step %d): %s', task, step, metrics)
      print(
        f'{task} ({self.dataset.split}, step {step}): '
        + ', '.join(
          f'{k} = {v:.4f}' if isinstance(v, float) else f'{k} = {v}'
          for k, v in metrics.items()
        )
      )
    return results


def restore_for_inference(
  model: models.EncoderDecoderModel,
  dataset: data.DatasetConfig,
  partitioner: partitioning.Partitioner,
  path: str,
  dtype: str | None,
) -> tuple[Any, Any, int]:
  """Sharded parameters, their shardings and their step."""
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  input_shapes = data.model_input_shapes(dataset, converter)
  shapes, shardings = trainer.param_shapes_and_shardings(
    model, partitioner, input_shapes
  )
  params, step = checkpoints.restore_params(
    path, shapes, shardings, model.module.config, dtype
  )
  return params, shardings, step


@gin.configurable
def evaluate(
  *,
  model: models.EncoderDecoderModel,
  dataset: data.DatasetConfig,
  model_dir: str,
  checkpoint_path: str | None = None,
  partitioner: partitioning.Partitioner | None = None,
  restore_dtype: str | None = None,
  rationale_prefix: str | None = None,
  label_prefix: str = '[label] ',
  num_examples: int | None = None,
) -> dict[str, Any]:
  """Metrics of `dataset.split` (its first `num_examples`) per task."""
  partitioner = partitioner or partitioning.Partitioner()
  params, shardings, step = restore_for_inference(
    model, dataset, partitioner, checkpoint_path or model_dir, restore_dtype
  )
  evaluation = Evaluation(
    model,
    partitioner,
    dataset,
    shardings,
    os.path.join(model_dir, f'eval_{dataset.split}'),
    rationale_prefix,
    label_prefix,
    num_examples,
  )
  return evaluation(params, step)


def main(argv) -> None:
  del argv
  gin_utils.parse_gin_flags()
  partitioning.initialize_distributed()
  with gin_utils.config_errors():
    evaluate()


def console_main() -> None:
  gin_utils.run(main)


if __name__ == '__main__':
  # Run the package module: gin configures its functions, not __main__'s.
  from dsbs_jax import eval as module  # pylint: disable=g-import-not-at-top

  module.console_main()
