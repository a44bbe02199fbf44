"""Packing examples into fixed-length rows, choosing from a window.

seqio packs greedily in stream order: an example that does not fit the open
row closes it. With two features to fill at once (inputs and targets) and
two tasks whose targets differ tenfold in length (a label of a few tokens, a
rationale of a hundred), that leaves about a fifth of each row empty on the
paper's datasets (docs/benchmark.md). Here each row is filled from a window
of the next `window` examples of the stream:

1. a row opens with the oldest example in the window (so no example waits
   for more than `window` rows, and a window of 1 is seqio's packing);
2. then, while some example in the window fits the room left in every
   feature, the one that leaves the row's least filled feature fullest joins
   it: label examples (long input, short target) and rationale examples
   (long target) are mixed until both features are full.

The choice is deterministic given the stream, so a resumed run that replays
the stream packs the same rows. Rows have seqio's layout
(`seqio.utils.trim_and_pack_dataset`): each feature, its `_segment_ids`
(1, 2, ... per example, 0 on padding) and `_positions`.
"""

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
import itertools
from typing import TypeVar

import numpy as np
import tensorflow as tf

Example = TypeVar('Example')


def pack_rows(
  examples: Iterable[Example],
  sizes: Callable[[Example], Sequence[int]],
  capacity: Sequence[int],
  window: int,
) -> Iterator[list[Example]]:
  """The examples of each row, in the order they were placed.

  Args:
    examples: the stream, possibly endless.
    sizes: an example's length in each feature, at most `capacity` (trim
      before packing).
    capacity: each feature's row length.
    window: how many of the next examples a row may choose from, >= 1.
  """
  if window < 1:
    raise ValueError(f'The packing window must be >= 1, got {window}.')
  capacity = np.asarray(capacity, np.int64)
  stream = iter(examples)
  pending: list[Example] = []
  # The sizes of `pending`, one row each: one array, not one per example,
  # so that choosing is a few numpy calls per placement.
  pending_sizes = np.zeros((0, len(capacity)), np.int64)

  def refill() -> None:
    nonlocal pending_sizes
    new = []
    for example in itertools.islice(stream, window - len(pending)):
      size = np.asarray(sizes(example), np.int64)
      if np.any(size > capacity):
        raise ValueError(f'Example sizes {size} exceed the row {capacity}.')
      pending.append(example)
      new.append(size)
    if new:
      pending_sizes = np.concatenate([pending_sizes, np.stack(new)])

  def take(i: int) -> tuple[Example, np.ndarray]:
    nonlocal pending_sizes
    size = pending_sizes[i]
    pending_sizes = np.delete(pending_sizes, i, axis=0)
    return pending.pop(i), size

  refill()
  while pending:
    first, used = take(0)
    row = [first]
    refill()
    while pending:
      candidates = pending_sizes + used
      fits = np.all(candidates <= capacity, axis=1)
      if not fits.any():
        break
      fill = candidates / capacity
      # Fullest least-filled feature; then the most tokens; then the oldest.
      score = np.where(fits, fill.min(axis=1) + 1e-6 * fill.sum(axis=1), -1)
      example, size = take(int(np.argmax(score)))
      row.append(example)
      used = used + size
      refill()
    yield row


def pack_dataset(
  dataset: tf.data.Dataset,
  feature_lengths: Mapping[str, int],
  window: int,
  rows_per_read: int = 64,
) -> tf.data.Dataset:
  """`seqio.utils.trim_and_pack_dataset`'s rows, filled by `pack_rows`.

  Features not in `feature_lengths` are dropped, as seqio drops them. The
  features are trimmed to their lengths before packing. Python sees the
  examples in padded batches and hands back `rows_per_read` rows at a time:
  crossing between TensorFlow and Python per example or per row would cost
  more than the packing.
  """
  keys = list(feature_lengths)
  capacity = [feature_lengths[key] for key in keys]

  def trim(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    features = {key: example[key][: feature_lengths[key]] for key in keys}
    sizes = {f'{key}_length': tf.size(value) for key, value in features.items()}
    return {**features, **sizes}

  # Without tf.data's autotuning here and downstream: deleting the iterators
  # (one runs inside the other) waited out the autotuner's sleep, up to 18 s
  # at the end of the main job, against 10-60 ms without it.
  no_autotune = tf.data.Options()
  no_autotune.autotune.enabled = False
  trimmed = dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)
  reads = trimmed.with_options(no_autotune).padded_batch(
    max(capacity),
    padded_shapes={
      **{key: [None] for key in keys},
      **{f'{key}_length': [] for key in keys},
    },
  )

  def examples() -> Iterator[list[np.ndarray]]:
    for read in reads.as_numpy_iterator():
      for i in range(len(read[f'{keys[0]}_length'])):
        yield [read[key][i, : read[f'{key}_length'][i]] for key in keys]

  def packed(row: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    for k, key in enumerate(keys):
      parts = [example[k] for example in row]
      pad = (0, feature_lengths[key] - sum(len(part) for part in parts))
      out[key] = np.pad(np.concatenate(parts), pad)
      out[f'{key}_positions'] = np.pad(
        np.concatenate([np.arange(len(part)) for part in parts]), pad
      )
      out[f'{key}_segment_ids'] = np.pad(
        np.concatenate(
          [np.full(len(part), i + 1) for i, part in enumerate(parts)]
        ),
        pad,
      )
    return out

  def row_groups() -> Iterator[dict[str, np.ndarray]]:
    sizes = lambda example: [len(feature) for feature in example]  # noqa: E731
    rows = pack_rows(examples(), sizes, capacity, window)
    while group := [
      packed(row) for row in itertools.islice(rows, rows_per_read)
    ]:
      yield {
        name: np.stack([row[name] for row in group]).astype(np.int32)
        for name in group[0]
      }

  signature = {
    f'{key}{suffix}': tf.TensorSpec([None, length], tf.int32)
    for key, length in feature_lengths.items()
    for suffix in ('', '_positions', '_segment_ids')
  }
  packed_rows = tf.data.Dataset.from_generator(
    row_groups, output_signature=signature
  )
  return packed_rows.unbatch().with_options(no_autotune)
