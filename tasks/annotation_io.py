"""dsbs-annotate's files: the inputs, the resumable journal, the outputs.

Inputs are a split of the original release or JSON Lines of your own. Each
answered input is appended to the journal at once (one JSON line per
sample), so that a rerun after a kill skips what it holds; the outputs are
written from the journal when every input is answered: the journal itself
in input order (the JSON Lines output) and, for the release layout, the
`llm/<split>_CoT_<k>.json` arrays, each file atomically. docs/annotate.md
describes the formats.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import json
import os
from pathlib import Path
import re
from typing import Any

from etils import epath

from dsbs_tasks import datasets
from dsbs_tasks import parsing
from dsbs_tasks import prompting
from dsbs_tasks import sources
from dsbs_tasks import teachers
from dsbs_tasks.prompting import AnnotateError


@dataclasses.dataclass(frozen=True)
class Item:
  """One input; `id` is its position among the file's records (from 0)."""

  id: int
  input: str
  label: str | None
  slots: dict[str, str]


def _read_items(
  path: Path | str,
  input_and_label: Callable[[dict[str, Any]], tuple[str, str | None]],
) -> list[Item]:
  items = []
  for number, record in sources.read_json_lines(epath.Path(path)):
    try:
      text, label = input_and_label(record)
    except parsing.FieldError as error:
      raise sources.DataError(f'{path}:{number}: {error}') from None
    slots = prompting.slots_for(text, record)
    items.append(Item(len(items), text, label, slots))
  return items


def read_release_items(
  data_dir: str | None, dataset: str, split: str
) -> tuple[list[Item], Path]:
  """A file split (`train`, `valid`, `test`) of the original release."""
  if dataset not in datasets.names(datasets.RELEASE):
    raise AnnotateError(
      f'--dataset={dataset}: expected one of '
      f'{", ".join(datasets.names(datasets.RELEASE))}'
    )
  spec = datasets.get(dataset)
  root = Path(os.fspath(sources.resolve_data_dir(data_dir)))
  path = root / dataset / f'{dataset}_{split}.json'
  if not path.is_file() and (root / dataset).is_dir():
    found = sorted(
      p.name.removeprefix(f'{dataset}_').removesuffix('.json')
      for p in (root / dataset).glob(f'{dataset}_*.json')
    )
    raise AnnotateError(
      f'{path}: no such file (splits there: {", ".join(found) or "none"})'
    )
  return _read_items(path, spec.format_record), path


def _input_and_label(record: dict[str, Any]) -> tuple[str, str | None]:
  text = parsing.get_text(record, 'input')
  label = None
  if record.get('label') is not None:
    label = parsing.get_text(record, 'label')
  return text, label


def read_jsonl_items(path: str) -> list[Item]:
  """JSON Lines with `input` and, where known, `label` (the ground truth)."""
  return _read_items(path, _input_and_label)


def make_records(
  item: Item,
  completions: Sequence[teachers.Completion],
  first_sample: int,
  prompt: prompting.Prompt,
  n: int,
) -> list[dict[str, Any]]:
  """The journal's lines for an input's completions, parsed."""
  lines = []
  for offset, (text, finish_reason) in enumerate(completions):
    completion = text.strip()
    parsed = prompt.parse(completion)
    record: dict[str, Any] = {'id': item.id}
    if n > 1:
      record['sample'] = first_sample + offset
    record['input'] = item.input
    if item.label is not None:
      record['label'] = item.label
    record['rationale'] = parsed.rationale if parsed else None
    record['llm_label'] = parsed.label if parsed else None
    record['completion'] = completion
    record['finish_reason'] = finish_reason
    lines.append(record)
  return lines


def _json_lines(lines: Sequence[dict[str, Any]]) -> bytes:
  return b''.join(
    json.dumps(r, ensure_ascii=False).encode('utf-8') + b'\n' for r in lines
  )


