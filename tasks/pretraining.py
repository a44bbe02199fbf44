"""seqio Tasks of unlabeled text for T5's span-corruption pretraining.

`pretrain_task(text_source, ...)` registers (once) a Task of span-corruption
examples (`dsbs_tasks.span_corruption`) of some text and returns its name, so
that runs/pretrain.gin can say `MIXTURE_OR_TASK_NAME =
@dsbs_tasks.pretrain_task()`. The text comes from

- a generated dataset (`synthetic`, `synthetic_multistep`): the problem texts
  of its `train` split (its `validation` split: the validation problems),
  without their answers or rationales; the test problems are never read;
- JSON Lines files (`text_source='jsonl'`, `text_files={'train': path}`, and
  optionally `'validation'`): one JSON object per line with a string field
  `text`, one document each. Blank lines are skipped; a line that is not an
  object, or whose `text` is missing, not a string or blank, is an error
  naming the file, the line and the field.

Documents are joined and cut into rows that fill the inputs length, as t5
does, so rows need no packing. Every example is a label-task example
(`task` 1, `dsbs_jax.two_tasks`): the label-only loss of
`models.DistillStepByStepModel` (ALPHA 1, as standard finetuning trains) is
then the mean token cross-entropy of the targets, t5's pretraining loss up
to its normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import functools
import os

from etils import epath
import gin
import seqio
import tensorflow as tf

from dsbs_jax import two_tasks
from dsbs_tasks import datasets
from dsbs_tasks import parsing
from dsbs_tasks import registry
from dsbs_tasks import sources
from dsbs_tasks import span_corruption

JSONL = 'jsonl'
TEXT_FIELD = 'text'
SPLITS = ('train', 'validation')


def read_text_jsonl(path: str | os.PathLike) -> tuple[str, ...]:
  """The `text` of every non-blank line of a JSON Lines file; DataError
  naming the file, line and field for anything else."""
  path = epath.Path(path).resolve()
  texts = []
  for number, record in sources.read_json_lines(path):
    try:
      texts.append(parsing.get_text(record, TEXT_FIELD))
    except parsing.FieldError as error:
      raise sources.DataError(f'{path}:{number}: {error}') from None
  if not texts:
    raise sources.DataError(f'{path}: no lines with {TEXT_FIELD!r}')
  return tuple(texts)


def text_sources() -> tuple[str, ...]:
  """The values `text_source` takes."""
  return (*datasets.names(datasets.GENERATED), JSONL)


@dataclasses.dataclass(frozen=True)
class TextSource:
  """Where a pretraining Task's documents come from."""

  name: str  # a generated dataset's, or JSONL
  files: tuple[tuple[str, str], ...] | None  # JSONL: (split, path) pairs

  @property
  def splits(self) -> tuple[str, ...]:
    if self.files is not None:
      return tuple(split for split in SPLITS if split in dict(self.files))
    return SPLITS

  def texts(self, split: str) -> tuple[str, ...]:
    if self.files is not None:
      return read_text_jsonl(dict(self.files)[split])
    examples = datasets.get(self.name, datasets.GENERATED).generate()[split]
    return tuple(example.input for example in examples)

  def dataset_fn(
    self, split: str, shuffle_files: bool, seed: int | None = None
  ) -> tf.data.Dataset:
    """seqio's FunctionDataSource callback: `{'text': ...}` per document."""
    texts = self.texts(split)
    ds = tf.data.Dataset.from_tensor_slices(
      {TEXT_FIELD: tf.constant(texts, tf.string)}
    )
    if shuffle_files:
      # A new order every epoch, so documents are joined differently.
      ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    return ds


def _check_source(
  text_source: str, text_files: Mapping[str, str] | None
) -> None:
  if text_source not in text_sources():
    raise ValueError(
      f'unknown text_source {text_source!r}; expected one of '
      f'{", ".join(text_sources())}'
    )
  if (text_source == JSONL) != (text_files is not None):
    raise ValueError(
      "text_files goes with text_source='jsonl' and only with it"
    )
  if text_files is not None and (
    'train' not in text_files or set(text_files) - set(SPLITS)
  ):
    raise ValueError(
      f"text_files needs a 'train' file and keys from {SPLITS} only, got "
      f'{sorted(text_files)}'
    )


@seqio.map_over_dataset
def _as_label_task(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  return {**example, 'task': tf.constant(two_tasks.LABEL_TASK, tf.int32)}


@gin.configurable
def pretrain_task(
  text_source: str,
  *,
  text_files: Mapping[str, str | os.PathLike] | None = None,
  noise_density: float = span_corruption.NOISE_DENSITY,
  mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
  vocabulary: seqio.Vocabulary | None = None,
) -> str:
  """Registers the span-corruption Task of this text, if new; its name.

  Args:
    text_source: a generated dataset's name (its problem texts) or 'jsonl'.
    text_files: for 'jsonl', {'train': path} and optionally 'validation'.
    noise_density: the fraction of each row's tokens that are noise.
    mean_noise_span_length: the mean length of a noise span.
    vocabulary: of inputs and targets; defaults to the T5 vocabulary.

  Returns:
    `span_corruption_<text_source>`, with suffixes for another vocabulary
    (`_byte`, `_vocab<hash>`), other noise settings
    (`_density<d>_span<m>`) and the files (`_<hash>`).
  """
  _check_source(text_source, text_files)
  span_corruption.check_parameters(noise_density, mean_noise_span_length)
  if text_files is not None:
    text_files = tuple(
      sorted((split, os.fspath(path)) for split, path in text_files.items())
    )
  source = TextSource(text_source, text_files)
  if vocabulary is None:
    vocabulary = registry.t5_vocabulary()
  name = f'span_corruption_{text_source}'
  if (noise_density, mean_noise_span_length) != (
    span_corruption.NOISE_DENSITY,
    span_corruption.MEAN_NOISE_SPAN_LENGTH,
  ):
    name += f'_density{noise_density:g}_span{mean_noise_span_length:g}'
  name += registry.vocabulary_suffix(vocabulary)
  if text_files is not None:
    name += '_' + registry.short_hash(text_files)
  if name in seqio.TaskRegistry.names():
    return name
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(source.dataset_fn, splits=source.splits),
    output_features={
      key: seqio.Feature(vocabulary, add_eos=True)
      for key in ('inputs', 'targets')
    },
    preprocessors=[
      functools.partial(
        seqio.preprocessors.rekey, key_map={'targets': TEXT_FIELD}
      ),
      seqio.preprocessors.tokenize,
      functools.partial(
        span_corruption.span_corruption,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
      ),
      seqio.preprocessors.append_eos_after_trim,
      _as_label_task,
    ],
    metric_fns=[],
  )
  return name
