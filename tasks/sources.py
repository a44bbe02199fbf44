"""Reading examples: the original release's layout and users' JSON Lines.

The original layout (docs/design.md, "Data") under a data directory `root`:

    <root>/<name>/<name>_<split>.json        JSON Lines, one record a line
    <root>/<name>/llm/<split>_CoT_<k>.json   JSON arrays of teacher completions

with file splits `train`, `valid` (esnli and anli1 only) and `test`; the
completion files k = 0, 1, … concatenated in order align one-to-one with the
split's records (its non-blank lines). The data directory is an argument
or, when that is None, the environment variable DSBS_DATA_DIR, read when the
data is read.

A generic JSON Lines file for users' own data has, per line, the fields
`input` and `label` (the ground truth) and optionally `rationale` and
`llm_label` (the teacher's rationale and label; absent or null when missing).

Tasks see three splits: `train`, `validation` and `test`. Where there is no
validation file, `validation` is a fixed 10% of the train file (seed 0) and
`train` the rest. A data fraction < 1 keeps a seeded subset of `train`, nested:
the subset for a smaller fraction is part of the one for a larger fraction.

Bad input raises DataError naming the file, line and field. Teacher
completions that do not parse are counted per file split, logged, and the
counts are kept (see `parse_counts`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import functools
import json
import math
import os
import re
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow as tf

from dsbs_jax import errors
from dsbs_tasks import datasets
from dsbs_tasks import parsing
from dsbs_tasks.examples import Example

DATA_DIR_ENV = 'DSBS_DATA_DIR'
SPLITS = ('train', 'validation', 'test')
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0


class DataError(errors.UserError, ValueError):
  """Input data that cannot be used; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class ParseCounts:
  """How many teacher completions of a file split parsed, and what failed."""

  completions: int
  parsed: int
  without_rationale: int
  without_label: int

  @property
  def unparsed(self) -> int:
    return self.completions - self.parsed


# Our split names -> the release's file split names.
_FILE_SPLITS = {'train': 'train', 'validation': 'valid', 'test': 'test'}


@dataclasses.dataclass(frozen=True)
class ReleaseSplit:
  """One file split; `counts` is None when it has no teacher completions."""

  examples: tuple[Example, ...]
  counts: ParseCounts | None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> epath.Path:
  """`data_dir`, else $DSBS_DATA_DIR; an error if neither is set."""
  if data_dir is None:
    data_dir = os.environ.get(DATA_DIR_ENV)
    if not data_dir:
      raise DataError(f'no data directory: pass data_dir or set {DATA_DIR_ENV}')
  return epath.Path(data_dir)


# --------------------------------------------------------------------------
# Files.


def _loads(data: str | bytes, where: str, one_line: bool = False) -> Any:
  """`json.loads`; what it cannot decode raises DataError at `where`.

  `where` is the file, or the file and line when `one_line`.
  """
  try:
    return json.loads(data)
  except json.JSONDecodeError as error:
    at = f'column {error.colno}'
    if not one_line:
      at = f'line {error.lineno}, {at}'
    raise DataError(f'{where}: not valid JSON: {error.msg} ({at})') from None
  except UnicodeDecodeError as error:
    at = f'byte {error.start}'
    if not one_line and isinstance(data, bytes):
      line = data[: error.start].count(b'\n') + 1
      at = f'line {line}, {at}'
    raise DataError(f'{where}: not UTF-8: {error.reason} ({at})') from None
  except RecursionError:
    raise DataError(f'{where}: JSON nested too deeply') from None
  except ValueError as error:  # e.g. an integer of more than 4300 digits
    raise DataError(f'{where}: unusable JSON: {error}') from None


def _check_file(path: epath.Path) -> None:
  if path.is_dir():
    raise DataError(f'{path}: is a folder, not a file')
  if not path.is_file():
    raise DataError(f'{path}: no such file')


def read_json_lines(path: epath.Path) -> list[tuple[int, dict[str, Any]]]:
  """(line number, record) for every non-blank line; records must be objects."""
  _check_file(path)
  records = []
  try:
    with path.open('rb') as lines:
      for number, line in enumerate(lines, start=1):
        if not line.strip():
          continue
        try:
          text = line.decode('utf-8')
        except UnicodeDecodeError as error:
          raise DataError(
            f'{path}:{number}: not UTF-8: {error.reason} at byte {error.start}'
          ) from None
        record = _loads(text, f'{path}:{number}', one_line=True)
        if not isinstance(record, dict):
          raise DataError(
            f'{path}:{number}: expected a JSON object, '
            f'got {type(record).__name__}'
          )
        records.append((number, record))
  except OSError as error:
    raise DataError(
      f'{path}: cannot be read: {error.strerror or error}'
    ) from None
  return records