def _write_atomically(path: Path, data: bytes) -> None:
  """A temporary file renamed into place: a kill leaves the old or the new."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
  with open(tmp, 'wb') as file:
    file.write(data)
    file.flush()
    os.fsync(file.fileno())
  os.replace(tmp, path)


class Journal:
  """Records of answered samples, appended one input at a time.

  A rerun reads it back: the records of complete lines are kept, a torn last
  line (a kill in the middle of a write) is cut off, and records written for
  other inputs are an error. Holds an exclusive lock while open, so two runs
  cannot write one journal.
  """

  def __init__(self, path: Path, items: Sequence[Item]):
    self.path = path
    self.samples: dict[int, dict[int, dict[str, Any]]] = {}
    self._inputs = len(items)
    path.parent.mkdir(parents=True, exist_ok=True)
    self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      self._lock()
      self._load(items)
    except BaseException:
      os.close(self._fd)
      raise

  def _lock(self) -> None:
    try:
      import fcntl  # pylint: disable=g-import-not-at-top
    except ImportError:  # not POSIX: no lock
      return
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      raise AnnotateError(
        f'{self.path}: another dsbs-annotate is writing it'
      ) from None

  def _load(self, items: Sequence[Item]) -> None:
    with open(self.path, 'rb') as file:
      data = file.read()
    lines = data.split(b'\n')
    kept = 0
    for number, line in enumerate(lines[:-1], start=1):
      kept += len(line) + 1
      if not line.strip():
        continue
      where = f'{self.path}:{number}'
      try:
        record = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
      if (
        not isinstance(record, dict)
        or not isinstance(record.get('id'), int)
        or not isinstance(record.get('sample', 0), int)
      ):
        raise AnnotateError(
          f'{where}: not a record of dsbs-annotate; delete the file or '
          'choose another --output'
        )
      index = record['id']
      if (
        not 0 <= index < len(items) or record.get('input') != items[index].input
      ):
        raise AnnotateError(
          f'{where}: written for other inputs (input {index} differs); '
          'delete the file or choose another --output'
        )
      sample = record.get('sample', 0)
      self.samples.setdefault(index, {}).setdefault(sample, record)
    if lines[-1]:  # no newline at the end: a torn write
      os.truncate(self.path, kept)

  def count(self, index: int) -> int:
    return len(self.samples.get(index, {}))

  def append(self, records: Sequence[dict[str, Any]]) -> None:
    view = memoryview(_json_lines(records))
    while view:
      written = os.write(self._fd, view)
      view = view[written:]
    for record in records:
      sample = record.get('sample', 0)
      self.samples.setdefault(record['id'], {})[sample] = record

  def records(self) -> list[dict[str, Any]]:
    """All records by input, then sample."""
    return [
      self.samples[index][sample]
      for index in sorted(self.samples)
      for sample in sorted(self.samples[index])
    ]

  def first_samples(self) -> list[dict[str, Any]]:
    """Each input's first record, in input order (all inputs answered)."""
    return [
      self.samples[index][min(self.samples[index])]
      for index in range(self._inputs)
    ]

  def rewrite_sorted(self) -> None:
    """The same records, in order (atomically)."""
    _write_atomically(self.path, _json_lines(self.records()))

  def close(self) -> None:
    if self._fd >= 0:
      os.close(self._fd)
      self._fd = -1


def write_release(
  folder: Path,
  split_file: Path,
  split: str,
  completions: Sequence[str],
  per_file: int,
) -> list[str]:
  """`llm/<split>_CoT_<k>.json`, and copies of the dataset's split files.

  The annotated split's file is copied (replacing a different one); the
  dataset's other split files only where missing, so that `folder` is a
  complete data directory (other splits need no completions for the tasks).
  """
  written = []
  for source in sorted(split_file.parent.glob(f'{folder.name}_*.json')):
    target = folder / source.name
    if target.exists() and (target.samefile(source) or source != split_file):
      continue
    data = source.read_bytes()
    if not target.exists() or target.read_bytes() != data:
      _write_atomically(target, data)
      written.append(str(target))
  llm = folder / 'llm'
  count = max(1, -(-len(completions) // per_file))
  for k in range(count):
    path = llm / f'{split}_CoT_{k}.json'
    chunk = completions[k * per_file : (k + 1) * per_file]
    _write_atomically(
      path, json.dumps(chunk, ensure_ascii=False).encode('utf-8')
    )
    written.append(str(path))
  # Files of an earlier, longer split would misalign the completions.
  pattern = re.compile(rf'{re.escape(split)}_CoT_(\d+)\.json')
  for path in llm.iterdir():
    match = pattern.fullmatch(path.name)
    if match and int(match.group(1)) >= count:
      path.unlink()
  return written
