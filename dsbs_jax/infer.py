r"""Decodes a task split with a checkpoint and writes JSON Lines.

  python -m dsbs_jax.infer --gin_file=runs/dsbs.gin --gin_file=runs/infer.gin \
    --gin_file=models/t5_1_1_base.gin --gin.MODEL_DIR="'/tmp/dsbs'"

One line per example: `input`, `prediction`, `score` (log-probability of the
decode, or its beam score), `target` when the split has one, and with
WRITE_RATIONALES the generated `rationale` (and the teacher's).
"""

import os

import gin
import jax

from dsbs_jax import data
from dsbs_jax import gin_utils
from dsbs_jax import inference
from dsbs_jax import models
from dsbs_jax import partitioning


@gin.configurable
def infer(
  *,
  model: models.EncoderDecoderModel,
  dataset: data.DatasetConfig,
  model_dir: str,
  output_path: str | None = None,
  checkpoint_path: str | None = None,
  partitioner: partitioning.Partitioner | None = None,
  restore_dtype: str | None = None,
  write_rationales: bool = False,
  num_decodes: int = 1,
  num_examples: int | None = None,
) -> str:
  """Writes predictions for `dataset.split`; returns the output path."""
  partitioner = partitioner or partitioning.Partitioner()
  params, shardings, step = inference.restore_for_inference(
    model, dataset, partitioner, checkpoint_path or model_dir, restore_dtype
  )
  predictor = inference.Predictor(
    model, partitioner, dataset.batch_size, shardings, num_decodes=num_decodes
  )
  records = inference.predict_split(
    predictor,
    params,
    dataset.mixture_or_task_name,
    dataset.task_feature_lengths,
    dataset.split,
    dataset.use_cached,
    write_rationales,
    num_examples,
  )
  output_path = output_path or os.path.join(
    model_dir, f'infer_{dataset.split}_{step}.jsonl'
  )
  if jax.process_index() == 0:
    inference.write_jsonl(records, output_path)
    print(f'Wrote {len(records)} predictions to {output_path}')
  return output_path


def main() -> None:
  gin_utils.run(infer)


if __name__ == '__main__':
  main()