def completion_files(llm_dir: epath.Path, file_split: str) -> list[epath.Path]:
  """`<file_split>_CoT_<k>.json` for k = 0, 1, … in order; no gaps allowed."""
  pattern = re.compile(rf'{re.escape(file_split)}_CoT_(\d+)\.json')
  found = {}
  if llm_dir.is_dir():
    for path in sorted(llm_dir.iterdir()):
      match = pattern.fullmatch(path.name)
      if match:
        k = int(match.group(1))
        if k in found:
          raise DataError(
            f'{llm_dir}: {found[k].name} and {path.name} are both '
            f'completion file {k} of {file_split!r}'
          )
        found[k] = path
  if sorted(found) != list(range(len(found))):
    raise DataError(
      f'{llm_dir}: completion files for {file_split!r} are not '
      f'numbered 0, 1, …: found k = {sorted(found)}'
    )
  return [found[k] for k in range(len(found))]


def read_completions(paths: Sequence[epath.Path]) -> list[str]:
  """The completions of all files, concatenated in order."""
  completions: list[str] = []
  for path in paths:
    _check_file(path)
    try:
      data = path.read_bytes()
    except OSError as error:
      raise DataError(
        f'{path}: cannot be read: {error.strerror or error}'
      ) from None
    batch = _loads(data, str(path))
    if not isinstance(batch, list):
      raise DataError(
        f'{path}: expected a JSON array of strings, got {type(batch).__name__}'
      )
    for index, completion in enumerate(batch):
      if not isinstance(completion, str):
        raise DataError(
          f'{path}: element {index}: expected a string, '
          f'got {type(completion).__name__}'
        )
      problem = parsing.unicode_problem(completion)
      if problem:
        raise DataError(f'{path}: element {index}: {problem}')
    completions.extend(batch)
  return completions


# --------------------------------------------------------------------------
# The original release.


@functools.cache
def _load_release_split(
  name: str, file_split: str, root: epath.Path
) -> ReleaseSplit:
  spec = datasets.get(name, datasets.RELEASE)
  path = root / name / f'{name}_{file_split}.json'
  texts = []
  for number, record in read_json_lines(path):
    try:
      texts.append(spec.format_record(record))
    except parsing.FieldError as error:
      raise DataError(f'{path}:{number}: {error}') from None

  files = completion_files(root / name / 'llm', file_split)
  if not files:
    logging.info(
      '%s %s: %d examples, no teacher completions', name, file_split, len(texts)
    )
    return ReleaseSplit(
      tuple(Example(text, label) for text, label in texts), counts=None
    )
  completions = read_completions(files)
  if len(completions) != len(texts):
    names = ', '.join(map(str, files))
    raise DataError(
      f'{len(completions)} teacher completions in {names} '
      f'but {len(texts)} records in {path}'
    )

  parsed = [spec.parse_completion(completion) for completion in completions]
  counts = ParseCounts(
    completions=len(parsed),
    parsed=sum(p.rationale is not None and p.label is not None for p in parsed),
    without_rationale=sum(p.rationale is None for p in parsed),
    without_label=sum(p.label is None for p in parsed),
  )
  logging.info(
    '%s %s: %d teacher completions, %d parsed, %d unparsed '
    '(%d without rationale, %d without label)',
    name,
    file_split,
    counts.completions,
    counts.parsed,
    counts.unparsed,
    counts.without_rationale,
    counts.without_label,
  )
  examples = tuple(
    Example(text, label, p.rationale, p.label)
    for (text, label), p in zip(texts, parsed)
  )
  return ReleaseSplit(examples, counts)


def load_release_split(
  name: str, file_split: str, data_dir: str | os.PathLike | None = None
) -> ReleaseSplit:
  """A file split (`train`, `valid`, `test`) of a release dataset; cached."""
  datasets.get(name, datasets.RELEASE)
  return _load_release_split(
    name, file_split, resolve_data_dir(data_dir).resolve()
  )


