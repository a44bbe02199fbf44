"""seqio Tasks for distilling step-by-step and its two baselines.

`dsbs_task(...)` registers (once) the Task its arguments describe and returns
its name, so a gin file can say `MIXTURE_OR_TASK_NAME = @dsbs_task()` and both
our trainer and t5x's binaries find it. Importing this module also registers
fixed names for every dataset (see docs/tasks.md):

    dsbs_<dataset>_llm   distilling step-by-step, teacher labels
    dsbs_<dataset>_gt    distilling step-by-step, ground-truth labels
    finetune_<dataset>   standard finetuning (label task, ground truth)
    distill_<dataset>    standard distillation (label task, teacher labels)
    single_task_<dataset>  the single-task baseline (one task whose target is
                         the teacher's rationale and then its label)

for cqa, svamp, esnli and anli1 with the T5 vocabulary and $DSBS_DATA_DIR,
and the same with the suffix `_byte` for `synthetic` and
`synthetic_multistep` with seqio's byte vocabulary. Other arguments add
suffixes to the name: `_frac<f>_seed<s>` for a data fraction, `_byte` or
`_vocab<hash>` for another vocabulary, and `_<hash>` for any other
non-default argument.

Splits are `train`, `validation` and `test`. Only `train` has rationale
examples and teacher labels; `validation` and `test` hold label examples with
ground-truth targets, scored by the dataset's metric. The single-task
baseline's generations are scored on the label its dataset's parser reads
from them (the dataset's `parse_single_task`); one without a label counts
wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import functools
import hashlib
import os

from absl import logging
import gin
import seqio
import tensorflow as tf

from dsbs_jax import two_tasks
from dsbs_tasks import datasets
from dsbs_tasks import preprocessors
from dsbs_tasks import sources
from dsbs_tasks.examples import Example

MODES = ('dsbs', 'finetune', 'distill', 'single_task')
DEFAULT_LABEL_SOURCE = {
  'dsbs': 'llm',
  'finetune': 'gt',
  'distill': 'llm',
  'single_task': 'llm',
}
T5_VOCABULARY_PATH = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
T5_EXTRA_IDS = 100
# The prefixes that leave a task's name unchanged: TaskPrefixes' own defaults
# (not gin's bindings, which may change between calls).
_DEFAULT_PREFIXES = two_tasks.TaskPrefixes(
  *(field.default for field in dataclasses.fields(two_tasks.TaskPrefixes))
)


def t5_vocabulary() -> seqio.SentencePieceVocabulary:
  """The public T5 vocabulary; seqio reads the model file only on first use."""
  return seqio.SentencePieceVocabulary(
    T5_VOCABULARY_PATH, extra_ids=T5_EXTRA_IDS
  )


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Everything that decides a Task's examples, before tokenization."""

  dataset: str
  mode: str
  label_source: str
  data_dir: str | None
  data_fraction: float
  seed: int
  keep_unparsed: bool
  prefixes: two_tasks.TaskPrefixes
  jsonl_files: tuple[tuple[str, str], ...] | None

  @property
  def splits(self) -> tuple[str, ...]:
    spec = datasets.get(self.dataset)
    if spec.source == datasets.JSONL and 'test' not in dict(self.jsonl_files):
      return ('train', 'validation')
    return sources.SPLITS

  def needs_teacher(self, split: str) -> tuple[str, ...]:
    """The teacher parts (`rationale`, `llm_label`) that `split` trains on."""
    parts = []
    if split == 'train' and self.mode in ('dsbs', 'single_task'):
      parts.append('rationale')
    if split == 'train' and self.label_source == 'llm':
      parts.append('llm_label')
    return tuple(parts)

  def examples(self, split: str) -> list[Example]:
    """The source examples of `split`, before any pairing."""
    subset = dict(data_fraction=self.data_fraction, seed=self.seed)
    spec = datasets.get(self.dataset)
    if spec.source == datasets.GENERATED:
      splits = spec.generate()
      return sources.assemble_split(
        splits.__getitem__, split, has_validation=True, **subset
      )
    if spec.source == datasets.JSONL:
      files = dict(self.jsonl_files)
      if split not in self.splits:
        raise ValueError(f'no {split!r} file in jsonl_files {files}')
      required = ('input', 'label', *self.needs_teacher(split))
      return sources.assemble_split(
        lambda s: sources.read_jsonl_examples(files[s], required),
        split,
        has_validation='validation' in files,
        **subset,
      )
    if self.needs_teacher(split):
      train = sources.load_release_split(self.dataset, 'train', self.data_dir)
      if train.counts is None:
        root = sources.resolve_data_dir(self.data_dir)
        missing = root / self.dataset / 'llm' / 'train_CoT_0.json'
        raise sources.DataError(
          f'{self.dataset} {split} needs teacher completions: no {missing}'
        )
    return sources.release_examples(
      self.dataset, split, data_dir=self.data_dir, **subset
    )

  def dataset_fn(
    self, split: str, shuffle_files: bool, seed: int | None = None
  ) -> tf.data.Dataset:
    """seqio's FunctionDataSource callback: the source features of `split`."""
    examples = self.examples(split)
    training = split == 'train'
    if training:
      needed = self.needs_teacher(split)
      without_label = sum(e.teacher_label is None for e in examples)
      without_rationale = sum(e.rationale is None for e in examples)
      logging.info(
        '%s %s: %d examples; %d without a teacher label, %d without a '
        'rationale (%s)',
        self.dataset,
        split,
        len(examples),
        without_label if 'llm_label' in needed else 0,
        without_rationale if 'rationale' in needed else 0,
        'kept with blank targets'
        if self.keep_unparsed
        else 'dropped from the task needing them',
      )
    if training and self.mode == 'single_task':
      examples = preprocessors.single_task_examples(self.dataset, examples)
    ds = preprocessors.source_dataset(
      examples, training=training, label_source=self.label_source
    )
    if shuffle_files and examples:
      # The whole (small) split, reshuffled every epoch; pairs stay adjacent.
      ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    return ds


