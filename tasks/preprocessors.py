"""From source examples to the examples each task trains or evaluates on.

A source dataset (`source_dataset`) has, per example, the string features
`input`, `label` and `rationale` and the boolean `training`. For training
splits `label` is the label to learn (the teacher's, or the ground truth); for
evaluation splits it is always the ground truth. A missing teacher part is the
empty string.

`make_examples` turns each source example into
`{"inputs": prefixes.label + input, "targets": label, "task": 1}` and, when
training distilling step-by-step, right after it
`{"inputs": prefixes.rationale + input, "targets": rationale, "task": 2}`
(`dsbs_jax.two_tasks`). Every output example also carries the source's
`input` and `rationale`, so the rationale of an evaluation example can be
generated from its input and written next to the teacher's. An example
whose target is missing is dropped unless `keep_unparsed` (the reference's
behaviour: train on a blank target).

The single-task baseline trains the label task alone on targets that hold
the teacher's rationale and then its label (`single_task_examples`); its
generations are scored on the label read back from them
(`single_task_postprocess`).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

from absl import logging
import tensorflow as tf

from dsbs_jax import two_tasks
from dsbs_tasks import datasets
from dsbs_tasks.examples import Example

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
  prefixes: two_tasks.TaskPrefixes,
  keep_unparsed: bool = False,
) -> tf.data.Dataset:
  """Label examples, each followed by its rationale example in DSbS training."""

  def pair(source: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Both candidate examples, stacked, and whether to keep each."""
    tasks = (two_tasks.LABEL_TASK, two_tasks.RATIONALE_TASK)
    inputs = [prefixes.task_input(task, source['input']) for task in tasks]
    targets = tf.stack([source['label'], source['rationale']])
    wanted = tf.stack([tf.constant(True), source['training'] & with_rationale])
    return {
      'inputs': tf.stack(inputs),
      'targets': targets,
      'task': tf.constant(tasks, tf.int32),
      'input': tf.stack([source['input'], source['input']]),
      'rationale': tf.stack([source['rationale'], source['rationale']]),
      'keep': wanted & (keep_unparsed | (targets != '')),
    }

  def without_keep(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {name: value for name, value in example.items() if name != 'keep'}

  pairs = dataset.map(pair).unbatch()
  return pairs.filter(lambda example: example['keep']).map(without_keep)


def single_task_examples(
  dataset: str, examples: Sequence[Example]
) -> list[Example]:
  """Training examples whose teacher label is the single task's target.

  The target is the dataset's `single_task_target` of the teacher's rationale
  and label, blank when either is missing (so dropped, or kept blank with
  `keep_unparsed`, like any other missing target).
  """
  spec = datasets.get(dataset)
  single = []
  unreadable = 0
  for example in examples:
    target = None
    if example.rationale and example.teacher_label:
      target = spec.single_task_target(
        example.input, example.rationale, example.teacher_label
      )
      if spec.parse_single_task(target).label != example.teacher_label:
        unreadable += 1
    single.append(dataclasses.replace(example, teacher_label=target))
  if unreadable:
    logging.warning(
      '%s: %d of %d single-task targets do not give their label back to '
      "the dataset's parser (the rationale or label holds its marker)",
      dataset,
      unreadable,
      len(examples),
    )
  return single


def single_task_postprocess(
  output: str, *, dataset: str, is_target: bool = False, **unused: Any
) -> str:
  """seqio postprocess_fn: the label of a generation, '' if it has none.

  Targets of evaluation splits are ground-truth labels already. An empty
  string matches no label, so a generation without one counts as wrong.
  """
  del unused  # seqio also passes the example.
  if is_target:
    return output
  return datasets.get(dataset).parse_single_task(output).label or ''
