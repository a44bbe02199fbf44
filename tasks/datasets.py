"""Every dataset the tasks know: one record each, with every fact about it.

A `Dataset` says where its examples come from, how the original release's
records and teacher completions read (`parsing`), the single-task baseline's
target and how its label reads back, the metric, the built-in few-shot prompt
of `dsbs-annotate`, and the vocabulary of its fixed task names. The sources,
the task registry, the preprocessors and the prompts all look a dataset up
here, and nothing falls back to a default for a name it does not know
(`get` raises). Adding a dataset is one record in `DATASETS` plus its
functions (docs/tasks.md, "Adding a dataset").

Kinds of source:
- `release`: files in the original release's layout (`dsbs_tasks.sources`),
  each record formatted by `format_record`, each teacher completion read by
  `parse_completion`;
- `generated`: `generate()` makes the splits here, with no download
  (`dsbs_tasks.synthetic`);
- `jsonl`: the user's JSON Lines files (`dsbs_task(jsonl_files=...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from typing import Any

from dsbs_tasks import metrics
from dsbs_tasks import parsing
from dsbs_tasks import synthetic
from dsbs_tasks.examples import Example

RELEASE = 'release'
GENERATED = 'generated'
JSONL = 'jsonl'
# The vocabularies of the fixed task names (`registry.register_named_tasks`).
T5_VOCABULARY = 't5'
BYTE_VOCABULARY = 'byte'


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Every fact the framework uses about one dataset."""

  name: str
  source: str  # RELEASE, GENERATED or JSONL
  # seqio metric of the label task: (targets, predictions) -> {name: value}.
  metric: Callable[[Sequence[str], Sequence[str]], Mapping[str, float]]
  # The single-task baseline: (input, rationale, label) -> its target, in the
  # teacher's own pattern, and the parser that reads the label back from a
  # generated target.
  single_task_target: Callable[[str, str, str], str]
  parse_single_task: Callable[[str], parsing.Parsed]
  # The vocabulary of the fixed task names registered at import.
  named_vocabulary: str
  # RELEASE: record -> (input, ground-truth label); teacher completion ->
  # (rationale, teacher label); whether the release has a `valid` file.
  format_record: Callable[[Mapping[str, Any]], tuple[str, str]] | None = None
  parse_completion: Callable[[str], parsing.Parsed] | None = None
  has_validation_file: bool = False
  # dsbs-annotate's built-in prompt: prompts/<name>.txt (the template) and
  # prompts/<name>_shots.jsonl (its few-shot examples), read by
  # `parse_completion`.
  builtin_prompt: bool = False
  # GENERATED: the splits by name.
  generate: Callable[[], Mapping[str, Sequence[Example]]] | None = None


def _release(name, format_record, parse, metric, target, has_validation):
  return Dataset(
    name=name,
    source=RELEASE,
    metric=metric,
    single_task_target=target,
    parse_single_task=parse,
    named_vocabulary=T5_VOCABULARY,
    format_record=format_record,
    parse_completion=parse,
    has_validation_file=has_validation,
    builtin_prompt=True,
  )


def _generated(name, generate):
  return Dataset(
    name=name,
    source=GENERATED,
    metric=metrics.accuracy,
    single_task_target=parsing.answer_sentence_target,
    parse_single_task=parsing.parse_answer_sentence,
    named_vocabulary=BYTE_VOCABULARY,
    generate=generate,
  )


DATASETS = {
  dataset.name: dataset
  for dataset in (
    _release(
      'cqa',
      parsing.format_cqa,
      parsing.parse_cqa,
      metrics.accuracy,
      parsing.cqa_single_task_target,
      has_validation=False,
    ),
    _release(
      'svamp',
      parsing.format_svamp,
      parsing.parse_svamp,
      metrics.equation_accuracy,
      parsing.svamp_single_task_target,
      has_validation=False,
    ),
    _release(
      'esnli',
      parsing.format_nli,
      parsing.parse_esnli,
      metrics.accuracy,
      parsing.esnli_single_task_target,
      has_validation=True,
    ),
    _release(
      'anli1',
      parsing.format_nli,
      parsing.parse_anli1,
      metrics.accuracy,
      parsing.answer_sentence_target,
      has_validation=True,
    ),
    _generated('synthetic', synthetic.synthetic_splits),
    _generated('synthetic_multistep', synthetic.multistep_splits),
    Dataset(
      name='jsonl',
      source=JSONL,
      metric=metrics.accuracy,
      single_task_target=parsing.answer_sentence_target,
      parse_single_task=parsing.parse_answer_sentence,
      named_vocabulary=T5_VOCABULARY,
    ),
  )
}


def names(source: str | None = None) -> tuple[str, ...]:
  """The datasets' names, of one kind of source if given."""
  return tuple(
    name
    for name, dataset in DATASETS.items()
    if source is None or dataset.source == source
  )


def get(name: str, source: str | None = None) -> Dataset:
  """The dataset called `name` (of that kind of source if given); a
  ValueError naming the known ones otherwise."""
  dataset = DATASETS.get(name)
  if dataset is None or (source is not None and dataset.source != source):
    kind = f'{source} ' if source else ''
    raise ValueError(
      f'unknown {kind}dataset {name!r}; expected one of '
      f'{", ".join(names(source))}'
    )
  return dataset
