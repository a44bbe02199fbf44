"""Host-local input pipelines from seqio tasks.

Each host reads its own shard of the task (`seqio.ShardInfo`) and yields its
slice of every global batch; `Partitioner.global_batch` assembles the global
arrays. The pipeline is deterministic given the seed, so a run resumed at step
`s` skips the `s` batches it already trained on and sees exactly the batches
an uninterrupted run would (replaying costs input-pipeline time only).
"""

from collections.abc import Iterator
from collections.abc import Mapping
import dataclasses

import gin
import jax
import numpy as np
import seqio


@gin.configurable
@dataclasses.dataclass
class DatasetConfig:
  """Which task split to read and how (t5x's `utils.DatasetConfig` knobs)."""

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'train'
  batch_size: int = 8
  shuffle: bool = True
  seed: int | None = 0
  use_cached: bool = False
  pack: bool = False


def _local_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(
      f'Batch size {global_batch_size} is not divisible by '
      f'the {jax.process_count()} processes.'
    )
  return global_batch_size // jax.process_count()


def get_batches(
  config: DatasetConfig,
  converter: seqio.FeatureConverter,
  start_step: int = 0,
  num_epochs: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This host's slices of consecutive global batches, from `start_step` on.

  With `num_epochs=None` the split repeats forever (training); otherwise the
  last partial batch is dropped.
  """
  shard = seqio.ShardInfo(
    index=jax.process_index(), num_shards=jax.process_count()
  )
  dataset = seqio.get_dataset(
    mixture_or_task_name=config.mixture_or_task_name,
    task_feature_lengths=dict(config.task_feature_lengths),
    feature_converter=converter,
    dataset_split=config.split,
    use_cached=config.use_cached,
    shuffle=config.shuffle,
    num_epochs=num_epochs,
    shard_info=shard,
    seed=config.seed,
    batch_size=_local_batch_size(config.batch_size),
  )
  return dataset.skip(start_step).as_numpy_iterator()


def model_input_shapes(
  config: DatasetConfig, converter: seqio.FeatureConverter
) -> dict[str, tuple[int, ...]]:
  """Global shapes of the model features, for initialising the model."""
  lengths = converter.get_model_feature_lengths(
    dict(config.task_feature_lengths)
  )
  return {name: (config.batch_size, length) for name, length in lengths.items()}


def batch_statistics(local_batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
  """(examples, non-padding target tokens) in a host's batch.

  Packed rows hold several examples: their count is the number of segments.
  """
  targets = local_batch['decoder_target_tokens']
  if 'decoder_segment_ids' in local_batch:
    examples = int(np.sum(np.max(local_batch['decoder_segment_ids'], axis=1)))
  else:
    examples = int(np.sum(np.any(targets > 0, axis=1)))
  return examples, int(np.sum(targets > 0))
