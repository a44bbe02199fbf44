"""T5's pretraining objective, span corruption, as a seqio preprocessor.

`span_corruption` turns a dataset of tokenized text (the `targets` feature)
into denoising examples with the semantics of
`t5.data.preprocessors.span_corruption` (Raffel et al., 2020, section 3.1.4),
which it reproduces token for token under the same seqio seed
(tests/test_span_corruption.py compares the two where t5 is importable):

1. Documents longer than MAX_CHUNK_TOKENS keep one random chunk of that
   size; CONCATENATED_DOCUMENTS consecutive documents are joined (with no
   separator) and cut into segments of `tokens_length` tokens, the last one
   of a batch shorter. `tokens_length` is the longest raw segment whose
   corrupted inputs, with EOS, fit `sequence_length['inputs']`
   (`random_spans_helper`); a targets length shorter than the targets this
   makes is an error, naming the length needed (`feature_lengths` gives it).
2. Each segment of n tokens gets a noise mask (`random_spans_noise_mask`):
   round(n · noise_density) noise tokens (at least 1, at most n - 1) in
   max(1, round(noise tokens / mean_noise_span_length)) spans. Noise and
   non-noise spans alternate, starting with non-noise (so the segment ends
   with noise); each is a uniformly random split of its tokens into that many
   non-empty spans.
3. The inputs keep the non-noise tokens and put one sentinel in place of each
   noise span; the targets hold, for each noise span in order, its sentinel
   and then its tokens. Sentinels come from the top of the vocabulary:
   `vocab_size - 1` for the first span, `vocab_size - 2` for the second, and
   so on (T5's `<extra_id_0>`, `<extra_id_1>`, ...; with seqio's byte
   vocabulary, as in ByT5, the ids of the bytes 0xFF, 0xFE, ..., which UTF-8
   text never holds).

For example, with sentinels S1 = vocab_size - 1 and S2 = vocab_size - 2:

    tokens   a b c d e f g h i j        noise mask . . X X . . . . . X
    inputs   a b S1 e f g h i S2        targets    S1 c d S2 j

EOS is not added here: follow with `seqio.preprocessors.append_eos_after_trim`
(whose trimming then never cuts a token). Every random choice is stateless,
from the seeds `seqio.map_over_dataset` passes, one per example for each of
the three steps (the chunk, the split, the noise) and split further as t5
0.9.4 splits them, so a seeded seqio dataset is deterministic and the same as
t5's.

One case is kept from failing where t5 fails: a noise density and span length
that ask for more noise spans than there are non-noise tokens (possible only
with densities above 0.5) use as many spans as there are non-noise tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
import math
import numbers

import gin
import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
# t5's span_corruption: the longest chunk kept of one document, and how many
# consecutive documents are joined before segmenting.
MAX_CHUNK_TOKENS = 65536
CONCATENATED_DOCUMENTS = 128


def check_parameters(noise_density: float, mean_noise_span_length: float):
  """ValueError unless 0 < noise_density < 1 and mean span length >= 1."""
  if not isinstance(noise_density, numbers.Real) or not 0 < noise_density < 1:
    raise ValueError(f'noise_density must be in (0, 1), got {noise_density!r}')
  if (
    not isinstance(mean_noise_span_length, numbers.Real)
    or not math.isfinite(mean_noise_span_length)
    or mean_noise_span_length < 1
  ):
    raise ValueError(
      'mean_noise_span_length must be a number >= 1, got '
      f'{mean_noise_span_length!r}'
    )


def _corrupted_lengths(
  tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
  """(inputs, targets) lengths, each with EOS, of `tokens_length` raw tokens:
  inputs hold the non-noise tokens and a sentinel per span, targets the
  noise tokens and a sentinel per span."""
  noise = round(tokens_length * noise_density)
  spans = round(noise / mean_noise_span_length)
  return tokens_length - noise + spans + 1, noise + spans + 1


def random_spans_helper(
  inputs_length: int,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
  """(raw tokens per segment, targets length with EOS) for inputs of
  `inputs_length` tokens with EOS, as t5's helper of the same name computes
  them (with one sentinel per span on both sides)."""
  check_parameters(noise_density, mean_noise_span_length)
  if not isinstance(inputs_length, numbers.Integral) or inputs_length < 2:
    raise ValueError(f'inputs_length must be an integer >= 2: {inputs_length}')
  lengths = lambda n: _corrupted_lengths(
    n, noise_density, mean_noise_span_length
  )
  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  # t5: at density 0.5, one raw token less keeps the targets from being one
  # longer than the (probably round) inputs length.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


@gin.configurable
def feature_lengths(
  inputs_length: int = 128,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> dict[str, int]:
  """TASK_FEATURE_LENGTHS for span corruption: `inputs_length` and the
  targets length its segments make (runs/pretrain.gin binds it)."""
  _, targets_length = random_spans_helper(
    inputs_length, noise_density, mean_noise_span_length
  )
  return {'inputs': inputs_length, 'targets': targets_length}


# -- the noise mask --------------------------------------------------------


def _random_segmentation(
  num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor
) -> tf.Tensor:
  """The lengths of a uniformly random split of `num_items` items into
  `num_segments` non-empty runs (1 <= num_segments <= num_items).

  Of the num_items - 1 gaps between items, a random num_segments - 1 start
  a new run.
  """
  gap_starts_run = seqio.stateless_shuffle(
    tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed
  )
  starts_run = tf.concat([[1], gap_starts_run], axis=0)
  starts = tf.cast(tf.where(starts_run > 0)[:, 0], tf.int32)
  ends = tf.concat([starts[1:], [num_items]], axis=0)
  return ends - starts


def random_spans_noise_mask(
  length: tf.Tensor | int,
  noise_density: float,
  seeds: tf.Tensor,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.Tensor:
  """A bool [length] mask of noise spans (the module docstring, step 2).

  `seeds` is [2, 2] int32 (stateless seeds: the noise spans' lengths, the
  non-noise spans' lengths). Sequences shorter than 2 are masked as the
  first tokens of a sequence of 2 (one non-noise token, then noise).
  """
  original_length = length
  length = tf.maximum(length, 2)
  # float32 and half-to-even rounding, as t5 computes the counts.
  noise = tf.cast(
    tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32
  )
  noise = tf.clip_by_value(noise, 1, length - 1)
  nonnoise = length - noise
  spans = tf.cast(
    tf.round(tf.cast(noise, tf.float32) / mean_noise_span_length), tf.int32
  )
  spans = tf.clip_by_value(spans, 1, nonnoise)  # the upper bound: see above
  noise_lengths = _random_segmentation(noise, spans, seeds[0])
  nonnoise_lengths = _random_segmentation(nonnoise, spans, seeds[1])
  # nonnoise_1, noise_1, nonnoise_2, noise_2, ...
  span_lengths = tf.reshape(
    tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1]
  )
  span_is_noise = tf.tile([False, True], [spans])
  return tf.repeat(span_is_noise, span_lengths)[:original_length]


# -- inputs and targets ------------------------------------------------------


def noise_span_to_unique_sentinel(
  tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: seqio.Vocabulary
) -> tf.Tensor:
  """`tokens` with each run of noise replaced by its own sentinel:
  vocab_size - 1 for the first run, vocab_size - 2 for the next, ..."""
  follows_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  run_starts = noise_mask & ~follows_noise
  sentinels = vocabulary.vocab_size - tf.cumsum(
    tf.cast(run_starts, tokens.dtype)
  )
  marked = tf.where(run_starts, sentinels, tokens)
  return tf.boolean_mask(marked, ~(noise_mask & follows_noise))


def nonnoise_span_to_unique_sentinel(
  tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary: seqio.Vocabulary
) -> tf.Tensor:
  """The targets: each run of non-noise replaced by its own sentinel."""
  return noise_span_to_unique_sentinel(tokens, ~noise_mask, vocabulary)


# -- the pipeline ------------------------------------------------------------


def _select_random_chunk(
  dataset: tf.data.Dataset, max_length: int
) -> tf.data.Dataset:
  """Non-empty `targets` only; a longer one keeps a random one of its
  aligned chunks of `max_length` tokens."""

  @seqio.map_over_dataset(num_seeds=1)
  def chunk(example, seed):
    tokens = example['targets']
    size = tf.shape(tokens)[0]
    num_chunks = tf.cast(
      tf.math.ceil(tf.cast(size, tf.float32) / max_length), tf.int32
    )
    # Of the two seeds t5 splits off, the first would pick a random length.
    seeds = tf.random.experimental.stateless_split(seed, 2)
    start = max_length * tf.random.stateless_uniform(
      [], maxval=num_chunks, dtype=tf.int32, seed=seeds[1]
    )
    return {'targets': tokens[start : start + max_length]}

  return chunk(dataset.filter(lambda x: tf.size(x['targets']) > 0))


def _concatenate_documents(
  dataset: tf.data.Dataset, documents: int
) -> tf.data.Dataset:
  """Each `documents` consecutive `targets`, joined into one."""
  joined = dataset.map(lambda x: x['targets']).ragged_batch(documents)
  return joined.map(lambda batch: {'targets': batch.flat_values})


def _split_tokens(dataset: tf.data.Dataset, length: int) -> tf.data.Dataset:
  """Each `targets` cut into segments of `length` tokens, the last shorter."""

  # t5 draws a seed here (for random segment lengths): drawn for equal seeds.
  @seqio.map_over_dataset(num_seeds=1)
  def split(example, seed):
    del seed
    tokens = example['targets']
    size = tf.shape(tokens)[0]
    full, rest = size // length, size % length
    row_lengths = tf.concat(
      [tf.fill([full], length), tf.boolean_mask([rest], [rest > 0])], axis=0
    )
    return {'targets': tf.RaggedTensor.from_row_lengths(tokens, row_lengths)}

  dataset = dataset.filter(lambda x: tf.size(x['targets']) > 0)
  return split(dataset).unbatch()


def _denoise(
  dataset: tf.data.Dataset,
  vocabulary: seqio.Vocabulary,
  noise_density: float,
  mean_noise_span_length: float,
) -> tf.data.Dataset:
  """Each `targets` segment to its span-corrupted inputs and targets."""

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(example, seed):
    tokens = example['targets']
    # t5's denoise splits six seeds off: the mask's two, then two for each of
    # the inputs and targets functions (which span corruption does not use).
    seeds = tf.random.experimental.stateless_split(seed, 6)
    mask = random_spans_noise_mask(
      tf.size(tokens), noise_density, seeds[:2], mean_noise_span_length
    )
    return {
      'inputs': noise_span_to_unique_sentinel(tokens, mask, vocabulary),
      'targets': nonnoise_span_to_unique_sentinel(tokens, mask, vocabulary),
    }

  return corrupt(dataset)


def span_corruption(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int] | None,
  output_features: Mapping[str, seqio.Feature],
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.data.Dataset:
  """seqio preprocessor: tokenized `targets` text to span-corruption
  examples (`inputs`, `targets`, both without EOS); the module docstring.

  Other features are dropped (documents are joined). Raises ValueError when
  the targets length cannot hold the targets that inputs of the inputs
  length make, or when there are no lengths to size the segments by.
  """
  check_parameters(noise_density, mean_noise_span_length)
  if not sequence_length or not sequence_length.get('inputs'):
    raise ValueError(
      'span corruption sizes its segments by the inputs length: give '
      "task_feature_lengths with 'inputs' and 'targets'"
    )
  vocabulary = output_features['targets'].vocabulary
  if output_features['inputs'].vocabulary != vocabulary:
    raise ValueError(
      'span corruption makes inputs from the targets tokens: inputs and '
      'targets need the same vocabulary'
    )
  tokens_length, targets_length = random_spans_helper(
    sequence_length['inputs'], noise_density, mean_noise_span_length
  )
  if sequence_length.get('targets', 0) < targets_length:
    raise ValueError(
      f'span corruption of {sequence_length["inputs"]} input tokens '
      f'(noise density {noise_density}, mean span length '
      f'{mean_noise_span_length}) makes targets of up to {targets_length} '
      f'tokens; the targets length is {sequence_length.get("targets")}. Use '
      f"{{'inputs': {sequence_length['inputs']}, 'targets': "
      f'{targets_length}}} (span_corruption.feature_lengths).'
    )
  dataset = _select_random_chunk(dataset, MAX_CHUNK_TOKENS)
  dataset = _concatenate_documents(dataset, CONCATENATED_DOCUMENTS)
  dataset = _split_tokens(dataset, tokens_length)
  return _denoise(dataset, vocabulary, noise_density, mean_noise_span_length)
