"""The label and rationale tasks as the framework sees them.

Distilling step-by-step trains one model on two tasks that differ by a prefix
on the same input: `[label] <input>` -> label and `[rationale] <input>` ->
rationale. This module is the one definition of what the seqio tasks
(`dsbs_tasks`, which emit the examples) and the framework (which weights the
two losses and generates rationales on request) share:

- `LABEL_TASK`, `RATIONALE_TASK`: the values of an example's `task` feature
  and of the per-token `decoder_task_ids` (0 marks padding), and
  `TASK_NAMES`, the name of each;
- `TaskPrefixes`: the input prefix of each task, configured once in gin
  (`two_tasks.TaskPrefixes.label = %LABEL_PREFIX`, likewise `rationale`) and
  read by the tasks and by rationale generation alike;
- `DistillStepByStepFeatureConverter`: seqio's encoder-decoder feature
  converter plus `decoder_task_ids`, packing rows from a window of examples
  (`dsbs_jax.packing`).
"""

from collections.abc import Mapping
import dataclasses
from typing import TypeVar

import gin
import seqio
import tensorflow as tf

from dsbs_jax import packing

LABEL_TASK = 1
RATIONALE_TASK = 2
# Each task's name: its prefix field, its metrics (`<name>_loss`,
# `<name>_tokens`) and its loss weight are keyed by it.
TASK_NAMES = {LABEL_TASK: 'label', RATIONALE_TASK: 'rationale'}

Text = TypeVar('Text', str, tf.Tensor)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TaskPrefixes:
  """The prefix put before the input of each task.

  The reference release used `predict: ` and `explain: `. Bind these once in
  gin (runs/dsbs.gin does, from LABEL_PREFIX and RATIONALE_PREFIX): the tasks,
  the final evaluation of `train`, `eval`, `infer` and `export_hf` all build
  their `TaskPrefixes()` from those bindings, so they cannot disagree.
  """

  label: str = '[label] '
  rationale: str = '[rationale] '

  def task_input(self, task: int, text: Text) -> Text:
    """The model input of `task` for `text` (a str, or a tf.string tensor)."""
    return getattr(self, TASK_NAMES[task]) + text


@gin.configurable
class DistillStepByStepFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` plus `decoder_task_ids`, packed or padded.

  Input examples have `inputs` and `targets` (token ids) and `task`, an int32
  scalar (1: label task, 2: rationale task). Before packing or padding, `task`
  is broadcast to one id per target token, so after packing `decoder_task_ids`
  [targets_len] is 1 or 2 on each target token, following the example the
  token came from, and 0 on padding. The two-task loss sums token losses per
  task id.

  `task` is not in TASK_FEATURES: seqio requires `task_feature_lengths` (t5x's
  TASK_FEATURE_LENGTHS) to name exactly TASK_FEATURES, and a scalar has no
  length. It is checked here instead.

  Packing fills each row from a window of the next `pack_window` examples
  (`packing.pack_rows`): the mix of short label targets and long rationale
  targets then fills both inputs and targets. `pack_window=1` packs in
  stream order, exactly as seqio does; seqio's custom ops
  (`use_custom_packing_ops`) still pack the seqio way.
  """

  MODEL_FEATURES = {
    **seqio.EncDecFeatureConverter.MODEL_FEATURES,
    'decoder_task_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def __init__(self, *args, pack_window: int = 64, **kwargs):
    super().__init__(*args, **kwargs)
    self.pack_window = pack_window

  def _pack_or_pad(
    self, ds: tf.data.Dataset, packed_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    if not self.pack or self._use_custom_packing_ops:
      return super()._pack_or_pad(ds, packed_lengths)
    return packing.pack_dataset(ds, packed_lengths, self.pack_window)

  def _convert_features(
    self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    task = ds.element_spec.get('task')
    if task is None or task.dtype != tf.int32 or task.shape.rank != 0:
      raise ValueError(
        f"{type(self).__name__} needs a scalar int32 feature 'task' "
        f'({LABEL_TASK}: label, {RATIONALE_TASK}: rationale); got {task}'
      )

    def add_task_ids(features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
      ids = tf.fill(tf.shape(features['targets']), features['task'])
      return {**features, 'task_ids': ids}

    lengths = {
      **task_feature_lengths,
      'task_ids': task_feature_lengths['targets'],
    }
    return super()._convert_features(ds.map(add_task_ids), lengths)

  def _convert_example(
    self, features: Mapping[str, tf.Tensor]
  ) -> dict[str, tf.Tensor]:
    return {
      **super()._convert_example(features),
      'decoder_task_ids': features['task_ids'],
    }

  def get_model_feature_lengths(
    self, task_feature_lengths: Mapping[str, int]
  ) -> dict[str, int]:
    return {
      **super().get_model_feature_lengths(task_feature_lengths),
      'decoder_task_ids': task_feature_lengths['targets'],
    }
