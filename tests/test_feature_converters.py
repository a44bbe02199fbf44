"""DistillStepByStepFeatureConverter: per-token task ids, packed or padded."""

from conftest import task_example_dataset
import numpy as np
import pytest
import tensorflow as tf

from dsbs_jax.two_tasks import DistillStepByStepFeatureConverter

LENGTHS = {'inputs': 12, 'targets': 10}
# (input length, target length, task) of each example.
SHAPES = [
  (3, 4, 1),
  (5, 6, 2),
  (2, 2, 1),
  (4, 3, 2),
  (6, 5, 1),
  (2, 7, 2),
  (3, 1, 1),
]


def _examples():
  """Example i's target tokens are all 10 + i, then EOS (1): each token says
  which example it came from."""
  return [
    {
      'inputs': [20 + i] * input_length + [1],
      'targets': [10 + i] * target_length + [1],
      'task': task,
    }
    for i, (input_length, target_length, task) in enumerate(SHAPES)
  ]


def _convert(pack):
  converter = DistillStepByStepFeatureConverter(pack=pack)
  return list(
    converter(task_example_dataset(_examples()), LENGTHS).as_numpy_iterator()
  )


def test_without_packing_every_target_token_has_its_example_task():
  rows = _convert(pack=False)
  examples = _examples()
  assert len(rows) == len(examples)
  for row, example in zip(rows, examples):
    assert set(row) == {
      'encoder_input_tokens',
      'decoder_target_tokens',
      'decoder_input_tokens',
      'decoder_loss_weights',
      'decoder_task_ids',
    }
    n = len(example['targets'])
    task_ids = row['decoder_task_ids']
    assert task_ids.shape == (LENGTHS['targets'],)
    assert task_ids.dtype == np.int32
    np.testing.assert_array_equal(task_ids[:n], example['task'])
    np.testing.assert_array_equal(task_ids[n:], 0)
    np.testing.assert_array_equal(
      row['decoder_target_tokens'][:n], example['targets']
    )


def test_with_packing_every_target_token_has_its_example_task():
  rows = _convert(pack=True)
  examples = _examples()
  assert len(rows) < len(examples)  # something was packed
  seen = []
  for row in rows:
    assert {
      'decoder_segment_ids',
      'decoder_positions',
      'encoder_segment_ids',
    } <= set(row)
    tokens = row['decoder_target_tokens']
    segments = row['decoder_segment_ids']
    task_ids = row['decoder_task_ids']
    np.testing.assert_array_equal(task_ids == 0, segments == 0)
    np.testing.assert_array_equal(
      task_ids != 0, row['decoder_loss_weights'] != 0
    )
    for segment in range(1, segments.max() + 1):
      in_segment = segments == segment
      source = tokens[in_segment][0] - 10  # the example the tokens came from
      assert list(tokens[in_segment]) == examples[source]['targets']
      np.testing.assert_array_equal(
        task_ids[in_segment], examples[source]['task']
      )
      seen.append(source)
  assert sorted(seen) == list(range(len(examples)))


def test_model_feature_lengths_include_task_ids():
  converter = DistillStepByStepFeatureConverter(pack=True)
  lengths = converter.get_model_feature_lengths(LENGTHS)
  assert lengths['decoder_task_ids'] == LENGTHS['targets']
  assert lengths['decoder_segment_ids'] == LENGTHS['targets']


def test_a_dataset_without_task_is_a_clear_error():
  ds = tf.data.Dataset.from_tensors(
    {'inputs': tf.constant([3, 1]), 'targets': tf.constant([4, 1])}
  )
  with pytest.raises(ValueError, match="scalar int32 feature 'task'"):
    DistillStepByStepFeatureConverter(pack=False)(ds, LENGTHS)
