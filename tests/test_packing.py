"""Window packing (dsbs_jax.packing) against seqio's own packing."""

from conftest import task_example_dataset
import numpy as np
import pytest
import seqio
import tensorflow as tf

from dsbs_jax import packing
from dsbs_jax.two_tasks import DistillStepByStepFeatureConverter

LENGTHS = {'inputs': 64, 'targets': 26}  # the examples' ratio


def _two_task_examples(
  count: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
  """Label examples (input 8-30 tokens, target 2-4) alternating with
  rationale examples (same input lengths, target 6-20). Token values say
  which example and which position they are (no zeros)."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(count):
    task = 1 + i % 2
    target_range = (2, 5) if task == 1 else (6, 21)
    input_length = rng.integers(8, 31)
    target_length = rng.integers(*target_range)
    examples.append(
      {
        'inputs': np.arange(1, input_length + 1, dtype=np.int32) + 100 * i,
        'targets': np.arange(1, target_length + 1, dtype=np.int32) + 100 * i,
        'task': np.int32(task),
      }
    )
  return examples


def _rows(dataset: tf.data.Dataset) -> list[dict[str, np.ndarray]]:
  return list(dataset.as_numpy_iterator())


def _fill(rows, key: str) -> float:
  return float(
    np.mean([np.mean(row[f'{key}_segment_ids'] > 0) for row in rows])
  )


def test_window_of_one_packs_exactly_as_seqio():
  # Fewer examples than seqio's packing chunk (the longest length), which
  # closes its open row at each chunk's end.
  examples = _two_task_examples(60)
  lengths = {'inputs': 64, 'targets': 16}  # some targets are trimmed
  features = ('inputs', 'targets')
  ours = _rows(
    packing.pack_dataset(
      task_example_dataset(examples).map(lambda e: {k: e[k] for k in features}),
      lengths,
      window=1,
    )
  )
  theirs = _rows(
    seqio.utils.trim_and_pack_dataset(
      task_example_dataset(examples).map(lambda e: {k: e[k] for k in features}),
      lengths,
    )
  )
  assert len(ours) == len(theirs) > 1
  for mine, seqios in zip(ours, theirs):
    assert set(mine) == set(seqios)
    for name in mine:
      np.testing.assert_array_equal(mine[name], seqios[name], err_msg=name)


def test_every_example_lands_once_whole_in_a_row_of_the_right_layout():
  examples = _two_task_examples(200)
  rows = _rows(
    packing.pack_dataset(task_example_dataset(examples), LENGTHS, window=16)
  )
  placed = []
  for row in rows:
    for key, length in LENGTHS.items():
      assert row[key].shape == (length,)
      segments = row[f'{key}_segment_ids']
      count = segments.max()
      # Segments 1..n, contiguous, then padding.
      assert list(np.unique(segments[segments > 0])) == list(
        range(1, count + 1)
      )
      assert np.all(np.diff(segments[segments > 0]) >= 0)
      np.testing.assert_array_equal(segments == 0, row[key] == 0)
      for segment in range(1, count + 1):
        tokens = row[key][segments == segment]
        positions = row[f'{key}_positions'][segments == segment]
        np.testing.assert_array_equal(positions, np.arange(len(tokens)))
        source = examples[tokens[0] // 100]
        np.testing.assert_array_equal(tokens, source[key])
    # A row's segment k is one example in every feature.
    for segment in range(1, row['inputs_segment_ids'].max() + 1):
      first_input = row['inputs'][row['inputs_segment_ids'] == segment][0]
      first_target = row['targets'][row['targets_segment_ids'] == segment][0]
      assert first_input // 100 == first_target // 100
      placed.append(int(first_input // 100))
  assert sorted(placed) == list(range(len(examples)))


def test_no_example_waits_longer_than_the_window():
  window = 8
  examples = [
    (int(n), int(m))
    for n, m in np.random.default_rng(1).integers(1, 30, (500, 2))
  ]
  indexed = list(enumerate(examples))
  rows = list(packing.pack_rows(indexed, lambda e: e[1], (64, 64), window))
  for row_number, row in enumerate(rows):
    oldest = min(index for index, _ in row)
    # Row r opens with the oldest example waiting, one of the first
    # (examples placed so far + window) of the stream.
    placed_before = sum(len(r) for r in rows[:row_number])
    assert oldest < placed_before + window
    assert row[0][0] == oldest


def test_a_window_fills_both_features_of_two_task_rows():
  examples = _two_task_examples(2000)
  fills = {}
  for window in (1, 64):
    rows = _rows(
      packing.pack_dataset(task_example_dataset(examples), LENGTHS, window)
    )
    fills[window] = (_fill(rows, 'inputs'), _fill(rows, 'targets'))
  # Measured: window 1 (0.70, 0.71), window 64 (0.93, 0.95).
  assert min(fills[64]) >= 0.9, fills
  assert max(fills[1]) < 0.8, fills


def test_converter_packs_from_its_window():
  examples = _two_task_examples(300)
  rows = {
    window: _rows(
      DistillStepByStepFeatureConverter(pack=True, pack_window=window)(
        task_example_dataset(examples), LENGTHS
      )
    )
    for window in (1, 32)
  }
  assert len(rows[32]) < len(rows[1])
  for row in rows[32]:
    # Loss weights, task ids and segments mark the same target tokens.
    real = row['decoder_segment_ids'] > 0
    np.testing.assert_array_equal(row['decoder_loss_weights'] > 0, real)
    np.testing.assert_array_equal(row['decoder_task_ids'] > 0, real)
    # Each segment's decoder input is its targets shifted right from 0.
    for segment in range(1, row['decoder_segment_ids'].max() + 1):
      where = row['decoder_segment_ids'] == segment
      targets = row['decoder_target_tokens'][where]
      np.testing.assert_array_equal(
        row['decoder_input_tokens'][where], np.concatenate([[0], targets[:-1]])
      )
      task = examples[targets[0] // 100]['task']
      np.testing.assert_array_equal(row['decoder_task_ids'][where], task)


def test_bad_window_and_oversized_examples_are_clear_errors():
  with pytest.raises(ValueError, match='window must be >= 1'):
    list(packing.pack_rows([(1, 1)], lambda e: e, (4, 4), window=0))
  with pytest.raises(ValueError, match='exceed the row'):
    list(packing.pack_rows([(5, 1)], lambda e: e, (4, 4), window=2))


def test_packed_pipelines_run_without_autotuning():
  """tf.data's autotuner sleeps between rounds, and deleting a packed
  pipeline (one iterator runs inside the other) waited for it to wake: up to
  18 s at the end of the main job. The batched training pipeline downstream
  of the packer inherits the setting."""
  converter = DistillStepByStepFeatureConverter(pack=True, pack_window=8)
  rows = converter(task_example_dataset(_two_task_examples(20)), LENGTHS)
  assert rows.batch(4).options().autotune.enabled is False
  unpacked = DistillStepByStepFeatureConverter(pack=False)(
    task_example_dataset(_two_task_examples(4)), LENGTHS
  )
  assert unpacked.options().autotune.enabled is not False