def short_hash(*values: object) -> str:
  return hashlib.sha256(repr(values).encode()).hexdigest()[:8]


def vocabulary_suffix(vocabulary: seqio.Vocabulary) -> str:
  # These comparisons look at file names and options; they load nothing.
  if t5_vocabulary() == vocabulary:
    return ''
  if seqio.ByteVocabulary() == vocabulary:
    return '_byte'
  state = sorted(
    (k, repr(v)) for k, v in vars(vocabulary).items() if k != '_model'
  )
  return '_vocab' + short_hash(type(vocabulary).__qualname__, state)


def task_name(config: TaskConfig, vocabulary: seqio.Vocabulary) -> str:
  """A name that differs whenever the Task's examples or tokens would."""
  name = f'{config.mode}_{config.dataset}'
  if config.mode == 'dsbs':
    name += f'_{config.label_source}'
  if config.data_fraction != 1:
    name += f'_frac{config.data_fraction:g}_seed{config.seed}'
  name += vocabulary_suffix(vocabulary)
  others = (
    config.data_dir,
    config.keep_unparsed,
    config.prefixes,
    config.jsonl_files,
  )
  if others != (None, False, _DEFAULT_PREFIXES, None):
    name += '_' + short_hash(others)
  return name


def _check_arguments(
  dataset: str,
  mode: str,
  label_source: str,
  data_fraction: float,
  jsonl_files: Mapping[str, str] | None,
) -> None:
  spec = datasets.get(dataset)
  if mode not in MODES:
    raise ValueError(f'unknown mode {mode!r}; expected one of {MODES}')
  if label_source not in preprocessors.LABEL_SOURCES:
    raise ValueError(
      f'label_source must be one of '
      f'{preprocessors.LABEL_SOURCES}, got {label_source!r}'
    )
  if mode == 'single_task' and label_source != 'llm':
    raise ValueError(
      "mode 'single_task' trains on the teacher's rationale and its own "
      "label (label_source 'llm'); for 'gt' labels use mode 'dsbs'"
    )
  if mode != 'dsbs' and label_source != DEFAULT_LABEL_SOURCE[mode]:
    other = 'distill' if label_source == 'llm' else 'finetune'
    raise ValueError(
      f'mode {mode!r} trains on {DEFAULT_LABEL_SOURCE[mode]!r} '
      f'labels; for {label_source!r} labels use mode {other!r}'
    )
  sources.check_fraction(data_fraction)
  if (spec.source == datasets.JSONL) != (jsonl_files is not None):
    raise ValueError("jsonl_files goes with dataset='jsonl' and only with it")
  if jsonl_files is not None and (
    'train' not in jsonl_files or set(jsonl_files) - set(sources.SPLITS)
  ):
    raise ValueError(
      f"jsonl_files needs a 'train' file and keys from "
      f'{sources.SPLITS} only, got {sorted(jsonl_files)}'
    )