def parse_counts(
  name: str, file_split: str, data_dir: str | os.PathLike | None = None
) -> ParseCounts | None:
  """Parsed and unparsed teacher completions of a file split, if it has any."""
  return load_release_split(name, file_split, data_dir).counts


# --------------------------------------------------------------------------
# Generic JSON Lines.

JSONL_FIELDS = ('input', 'label', 'rationale', 'llm_label')


@functools.cache
def _read_jsonl_examples(
  path: epath.Path, required: frozenset[str], version: tuple[int, int]
) -> tuple[Example, ...]:
  del version  # part of the cache key only
  examples = []
  for number, record in read_json_lines(path):
    values = {}
    try:
      for field in JSONL_FIELDS:
        if field in required or record.get(field) is not None:
          values[field] = parsing.get_text(record, field)
    except parsing.FieldError as error:
      raise DataError(f'{path}:{number}: {error}') from None
    examples.append(
      Example(
        values['input'],
        values['label'],
        values.get('rationale'),
        values.get('llm_label'),
      )
    )
  return tuple(examples)


def read_jsonl_examples(
  path: str | os.PathLike, required: Sequence[str] = ('input', 'label')
) -> tuple[Example, ...]:
  """A generic JSON Lines file; `required` fields must be on every line.

  Cached in-process until the file changes.
  """
  unknown = set(required) - set(JSONL_FIELDS)
  if unknown:
    raise ValueError(
      f'unknown fields {sorted(unknown)}; fields are {JSONL_FIELDS}'
    )
  path = epath.Path(path).resolve()
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  # Users edit their own files: a changed file is read again.
  stat = tf.io.gfile.stat(os.fspath(path))
  version = (stat.mtime_nsec, stat.length)
  required = frozenset(required) | {'input', 'label'}
  return _read_jsonl_examples(path, required, version)


# --------------------------------------------------------------------------
# Splits.


def _round(x: float) -> int:
  """Rounds half up (Python's round() rounds half to even)."""
  return math.floor(x + 0.5)


def holdout_indices(
  n: int, fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED
) -> tuple[list[int], list[int]]:
  """(train, held-out) indices in file order; round(fraction·n) held out."""
  permutation = np.random.RandomState(seed).permutation(n)
  held_out = set(permutation[: _round(fraction * n)].tolist())
  return [i for i in range(n) if i not in held_out], sorted(held_out)


def check_fraction(fraction: float) -> None:
  if not 0 < fraction <= 1:
    raise ValueError(f'data fraction must be in (0, 1], got {fraction}')


def fraction_indices(n: int, fraction: float, seed: int) -> list[int]:
  """A seeded subset of range(n) of size max(1, round(fraction·n)), in order.

  The subset is a prefix of one seeded permutation, so for a fixed seed a
  smaller fraction's subset lies inside a larger fraction's.
  """
  check_fraction(fraction)
  if fraction == 1:
    return list(range(n))
  size = max(1, _round(fraction * n))
  return sorted(np.random.RandomState(seed).permutation(n)[:size].tolist())


def assemble_split(
  load: Callable[[str], Sequence[Example]],
  split: str,
  *,
  has_validation: bool,
  data_fraction: float = 1.0,
  seed: int = 0,
) -> list[Example]:
  """Our `split` from a source's own splits, read with `load(split_name)`.

  Without a validation split of its own, `validation` is held out of `train`;
  the data fraction then subsets what remains of `train`, so validation does
  not change with the fraction.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')
  if split == 'test' or (split == 'validation' and has_validation):
    return list(load(split))
  train = load('train')
  if not has_validation:
    kept, held_out = holdout_indices(len(train))
    if split == 'validation':
      return [train[i] for i in held_out]
    train = [train[i] for i in kept]
  return [train[i] for i in fraction_indices(len(train), data_fraction, seed)]


def release_examples(
  name: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  data_fraction: float = 1.0,
  seed: int = 0,
) -> list[Example]:
  """`train`, `validation` or `test` of a release dataset."""
  spec = datasets.get(name, datasets.RELEASE)

  def load(our_split: str) -> tuple[Example, ...]:
    file_split = _FILE_SPLITS[our_split]
    return load_release_split(name, file_split, data_dir).examples

  return assemble_split(
    load,
    split,
    has_validation=spec.has_validation_file,
    data_fraction=data_fraction,
    seed=seed,
  )
