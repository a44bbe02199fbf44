"""A seqio feature converter that says which task every target token is for."""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf


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
  """

  MODEL_FEATURES = {
    **seqio.EncDecFeatureConverter.MODEL_FEATURES,
    'decoder_task_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def _convert_features(
    self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    task = ds.element_spec.get('task')
    if task is None or task.dtype != tf.int32 or task.shape.rank != 0:
      raise ValueError(
        f"{type(self).__name__} needs a scalar int32 feature 'task' "
        f'(1: label, 2: rationale); got {task}'
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
