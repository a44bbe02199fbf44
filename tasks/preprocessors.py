"""From source examples to the examples each task trains or evaluates on.

A source dataset (`source_dataset`) has, per example, the string features
`input`, `label` and `rationale` and the boolean `training`. For training
splits `label` is the label to learn (the teacher's, or the ground truth); for
evaluation splits it is always the ground truth. A missing teacher part is the
empty string.

`make_examples` turns each source example into
`{"inputs": label_prefix + input, "targets": label, "task": 1}` and, when
training distilling step-by-step, right after it
`{"inputs": rationale_prefix + input, "targets": rationale, "task": 2}`.
Every output example also carries the source's `rationale`, so predictions on
evaluation splits can be written next to the teacher's rationale. An example
whose target is missing is dropped unless `keep_unparsed` (the reference's
behaviour: train on a blank target).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from dsbs_jax.losses import LABEL_TASK
from dsbs_jax.losses import RATIONALE_TASK
from tasks.sources import Example

LABEL_SOURCES = ('llm', 'gt')


def source_dataset(
  examples: Sequence[Example], *, training: bool, label_source: str
) -> tf.data.Dataset:
  """The source features of `examples`; teacher labels only to train on."""
  if label_source not in LABEL_SOURCES:
    raise ValueError(
      f'label_source must be one of {LABEL_SOURCES}, got {label_source!r}'
    )
  use_teacher = training and label_source == 'llm'
  labels = [
    (e.teacher_label or '') if use_teacher else e.label for e in examples
  ]
  return tf.data.Dataset.from_tensor_slices(
    {
      'input': tf.constant([e.input for e in examples], tf.string),
      'label': tf.constant(labels, tf.string),
      'rationale': tf.constant(
        [e.rationale or '' for e in examples], tf.string
      ),
      'training': tf.constant([training] * len(examples), tf.bool),
    }
  )


def make_examples(
  dataset: tf.data.Dataset,
  *,
  with_rationale: bool,
  label_prefix: str = '[label] ',
  rationale_prefix: str = '[rationale] ',
  keep_unparsed: bool = False,
) -> tf.data.Dataset:
  """Label examples, each followed by its rationale example in DSbS training."""

  def pair(source: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Both candidate examples, stacked, and whether to keep each."""
    inputs = [
      tf.strings.join([prefix, source['input']])
      for prefix in (label_prefix, rationale_prefix)
    ]
    targets = tf.stack([source['label'], source['rationale']])
    wanted = tf.stack([tf.constant(True), source['training'] & with_rationale])
    return {
      'inputs': tf.stack(inputs),
      'targets': targets,
      'task': tf.constant([LABEL_TASK, RATIONALE_TASK], tf.int32),
      'rationale': tf.stack([source['rationale'], source['rationale']]),
      'keep': wanted & (keep_unparsed | (targets != '')),
    }

  def without_keep(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {name: value for name, value in example.items() if name != 'keep'}

  pairs = dataset.map(pair).unbatch()
  return pairs.filter(lambda example: example['keep']).map(without_keep)
