r"""Token lengths of a task's split, and TASK_FEATURE_LENGTHS to suggest.

  dsbs-lengths --gin_file=runs/dsbs.gin --gin_file=data/cqa.gin \
    --gin.DATA_DIR="'/data'"

Training pads (or packs) every example into TASK_FEATURE_LENGTHS and cuts
what does not fit. The label task (`[label] <input>` -> a short label) and
the rationale task (`[rationale] <input>` -> a long rationale) have very
different target lengths, so this binary counts the tokens of every example
of one split, untruncated and with its EOS (which occupies a slot too), per
kind: label inputs, rationale inputs, label targets, rationale targets. It
prints their distribution (count, mean, p50, p90, p95, p99, max), what the
configured TASK_FEATURE_LENGTHS cut, and the smallest multiple of
`--multiple` holding `--coverage` of each kind's examples, with a gin flag to
paste. For packing (PACK = True) it packs a sample of the split as training
would (`dsbs_jax.packing`) into rows of growing length, and suggests the
shortest rows whose inputs and targets are both `--packed_fill` full.
docs/lengths.md has the details.

The gin flags are the train binary's; the task is the train binary's too:
MIXTURE_OR_TASK_NAME (see `lengths_report`). The statistics are pure
functions of lists of lengths, below; the binary is a thin layer over them.
"""

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from fractions import Fraction
import math
import random

from absl import flags
import gin
import seqio
import tensorflow as tf

from dsbs_jax import errors
from dsbs_jax import gin_utils
from dsbs_jax import packing
from dsbs_jax import two_tasks

PERCENTILES = (0.5, 0.9, 0.95, 0.99)
# Packed input rows are tried up to this length.
PACKED_INPUTS_MAX = 8192
# Packing is simulated on at most this many examples of the split.
PACKED_SAMPLE = 20_000
# Target rows tried either side of the split's target-to-input ratio, in
# multiples of `--multiple`.
TARGET_SEARCH_STEPS = 2


class EmptySplitError(errors.UserError):
  """The split has no examples to measure."""


class UnreadableError(errors.UserError):
  """The task's data or vocabulary cannot be read (missing, no network)."""


# --------------------------------------------------------------------------
# Statistics of plain lists of lengths (token counts, EOS included).


def _rank(share: float, n: int) -> int:
  """ceil(share × n), exact for shares written in decimal (0.07 × 100 is 7,
  not the float product's ceiling, 8)."""
  return math.ceil(Fraction(str(share)) * n)


def percentile(lengths: Sequence[int], share: float) -> int:
  """The nearest-rank percentile: the smallest length that at least `share`
  (in (0, 1]) of `lengths` do not exceed. So p99 is the shortest length that
  holds 99% of the examples without a cut."""
  if not lengths:
    raise ValueError('percentile of no lengths')
  if not 0 < share <= 1:
    raise ValueError(f'share must be in (0, 1], got {share}')
  return sorted(lengths)[max(_rank(share, len(lengths)), 1) - 1]