@gin.configurable
def dsbs_task(
  dataset: str,
  mode: str = 'dsbs',
  label_source: str | None = None,
  *,
  data_dir: str | os.PathLike | None = None,
  data_fraction: float = 1.0,
  seed: int = 0,
  vocabulary: seqio.Vocabulary | None = None,
  keep_unparsed: bool = False,
  jsonl_files: Mapping[str, str] | None = None,
) -> str:
  """Registers the Task these arguments describe, if new; returns its name.

  Args:
    dataset: cqa, svamp, esnli, anli1, synthetic, synthetic_multistep, or
      jsonl (with jsonl_files).
    mode: `dsbs` (label and rationale tasks), `finetune` (label task, ground
      truth), `distill` (label task, teacher labels) or `single_task` (one
      task, teacher's rationale then its label in one target).
    label_source: `llm` or `gt`, the labels of the training split; defaults
      to `llm` for dsbs, distill and single_task (which takes only `llm`)
      and `gt` for finetune.
    data_dir: the release's data directory; None reads $DSBS_DATA_DIR when
      the data is read.
    data_fraction: the fraction of `train` to keep, in (0, 1]; nested across
      fractions for the same `seed`.
    seed: the seed of that subset.
    vocabulary: of inputs and targets; defaults to the T5 vocabulary.
    keep_unparsed: keep examples whose teacher completion did not parse, with
      a blank target (the reference's behaviour), instead of dropping them
      from the task that needs the missing part.
    jsonl_files: for `jsonl`, {'train': path, 'validation': path, 'test':
      path}; validation and test are optional (validation is then held out
      of train). See dsbs_tasks.sources for the fields.

  The input prefix of each task is `two_tasks.TaskPrefixes()`, whose fields
  gin binds once for every binary (runs/dsbs.gin): the one definition that
  rationale generation and the HuggingFace export read too.

  Returns:
    The name of the registered seqio Task.
  """
  label_source = label_source or DEFAULT_LABEL_SOURCE.get(mode)
  _check_arguments(dataset, mode, label_source, data_fraction, jsonl_files)
  spec = datasets.get(dataset)
  if data_dir is not None and spec.source == datasets.RELEASE:
    data_dir = os.fspath(data_dir)
  else:
    data_dir = None  # read from the environment, or not used
  if jsonl_files is not None:
    jsonl_files = tuple(
      sorted((split, os.fspath(path)) for split, path in jsonl_files.items())
    )
  config = TaskConfig(
    dataset=dataset,
    mode=mode,
    label_source=label_source,
    data_dir=data_dir,
    data_fraction=float(data_fraction),
    seed=seed if data_fraction != 1 else 0,  # the seed picks a subset only
    keep_unparsed=keep_unparsed,
    prefixes=two_tasks.TaskPrefixes(),
    jsonl_files=jsonl_files,
  )
  if vocabulary is None:
    vocabulary = t5_vocabulary()
  name = task_name(config, vocabulary)
  if name in seqio.TaskRegistry.names():
    return name
  make_examples = functools.partial(
    preprocessors.make_examples,
    with_rationale=mode == 'dsbs',
    prefixes=config.prefixes,
    keep_unparsed=keep_unparsed,
  )
  postprocess_fn = None
  if mode == 'single_task':
    postprocess_fn = functools.partial(
      preprocessors.single_task_postprocess, dataset=dataset
    )
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(config.dataset_fn, splits=config.splits),
    output_features={
      key: seqio.Feature(vocabulary, add_eos=True)
      for key in ('inputs', 'targets')
    },
    preprocessors=[
      make_examples,
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos_after_trim,
    ],
    postprocess_fn=postprocess_fn,
    metric_fns=[spec.metric],
  )
  return name


def register_named_tasks() -> list[str]:
  """The fixed names of the module docstring; idempotent."""
  names = []
  for spec in datasets.DATASETS.values():
    if spec.source == datasets.JSONL:  # no files of its own
      continue
    vocabulary = (
      seqio.ByteVocabulary()
      if spec.named_vocabulary == datasets.BYTE_VOCABULARY
      else None
    )
    names += [
      dsbs_task(spec.name, 'dsbs', 'llm', vocabulary=vocabulary),
      dsbs_task(spec.name, 'dsbs', 'gt', vocabulary=vocabulary),
      dsbs_task(spec.name, 'finetune', vocabulary=vocabulary),
      dsbs_task(spec.name, 'distill', vocabulary=vocabulary),
      dsbs_task(spec.name, 'single_task', vocabulary=vocabulary),
    ]
  return names


NAMED_TASKS = register_named_tasks()
