r"""Evaluates a checkpoint: generation on a task split and the task's metrics.

  python -m dsbs_jax.eval --gin_file=runs/dsbs.gin --gin_file=runs/eval.gin \
    --gin_file=models/t5_1_1_base.gin --gin.MODEL_DIR="'/tmp/dsbs'"

Reads the newest checkpoint in MODEL_DIR (or CHECKPOINT_PATH: one of ours, a
t5x or a HuggingFace checkpoint) and writes under MODEL_DIR/eval_<split>/:
seqio's TensorBoard summaries and predictions, `metrics.json`, and with
WRITE_RATIONALES `predictions_<step>.jsonl` with generated rationales.
"""

import os
from typing import Any

import gin

from dsbs_jax import data
from dsbs_jax import gin_utils
from dsbs_jax import inference
from dsbs_jax import models
from dsbs_jax import partitioning


@gin.configurable
def evaluate(
  *,
  model: models.EncoderDecoderModel,
  dataset: data.DatasetConfig,
  model_dir: str,
  checkpoint_path: str | None = None,
  partitioner: partitioning.Partitioner | None = None,
  restore_dtype: str | None = None,
  write_rationales: bool = False,
  num_examples: int | None = None,
) -> dict[str, Any]:
  """Metrics of `dataset.split` (its first `num_examples`) per task."""
  partitioner = partitioner or partitioning.Partitioner()
  params, shardings, step = inference.restore_for_inference(
    model, dataset, partitioner, checkpoint_path or model_dir, restore_dtype
  )
  evaluation = inference.Evaluation(
    model,
    partitioner,
    dataset,
    shardings,
    os.path.join(model_dir, f'eval_{dataset.split}'),
    write_rationales,
    num_examples,
  )
  return evaluation(params, step)


def main() -> None:
  gin_utils.run(evaluate)


if __name__ == '__main__':
  main()