def round_up(length: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is at least `length` (and at
  least `multiple`: a feature length is never 0)."""
  if multiple < 1:
    raise ValueError(f'multiple must be at least 1, got {multiple}')
  return max(-(-length // multiple), 1) * multiple


def suggest_length(
  lengths: Sequence[int], coverage: float, multiple: int
) -> int:
  """The smallest multiple of `multiple` that cuts at most (1 - coverage) of
  `lengths`: the coverage percentile, rounded up."""
  return round_up(percentile(lengths, coverage), multiple)


def truncated(lengths: Iterable[int], limit: int) -> int:
  """How many of `lengths` a feature length of `limit` cuts."""
  return sum(length > limit for length in lengths)


def tokens_lost(lengths: Sequence[int], limit: int) -> float:
  """The share of all tokens that a feature length of `limit` cuts off (0
  for no tokens)."""
  total = sum(lengths)
  lost = sum(max(length - limit, 0) for length in lengths)
  return lost / total if total else 0.0


def slots_used(lengths: Sequence[int], limit: int) -> float:
  """The share of slots holding a token when each example sits in its own
  row of `limit` slots (no packing); 1 minus it is the padding share."""
  if not lengths:
    return 0.0
  return sum(min(length, limit) for length in lengths) / (limit * len(lengths))


def examples_cut(
  inputs: Sequence[int],
  targets: Sequence[int],
  input_limit: int,
  target_limit: int,
) -> int:
  """How many examples (inputs[i], targets[i]) lose input or target tokens."""
  return sum(
    i > input_limit or t > target_limit for i, t in zip(inputs, targets)
  )


@dataclasses.dataclass(frozen=True)
class Summary:
  """The distribution of one kind's lengths."""

  count: int
  mean: float
  percentiles: tuple[int, ...]  # at PERCENTILES
  max: int


def summarize(lengths: Sequence[int]) -> Summary:
  return Summary(
    count=len(lengths),
    mean=sum(lengths) / len(lengths),
    percentiles=tuple(percentile(lengths, p) for p in PERCENTILES),
    max=max(lengths),
  )


@dataclasses.dataclass(frozen=True)
class TaskLengths:
  """The lengths of one task's examples, example i at index i."""

  inputs: list[int] = dataclasses.field(default_factory=list)
  targets: list[int] = dataclasses.field(default_factory=list)


def kinds(
  by_task: Mapping[int, TaskLengths],
) -> dict[str, list[int]]:
  """{'label inputs': [...], ...} for the tasks that have examples, inputs
  before targets, label before rationale."""
  out = {}
  for feature in ('inputs', 'targets'):
    for task, name in two_tasks.TASK_NAMES.items():
      if task in by_task and getattr(by_task[task], feature):
        out[f'{name} {feature}'] = getattr(by_task[task], feature)
  return out


@dataclasses.dataclass(frozen=True)
class Suggestion:
  """Feature lengths holding `coverage` of each kind's examples."""

  inputs: int  # max over the tasks' inputs
  label_targets: int | None  # None: the split has no such examples
  rationale_targets: int | None
  targets: int  # max over both tasks: one length for every target

  @property
  def feature_lengths(self) -> dict[str, int]:
    return {'inputs': self.inputs, 'targets': self.targets}


def suggest(
  by_task: Mapping[int, TaskLengths], coverage: float, multiple: int
) -> Suggestion:
  """The smallest multiples of `multiple` under which at most (1 - coverage)
  of each kind's examples lose tokens."""
  each = {
    kind: suggest_length(lengths, coverage, multiple)
    for kind, lengths in kinds(by_task).items()
  }
  if not each:
    raise ValueError('no examples to suggest lengths for')
  inputs = [n for kind, n in each.items() if kind.endswith('inputs')]
  targets = [n for kind, n in each.items() if kind.endswith('targets')]
  return Suggestion(
    inputs=max(inputs),
    label_targets=each.get('label targets'),
    rationale_targets=each.get('rationale targets'),
    targets=max(targets),
  )


@dataclasses.dataclass(frozen=True)
class PackedFill:
  """How full packed rows of `feature_lengths` are."""

  feature_lengths: dict[str, int]
  examples_per_row: float
  inputs_filled: float  # share of input slots holding a token
  targets_filled: float

  @property
  def least_filled(self) -> float:
    return min(self.inputs_filled, self.targets_filled)


def packed_fill(
  examples: Sequence[tuple[int, int]],
  feature_lengths: Mapping[str, int],
  window: int,
) -> PackedFill:
  """Packs (input length, target length) `examples`, in order and trimmed to
  the rows, as training packs them; the rows' fill."""
  capacity = (feature_lengths['inputs'], feature_lengths['targets'])
  trimmed = [(min(i, capacity[0]), min(t, capacity[1])) for i, t in examples]
  rows = list(packing.pack_rows(trimmed, lambda e: e, capacity, window))
  totals = [sum(e[k] for e in trimmed) for k in (0, 1)]
  return PackedFill(
    feature_lengths=dict(feature_lengths),
    examples_per_row=len(trimmed) / len(rows),
    inputs_filled=totals[0] / (capacity[0] * len(rows)),
    targets_filled=totals[1] / (capacity[1] * len(rows)),
  )


def packed_candidates(
  by_task: Mapping[int, TaskLengths],
  window: int,
  fill: float,
  multiple: int,
  seed: int = 0,
) -> list[PackedFill]:
  """Packed rows of growing length, until both features are `fill` full.

  The examples of both tasks are shuffled together (training shuffles too)
  and at most PACKED_SAMPLE of them are packed. Input rows are 1, 2, 3, ...
  times the p99 input (rounded up to `multiple`). For each, the target row
  is the fullest (least-filled feature; the shorter on a tie) of the split's
  ratio of target to input tokens, rounded up to `multiple`, and
  TARGET_SEARCH_STEPS multiples either side, never below the p99 target (so
  that no more than 1% of examples are cut).
  """
  examples = [
    (i, t)
    for lengths in by_task.values()
    for i, t in zip(lengths.inputs, lengths.targets)
  ]
  if not examples:
    raise ValueError('no examples to pack')
  random.Random(seed).shuffle(examples)
  examples = examples[:PACKED_SAMPLE]
  ratio = sum(t for _, t in examples) / sum(i for i, _ in examples)
  step = round_up(percentile([i for i, _ in examples], 0.99), multiple)
  longest = round_up(percentile([t for _, t in examples], 0.99), multiple)
  candidates = []
  for inputs in range(step, PACKED_INPUTS_MAX + 1, step):
    at_ratio = round_up(math.ceil(inputs * ratio), multiple)
    tries = sorted(
      {
        max(longest, at_ratio + k * multiple)
        for k in range(-TARGET_SEARCH_STEPS, TARGET_SEARCH_STEPS + 1)
      }
    )
    fill_of = max(
      (
        packed_fill(examples, {'inputs': inputs, 'targets': t}, window)
        for t in tries
      ),
      key=lambda c: c.least_filled,
    )
    candidates.append(fill_of)
    if fill_of.least_filled >= fill:
      break
  return candidates


def packed_suggestion(
  candidates: Sequence[PackedFill], fill: float
) -> PackedFill:
  """The shortest rows both `fill` full, else the fullest."""
  full = [c for c in candidates if c.least_filled >= fill]
  return full[0] if full else max(candidates, key=lambda c: c.least_filled)


def _packed_section(
  by_task: Mapping[int, TaskLengths], window: int, fill: float, multiple: int
) -> list[str]:
  candidates = packed_candidates(by_task, window, fill, multiple)
  suggestion = packed_suggestion(candidates, fill)
  sampled = min(sum(len(t.inputs) for t in by_task.values()), PACKED_SAMPLE)
  rows = [
    ('inputs', 'targets', 'examples/row', 'inputs filled', 'targets filled')
  ]
  for c in candidates:
    rows.append(
      (
        c.feature_lengths['inputs'],
        c.feature_lengths['targets'],
        f'{c.examples_per_row:.1f}',
        f'{c.inputs_filled:.1%}',
        f'{c.targets_filled:.1%}',
      )
    )
  per_row = suggestion.examples_per_row
  reached = suggestion.least_filled >= fill
  return [
    '',
    f'Packed (PACK = True, pack window {window}): {sampled} examples of both '
    'tasks, shuffled, packed as training packs them:',
    *_table(rows),
    f'Suggested for packing: the shortest rows filling inputs and targets '
    f'{fill:.0%}:'
    if reached
    else f'No rows up to {PACKED_INPUTS_MAX} inputs '
    f'fill both {fill:.0%}; the fullest:',
    f'  --gin.PACK=True --gin.TASK_FEATURE_LENGTHS="'
    f'{_lengths_text(suggestion.feature_lengths)}"',
    f'  BATCH_SIZE counts rows, {per_row:.1f} examples each: for P pairs '
    f'(label + rationale) per step, BATCH_SIZE = 2P / {per_row:.1f}.',
  ]


# --------------------------------------------------------------------------
# The report.


def _table(rows: Sequence[Sequence[object]]) -> list[str]:
  """Columns aligned, the first left, the others right."""
  cells = [[str(cell) for cell in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
  return [
    '  '
    + '  '.join(
      cell.ljust(width) if i == 0 else cell.rjust(width)
      for i, (cell, width) in enumerate(zip(row, widths))
    ).rstrip()
    for row in cells
  ]


def _share(part: float, whole: float) -> str:
  return f'{part / whole:.2%}' if whole else '-'


def _truncation(
  by_task: Mapping[int, TaskLengths], feature_lengths: Mapping[str, int]
) -> list[str]:
  """Per kind, and per feature over both tasks: the cut and the slots used;
  then the examples that lose input or target tokens, per task."""
  rows = [
    ('', 'length', 'examples', 'cut', 'cut %', 'tokens lost', 'slots used')
  ]
  per_kind = kinds(by_task)
  for feature in ('inputs', 'targets'):
    limit = feature_lengths[feature]
    feature_kinds = {k: v for k, v in per_kind.items() if k.endswith(feature)}
    if len(feature_kinds) > 1:
      feature_kinds[f'all {feature}'] = [
        n for lengths in feature_kinds.values() for n in lengths
      ]
    for kind, lengths in feature_kinds.items():
      cut = truncated(lengths, limit)
      rows.append(
        (
          kind,
          limit,
          len(lengths),
          cut,
          _share(cut, len(lengths)),
          f'{tokens_lost(lengths, limit):.2%}',
          f'{slots_used(lengths, limit):.1%}',
        )
      )
  cut_examples = []
  for task, name in two_tasks.TASK_NAMES.items():
    lengths = by_task.get(task)
    if lengths and lengths.inputs:
      cut = examples_cut(
        lengths.inputs,
        lengths.targets,
        feature_lengths['inputs'],
        feature_lengths['targets'],
      )
      total = len(lengths.inputs)
      cut_examples.append(f'{name} {cut} of {total} ({_share(cut, total)})')
  return [
    *_table(rows),
    '  Examples cut: ' + ', '.join(cut_examples),
  ]


def _lengths_text(lengths: Mapping[str, int]) -> str:
  return '{' + ', '.join(f'{k!r}: {v}' for k, v in lengths.items()) + '}'


def format_report(
  task_name: str,
  split: str,
  by_task: Mapping[int, TaskLengths],
  feature_lengths: Mapping[str, int],
  coverage: float,
  multiple: int,
  pack_window: int = 64,
  fill: float = 0.9,
) -> str:
  """The report of `dsbs-lengths` on lengths already counted."""
  per_kind = kinds(by_task)
  if not per_kind:
    raise EmptySplitError(f'{task_name} has no examples in split {split!r}.')
  counts = ', '.join(
    f'{len(by_task[task].inputs)} {name}'
    for task, name in two_tasks.TASK_NAMES.items()
    if task in by_task and by_task[task].inputs
  )
  lines = [
    f'{task_name}, split {split!r}: {counts} examples.',
    'Lengths in tokens, EOS included, untruncated:',
  ]
  rows = [
    ('', 'examples', 'mean', *(f'p{p * 100:g}' for p in PERCENTILES), 'max')
  ]
  for kind, lengths in per_kind.items():
    s = summarize(lengths)
    rows.append((kind, s.count, f'{s.mean:.1f}', *s.percentiles, s.max))
  lines += _table(rows)
  if two_tasks.RATIONALE_TASK not in by_task:
    lines.append(
      '  No rationale examples: only the train split of a dsbs task has '
      'them;\n  for training lengths, measure --split=train.'
    )

  current = {k: feature_lengths[k] for k in ('inputs', 'targets')}
  lines += [
    '',
    f'Current TASK_FEATURE_LENGTHS {_lengths_text(current)}:',
    *_truncation(by_task, current),
  ]

  suggestion = suggest(by_task, coverage, multiple)
  suggested = suggestion.feature_lengths
  lines += [
    '',
    f'Suggested: smallest multiples of {multiple} holding '
    f"{coverage * 100:g}% of each kind's examples uncut:",
  ]
  rows = []
  for name, length, features in (
    ('inputs', suggestion.inputs, ('label inputs', 'rationale inputs')),
    ('label targets', suggestion.label_targets, ('label targets',)),
    ('rationale targets', suggestion.rationale_targets, ('rationale targets',)),
    ('targets', suggestion.targets, ('label targets', 'rationale targets')),
  ):
    if length is None:
      continue
    lengths = [n for kind in features for n in per_kind.get(kind, [])]
    cut = truncated(lengths, length)
    both = len([kind for kind in features if kind in per_kind]) > 1
    note = '(the larger of both tasks)' if both else ''
    rows.append(
      (
        name,
        length,
        f'cuts {cut} of {len(lengths)}',
        f'({_share(cut, len(lengths))})',
        note,
      )
    )
  lines += _table(rows)
  lines += [
    '',
    f'Suggested TASK_FEATURE_LENGTHS {_lengths_text(suggested)}:',
    *_truncation(by_task, suggested),
    '',
    '"Examples cut": those losing input or target tokens. "slots used": the',
    'share of slots holding tokens with one example per row (unpacked); the',
    'rest is padding. Packing (PACK = True) fills rows more.',
    '',
    f'  --gin.TASK_FEATURE_LENGTHS="{_lengths_text(suggested)}"',
    *_packed_section(by_task, pack_window, fill, multiple),
  ]
  return '\n'.join(lines)


# --------------------------------------------------------------------------
# Reading a task.


def _tasks(mixture_or_task_name: str) -> list[seqio.Task]:
  try:
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
  except ValueError as e:
    raise gin_utils.GinConfigError(
      'MIXTURE_OR_TASK_NAME: no seqio task or mixture '
      f'{mixture_or_task_name!r}.'
    ) from e
  if isinstance(provider, seqio.Mixture):
    return list(provider.tasks)  # every example of each, whatever the rates
  return [provider]


# What reading a task's files (or its vocabulary's) raises for a path that
# is not there or cannot be reached: the user's to fix, not a bug.
_UNREADABLE = (
  tf.errors.NotFoundError,
  tf.errors.PermissionDeniedError,
  tf.errors.FailedPreconditionError,
  tf.errors.UnavailableError,
  tf.errors.UnauthenticatedError,
)


def _op_error_text(error: tf.errors.OpError) -> str:
  """TensorFlow's message without the traceback that tf.data puts before the
  error raised while tracing a map function ('in user code: ...')."""
  lines = [line.strip() for line in error.message.splitlines()]
  prefix = f'{type(error).__name__}: '
  for i in reversed(range(len(lines))):
    if lines[i].startswith(prefix):
      rest = [line for line in lines[i:] if line]
      return ' '.join(rest)[len(prefix) :]
  return next((line for line in lines if line), type(error).__name__)


def _count(
  task: seqio.Task, split: str, by_task: dict[int, TaskLengths]
) -> None:
  """Adds the lengths of `task`'s examples of `split` to `by_task`."""
  ds = task.get_dataset(
    sequence_length=None,
    split=split,
    shuffle=False,
    num_epochs=1,
    trim_output_features=False,
  )

  def lengths(example):
    task_id = example.get('task', tf.constant(two_tasks.LABEL_TASK))
    return (
      tf.cast(task_id, tf.int32),
      tf.size(example['inputs']),
      tf.size(example['targets']),
    )

  for ids, inputs, targets in ds.map(lengths).batch(4096).as_numpy_iterator():
    for task_id, i, t in zip(ids.tolist(), inputs.tolist(), targets.tolist()):
      entry = by_task.setdefault(task_id, TaskLengths())
      entry.inputs.append(i)
      entry.targets.append(t)


def read_lengths(
  mixture_or_task_name: str, split: str
) -> dict[int, TaskLengths]:
  """{task id: lengths} of every example of `split`, untruncated.

  seqio cuts features only where given a sequence length: with none, the
  tasks' `append_eos_after_trim` appends EOS without trimming. An example
  without a `task` feature counts as a label example. A mixture's tasks are
  read whole, one after another (its rates do not apply).
  """
  by_task: dict[int, TaskLengths] = {}
  for task in _tasks(mixture_or_task_name):
    if split not in task.splits:
      raise gin_utils.GinConfigError(
        f'--split={split}: {task.name} has the splits {list(task.splits)}.'
      )
    try:
      _count(task, split, by_task)
    except _UNREADABLE as e:  # the data or the vocabulary: files, network
      raise UnreadableError(f'{task.name} {split}: {_op_error_text(e)}') from e
  unknown = set(by_task) - set(two_tasks.TASK_NAMES)
  if unknown:
    raise ValueError(f'examples with unknown task ids {sorted(unknown)}')
  return by_task


def report(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  split: str = 'train',
  coverage: float = 0.99,
  multiple: int = 8,
  pack_window: int = 64,
  fill: float = 0.9,
) -> str:
  """The report on `split` of the task (or mixture)."""
  check_options(coverage, multiple, fill)
  missing = {'inputs', 'targets'} - set(task_feature_lengths)
  if missing:
    raise gin_utils.GinConfigError(
      f'TASK_FEATURE_LENGTHS {dict(task_feature_lengths)} has no '
      f'{" or ".join(sorted(missing))}.'
    )
  by_task = read_lengths(mixture_or_task_name, split)
  return format_report(
    mixture_or_task_name,
    split,
    by_task,
    task_feature_lengths,
    coverage,
    multiple,
    pack_window,
    fill,
  )


def check_options(coverage: float, multiple: int, fill: float) -> None:
  if not 0 < coverage <= 1:
    raise gin_utils.GinConfigError(
      f'--coverage={coverage}: must be in (0, 1], e.g. 0.99.'
    )
  if not 0 < fill <= 1:
    raise gin_utils.GinConfigError(
      f'--packed_fill={fill}: must be in (0, 1], e.g. 0.9.'
    )
  if multiple < 1:
    raise gin_utils.GinConfigError(
      f'--multiple={multiple}: must be at least 1.'
    )


# --------------------------------------------------------------------------
# The binary.


@gin.configurable
def lengths_report(
  *, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int]
) -> None:
  """Prints the report of the flags' split.

  `_report_from_flags` binds both arguments to the train binary's macros,
  MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS, as runs/train.gin binds
  `train/data.DatasetConfig`. gin then evaluates the macro when it calls
  this function, exactly as for the train binary: `@dsbs_tasks.dsbs_task()`
  is called with every binding of the command (DATASET, MODE, VOCABULARY,
  ...) and gives the registered task's name, and a plain string (t5x's way)
  passes through. `gin.query_parameter('%MIXTURE_OR_TASK_NAME')` would give
  the unevaluated reference instead, to be called by hand. The packing
  window is the one training packs with (the feature converter's
  `pack_window`, gin-configurable).
  """
  values = flags.FLAGS
  converter = two_tasks.DistillStepByStepFeatureConverter(pack=True)
  print(
    report(
      mixture_or_task_name,
      task_feature_lengths,
      values.split,
      values.coverage,
      values.multiple,
      converter.pack_window,
      values.packed_fill,
    ),
    flush=True,
  )


def _check_vocabulary() -> None:
  """runs/dsbs.gin's task takes VOCABULARY from a model file (models/*.gin);
  without one, gin's complaint would not name the macro."""
  try:
    reference = str(gin.query_parameter('dsbs_task.vocabulary'))
  except ValueError:
    return  # not bound: the task is not dsbs_task, or takes its default
  try:
    gin.query_parameter('%VOCABULARY')
  except ValueError:
    if reference == '%VOCABULARY':
      raise gin_utils.GinConfigError(
        'VOCABULARY is not defined: pass the gin file of the model to train '
        '(--gin_file=models/...), whose vocabulary decides the tokens.'
      ) from None


def _report_from_flags() -> None:
  check_options(
    flags.FLAGS.coverage, flags.FLAGS.multiple, flags.FLAGS.packed_fill
  )
  _check_vocabulary()
  gin.parse_config(
    [
      f'{__name__}.lengths_report.mixture_or_task_name = %MIXTURE_OR_TASK_NAME',
      f'{__name__}.lengths_report.task_feature_lengths = %TASK_FEATURE_LENGTHS',
    ]
  )
  lengths_report()


def _define_flags() -> None:
  """The binary's flags, defined when it runs (not on import: `python -m`
  imports this module a second time, see `gin_utils.run`)."""
  if 'coverage' in flags.FLAGS:
    return
  flags.DEFINE_string('split', 'train', 'The split to measure.')
  flags.DEFINE_float(
    'coverage',
    0.99,
    "The share of each kind's examples a suggested length holds uncut.",
  )
  flags.DEFINE_integer(
    'multiple', 8, 'Suggested lengths are rounded up to a multiple of this.'
  )
  flags.DEFINE_float(
    'packed_fill',
    0.9,
    'The share of input and of target slots suggested packed rows fill.',
  )


def main() -> None:
  _define_flags()
  gin_utils.run(_report_from_flags)


if __name__ == '__main__':
  main()
