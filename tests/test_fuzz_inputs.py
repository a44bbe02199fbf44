"""Fuzzed inputs: every case is read, or fails with a UserError saying where.

Seeded cases mutate valid files (truncations, byte flips, other encodings,
huge lines, empty files, wrong JSON types, missing and extra fields, …) and
feed them to

* the data readers (`dsbs_tasks.sources`): the release layout of cqa, svamp,
  esnli and anli1 and a generic JSON Lines file. Each case ends in
  `DataError` naming the file (and the line, where one is at fault) or in
  examples a task can use;
* the binaries' gin flags (`gin_utils.parse_gin_flags`): `GinConfigError`
  with a one-line message, or a parsed configuration;
* the binaries' checkpoint paths (`checkpoint_import.load_params`,
  `config_from_hf`): `CheckpointError` naming the path, or parameters that
  fit the model.

Any other exception, or a case running longer than `CASE_SECONDS`, fails the
test with the case's seed and mutation. The failures of all cases are
reported together.
"""

from collections.abc import Callable
import contextlib
import json
import os
from pathlib import Path
import pickle
import random
import re
import shutil
import signal
import time
import traceback
from typing import Any
import zipfile

from absl import flags
from absl.testing import flagsaver
from conftest import T5X_TINY_DIR
from flax import serialization
from flax import traverse_util
import gin
import numpy as np
import pytest
import safetensors.numpy

from dsbs_jax import checkpoint_export
from dsbs_jax import checkpoint_import
from dsbs_jax import errors
from dsbs_jax import gin_utils
from dsbs_tasks import datasets
from dsbs_tasks import sources
from dsbs_tasks.examples import Example

CASE_SECONDS = 10  # a case taking longer hangs
HUGE_LINE_BYTES = 3 << 20
DATA_SEEDS = range(80)  # per release data set
JSONL_SEEDS = range(80)
GIN_SEEDS = range(100)
CHECKPOINT_SEEDS = range(120)


class _Hang(BaseException):  # not an Exception: no reader may swallow it
  pass


@contextlib.contextmanager
def _time_limit(seconds: float):
  def on_alarm(signum, frame):
    del signum, frame
    raise _Hang(f'still running after {seconds} s')

  previous = signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


class _Cases:
  """Runs cases, counts outcomes and collects the failures."""

  def __init__(self):
    self.failures: list[str] = []
    self.outcomes: dict[str, int] = {'accepted': 0, 'error': 0}
    self.count = 0

  def run(
    self,
    case: str,
    call: Callable[[], Any],
    error_type: type[Exception],
    check_error: Callable[[Exception], str | None],
    check_result: Callable[[Any], str | None],
  ) -> None:
    self.count += 1
    start = time.monotonic()
    problem = None
    try:
      with _time_limit(CASE_SECONDS):
        result = call()
    except _Hang as hang:
      problem = str(hang)
    except error_type as error:
      self.outcomes['error'] += 1
      problem = check_error(error)
      if problem:
        problem += f'\n    message: {str(error)[:600]!r}'
    except Exception as error:  # pylint: disable=broad-except
      frames = traceback.extract_tb(error.__traceback__)[-3:]
      where = '; '.join(f'{Path(f.filename).name}:{f.lineno}' for f in frames)
      problem = (
        f'{type(error).__name__} escaped: {str(error)[:300]!r} (at {where})'
      )
    else:
      self.outcomes['accepted'] += 1
      problem = check_result(result)
    elapsed = time.monotonic() - start
    if elapsed > CASE_SECONDS and not problem:
      problem = f'took {elapsed:.1f} s'
    if problem:
      self.failures.append(f'{case}: {problem}')

  def check(self, expected_cases: int) -> None:
    assert not self.failures, (
      f'{len(self.failures)} of {self.count} cases failed:\n'
      + '\n'.join(self.failures[:40])
    )
    assert self.count == expected_cases


# --------------------------------------------------------------------------
# Byte-level mutations, for any file.


def _flip_bytes(data: bytes, rng: random.Random) -> bytes:
  data = bytearray(data)
  for _ in range(rng.randint(1, 4)):
    if data:
      data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
  return bytes(data)


def _set_special_byte(data: bytes, rng: random.Random) -> bytes:
  if not data:
    return b'\n'
  data = bytearray(data)
  data[rng.randrange(len(data))] = rng.choice(b'\n\r"\\{}[]:,\x00\xff\x80')
  return bytes(data)


def _insert_nul(data: bytes, rng: random.Random) -> bytes:
  at = rng.randrange(len(data) + 1)
  return data[:at] + b'\x00' * rng.randint(1, 3) + data[at:]


def _truncate(data: bytes, rng: random.Random) -> bytes:
  return data[: rng.randrange(len(data) + 1)]


def _garbage(data: bytes, rng: random.Random) -> bytes:
  del data
  return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))


def _reencode(encoding: str) -> Callable[[bytes, random.Random], bytes]:
  def mutate(data: bytes, rng: random.Random) -> bytes:
    del rng
    return data.decode('utf-8').encode(encoding, errors='replace')

  return mutate


BYTE_MUTATIONS = {
  'truncate': _truncate,
  'flip_bytes': _flip_bytes,
  'special_byte': _set_special_byte,
  'nul_bytes': _insert_nul,
  'garbage': _garbage,
  'latin-1': _reencode('latin-1'),
  'utf-16': _reencode('utf-16'),
  'utf-16-be': _reencode('utf-16-be'),
  'utf-32': _reencode('utf-32'),
  'bom': lambda data, rng: b'\xef\xbb\xbf' + data,
  'empty': lambda data, rng: b'',
  'blank': lambda data, rng: b'\n \n\t\n',
  'crlf': lambda data, rng: data.replace(b'\n', b'\r\n'),
}


# --------------------------------------------------------------------------
# The data readers.

TEXTS = [
  'Where would you find a café?',
  'Naïve question — with “quotes” and emoji 🙂.',
  'A plain question?',
  'Tabs\tand\nnewlines inside a string.',
]


def _record(name: str, i: int, complete: bool = False) -> dict[str, Any]:
  """Record `i` of a data set; `complete`: a JSON Lines record with every
  optional field (otherwise some rationales are null, some labels absent)."""
  text = TEXTS[i % len(TEXTS)]
  if name == 'cqa':
    choices = ['shop', 'street', 'kitchen', 'park', 'café']
    return {
      'id': f'q{i}',
      'question': f'{text} ({i})',
      'choices': choices,
      'answer': choices[i % 5],
      'abstractive_explanation': 'Because.',
    }
  if name in ('svamp', 'jsonl'):
    record = {'input': f'{text} {i} + 2?', 'label': f'( {i}.0 + 2.0 )'}
    if name == 'jsonl':
      record['rationale'] = f'Add {i} and two.' if i % 3 or complete else None
      if i % 2 or complete:
        record['llm_label'] = f'( {i}.0 + 2.0 )'
    return record
  return {'premise': f'{text} {i}', 'hypothesis': f'Maybe {i}.', 'label': i % 3}


def _completion(name: str, record: dict[str, Any], i: int) -> str:
  if i % 5 == 4:
    return 'A completion that does not parse.'
  if name == 'cqa':
    return (
      f'Because of reasons. So the answer is (c) {record["answer"]}.'
      '\n\nQ: The next question?'
    )
  if name == 'svamp':
    return f'Add. The answer is {record["label"]}.\n\nQ: Next?'
  label = ('entailment', 'neutral', 'contradiction')[record['label']]
  if name == 'esnli':
    return f'It says so.\nAnswer: {label}\n\nPremise: next'
  return f'It says so. So the answer is {label}.\n\nPremise: next'


def _json_line(record: Any, i: int) -> str:
  return json.dumps(record, ensure_ascii=i % 2 == 0)


def _write_release(root: Path, name: str) -> list[tuple[Path, str]]:
  """A valid release data set; (file, kind) for every file written."""
  spec = datasets.get(name)
  file_splits = {'train': 5, 'test': 3}
  if spec.has_validation_file:
    file_splits['valid'] = 3
  folder = root / name
  (folder / 'llm').mkdir(parents=True)
  files = []
  for file_split, n in file_splits.items():
    records = [_record(name, i) for i in range(n)]
    path = folder / f'{name}_{file_split}.json'
    path.write_text('\n'.join(_json_line(r, i) for i, r in enumerate(records)))
    files.append((path, 'lines'))
    completions = [_completion(name, r, i) for i, r in enumerate(records)]
    # The train split's completions in two files, the others' in one.
    batches = [completions[:2], completions[2:]]
    if file_split != 'train':
      batches = [completions]
    for k, batch in enumerate(batches):
      path = folder / 'llm' / f'{file_split}_CoT_{k}.json'
      path.write_text(json.dumps(batch, ensure_ascii=k % 2 == 0))
      files.append((path, 'completions'))
  return files


WRONG_VALUES = [
  None,
  0,
  -1,
  3,
  1.5,
  True,
  '',
  '  ',
  [],
  ['a'],
  {},
  {'a': 1},
  'text',
  1e308,
  '\ud800',  # a lone surrogate (written escaped: valid JSON)
]


def _mutate_record(record: Any, rng: random.Random) -> tuple[Any, str]:
  """A record with one thing wrong (or odd), and what."""
  kind = rng.choice(
    ['not_object', 'missing', 'wrong_type', 'extra', 'choices', 'label']
  )
  if kind == 'not_object' or not isinstance(record, dict):
    value = rng.choice([None, 1, 'text', [record], [], True])
    return value, f'record is {value!r:.20}'
  record = dict(record)
  field = rng.choice(sorted(record))
  if kind == 'missing':
    del record[field]
    return record, f'field {field} missing'
  if kind == 'extra':
    record[rng.choice(['extra', 'Label', '', 'input '])] = rng.choice(
      WRONG_VALUES
    )
    return record, 'extra field'
  if kind == 'choices' and 'choices' in record:
    value = rng.choice(
      [['a'] * 4, ['a'] * 6, ['a', 'b', 'c', 'd', 5], 'a b c d e', None]
    )
    record['choices'] = value
    return record, f'choices = {value!r}'
  if kind == 'label' and isinstance(record.get('label'), int):
    value = rng.choice([-1, 3, 10**30, 1.0, '1', False, None])
    record['label'] = value
    return record, f'label = {value!r}'
  value = rng.choice(WRONG_VALUES)
  record[field] = value
  return record, f'{field} = {value!r:.20}'


def _mutate_lines(data: bytes, rng: random.Random) -> tuple[bytes, str, int]:
  """A JSON Lines file mutated; (bytes, what, the line a reader must blame,
  or 0 when not known)."""
  lines = data.split(b'\n')
  k = rng.randrange(len(lines))
  kind = rng.choice(
    ['bytes'] * 6
    + ['record'] * 6
    + ['huge', 'deep', 'big_int', 'drop_line', 'dup_line', 'blank_lines']
  )
  if kind == 'bytes':
    name = rng.choice(sorted(BYTE_MUTATIONS))
    return BYTE_MUTATIONS[name](data, rng), name, 0
  if kind == 'record':
    record, what = _mutate_record(json.loads(lines[k]), rng)
    lines[k] = json.dumps(record, ensure_ascii=rng.random() < 0.5).encode(
      'utf-8', 'surrogatepass'
    )
    return b'\n'.join(lines), f'line {k + 1}: {what}', k + 1
  if kind == 'huge':
    if rng.random() < 0.5:  # a valid record with a huge field
      record = json.loads(lines[k])
      field = rng.choice(sorted(record))
      if isinstance(record[field], str):
        record[field] += 'x' * HUGE_LINE_BYTES
      lines[k] = json.dumps(record).encode()
      return b'\n'.join(lines), f'line {k + 1}: huge field {field}', 0
    lines.insert(k, b'"' + b'y' * HUGE_LINE_BYTES)
    return b'\n'.join(lines), f'line {k + 1}: huge broken line', k + 1
  if kind == 'deep':
    lines[k] = b'[' * 100_000 + b']' * 100_000
    return b'\n'.join(lines), f'line {k + 1}: deeply nested', k + 1
  if kind == 'big_int':
    lines[k] = b'{"label": 1' + b'0' * 10_000 + b'}'
    return b'\n'.join(lines), f'line {k + 1}: 10001-digit number', k + 1
  if kind == 'drop_line':
    del lines[k]
    return b'\n'.join(lines), f'line {k + 1} dropped', 0
  if kind == 'dup_line':
    lines.insert(k, lines[k])
    return b'\n'.join(lines), f'line {k + 1} doubled', 0
  lines.insert(k, b'  \t ')
  return b'\n'.join(lines), f'blank line before line {k + 1}', 0


def _mutate_completions(data: bytes, rng: random.Random) -> tuple[bytes, str]:
  kind = rng.choice(['bytes'] * 5 + ['json'] * 5 + ['huge', 'deep', 'big_int'])
  if kind == 'bytes':
    name = rng.choice(sorted(BYTE_MUTATIONS))
    return BYTE_MUTATIONS[name](data, rng), name
  if kind == 'huge':
    batch = json.loads(data)
    batch[0] += ' So the answer is' * (HUGE_LINE_BYTES // 17)
    return json.dumps(batch).encode(), 'huge completion'
  if kind == 'deep':
    return b'[' * 100_000 + b']' * 100_000, 'deeply nested'
  if kind == 'big_int':
    return b'[1' + b'0' * 10_000 + b']', '10001-digit number'
  batch = json.loads(data)
  choice = rng.randrange(7)
  if choice == 0:
    value = rng.choice([{'0': batch}, 1, 'text', None, True])
    what = f'file is {type(value).__name__}'
    batch = value
  elif choice == 1:
    value = rng.choice([None, 1, [], {}, ['x'], True, '\ud800'])
    batch[rng.randrange(len(batch))] = value
    what = f'element is {value!r}'
  elif choice == 2:
    batch.pop(rng.randrange(len(batch)))
    what = 'one completion fewer'
  elif choice == 3:
    batch.append('So the answer is (a) extra.')
    what = 'one completion more'
  elif choice == 4:
    batch = []
    what = 'no completions'
  else:
    odd = [
      '',
      'So the answer is So the answer is',
      'The answer is (((',
      'Answer:',
      'Answer: ',
      'So the answer is (',
      'Premise: So the answer is x',
      '\x00\u2028\ufeff',
      'So the answer is (a)',
    ]
    batch[rng.randrange(len(batch))] = rng.choice(odd)
    what = 'odd completion text'
  return json.dumps(batch).encode('utf-8', 'surrogatepass'), what


def _line_count(data: bytes) -> int:
  return data.count(b'\n') + 1


def _first_changed_line(before: bytes, after: bytes) -> int:
  common = 0
  for a, b in zip(before, after):
    if a != b:
      break
    common += 1
  return before[:common].count(b'\n') + 1


def _check_examples(examples: Any) -> str | None:
  """What makes examples unusable for a task, if anything."""
  for example in examples:
    if not isinstance(example, Example):
      return f'accepted a {type(example).__name__}, not an Example'
    for field in ('input', 'label', 'rationale', 'teacher_label'):
      value = getattr(example, field)
      if value is None and field in ('rationale', 'teacher_label'):
        continue
      if not isinstance(value, str) or not value.strip():
        return f'accepted {field} = {value!r:.40}'
      try:
        value.encode('utf-8')
      except UnicodeEncodeError as error:
        return f'accepted {field} that is not UTF-8 encodable: {error}'
  return None


FILE_LEVEL = re.compile(
  r'no such file|not a file|is a folder|teacher completions in .* records in'
  r'|no records|not numbered|are both completion file'
)


def _check_data_error(
  target: Path, data: bytes | None, original: bytes, line: int
) -> Callable[[Exception], str | None]:
  """Checks a DataError names `target` and, where one is at fault, its line
  (`line`, or any line from the first the mutation changed)."""

  def check(error: Exception) -> str | None:
    message = str(error)
    if str(target) not in message and str(target.parent) not in message:
      return f'DataError does not name {target}'
    at_line = re.search(re.escape(str(target)) + r':(\d+):', message)
    if target.name.startswith(datasets.names(datasets.RELEASE)) or (
      target.suffix == '.jsonl'
    ):  # JSON Lines: a line at fault, or a file-level problem
      if at_line is None:
        if line:
          return f'DataError does not name line {line}'
        if not FILE_LEVEL.search(message):
          return 'DataError names no line'
        return None
      number = int(at_line.group(1))
      if line and number != line:
        return f'DataError names line {number}, not {line}'
      if data is not None and not (
        _first_changed_line(original, data) <= number <= _line_count(data)
      ):
        return f'DataError names line {number}, which is intact or absent'
    elif 'not valid JSON' in message and not re.search(r'line \d+', message):
      return 'DataError on invalid JSON names no line'
    return None

  return check


def _mutate_file(
  path: Path, kind: str, rng: random.Random
) -> tuple[str, bytes | None, int]:
  """Mutates a file in place: (what, its new bytes or None, line at fault)."""
  original = path.read_bytes()
  structural = rng.random()
  if structural < 0.04:
    path.unlink()
    return 'deleted', None, 0
  if structural < 0.08:
    path.unlink()
    path.mkdir()
    return 'a folder instead', None, 0
  if kind == 'completions' and structural < 0.14:
    number = int(path.stem.rpartition('_')[2])
    renamed = path.with_name(
      path.name.replace(f'_{number}.', rng.choice(['_5.', f'_0{number}.']))
    )
    if structural < 0.11:
      path.rename(renamed)
      return f'renamed to {renamed.name}', None, 0
    shutil.copy(path, renamed)
    return f'copied to {renamed.name}', original, 0
  if kind == 'lines':
    data, what, line = _mutate_lines(original, rng)
  else:
    (data, what), line = _mutate_completions(original, rng), 0
  path.write_bytes(data)
  return what, data, line


def _read_release(name: str, root: Path) -> list[Example]:
  examples = []
  for split in sources.SPLITS:
    examples += sources.release_examples(name, split, data_dir=root)
  examples += sources.release_examples(
    name, 'train', data_dir=root, data_fraction=0.5, seed=1
  )
  return examples


@pytest.fixture
def _fresh_reader_caches():
  yield
  sources._load_release_split.cache_clear()
  sources._read_jsonl_examples.cache_clear()


@pytest.mark.parametrize('name', sorted(datasets.names(datasets.RELEASE)))
def test_release_readers_fuzzed(name, tmp_path, _fresh_reader_caches):
  base = tmp_path / 'base'
  _write_release(base, name)
  assert len(_read_release(name, base)) > 0  # the base is valid
  cases = _Cases()
  for seed in DATA_SEEDS:
    rng = random.Random(f'{name}/{seed}')
    root = tmp_path / f'case{seed}'
    files = _write_release(root, name)
    target, kind = rng.choice(files)
    original = target.read_bytes()
    what, data, line = _mutate_file(target, kind, rng)
    target = target.resolve()
    cases.run(
      f'{name} seed {seed}: {target.name}: {what}',
      lambda name=name, root=root: _read_release(name, root),
      sources.DataError,
      _check_data_error(target, data, original, line),
      _check_examples,
    )
    sources._load_release_split.cache_clear()
    shutil.rmtree(root)
  print(name, len(DATA_SEEDS), 'cases:', cases.outcomes)
  cases.check(len(DATA_SEEDS))


def test_jsonl_reader_fuzzed(tmp_path, _fresh_reader_caches):
  cases = _Cases()
  for seed in JSONL_SEEDS:
    rng = random.Random(f'jsonl/{seed}')
    required = rng.choice(
      [('input', 'label'), ('input', 'label', 'rationale'), ('llm_label',)]
    )
    path = (tmp_path / f'case{seed}.jsonl').resolve()
    complete = len(required) != 2
    original = '\n'.join(
      _json_line(_record('jsonl', i, complete), i) for i in range(6)
    )
    path.write_text(original)
    original = original.encode()
    if seed < 3:  # the base is valid
      assert len(sources.read_jsonl_examples(path, required)) == 6
      sources._read_jsonl_examples.cache_clear()
    what, data, line = _mutate_file(path, 'lines', rng)
    cases.run(
      f'jsonl seed {seed}: {what}, required {required}',
      lambda path=path, required=required: sources.read_jsonl_examples(
        path, required
      ),
      sources.DataError,
      _check_data_error(path, data, original, line),
      _check_examples,
    )
    if path.is_dir():
      path.rmdir()
    else:
      path.unlink(missing_ok=True)
  print('jsonl', len(JSONL_SEEDS), 'cases:', cases.outcomes)
  cases.check(len(JSONL_SEEDS))


# --------------------------------------------------------------------------
# The binaries' gin flags.

GIN_FILES = [
  'runs/dsbs.gin',
  'runs/train.gin',
  'models/t5_1_1_tiny.gin',
  'data/synthetic.gin',
  'meshes/single_host.gin',
]
GIN_NAMES = [
  'BATCH_SIZE',
  'TASK_FEATURE_LENGTHS',
  'DATASET',
  'network.T5Config.emb_dim',
  'models.DistillStepByStepModel.alpha',
  'no.such.configurable',
  'network.T5Config.no_such_arg',
  '',
  '1x',
  'a b',
  'x.',
  '.x',
  '%X',
  '@x',
]
GIN_VALUES = [
  '',
  '1',
  "'unterminated",
  '"unterminated',
  '@no_such_configurable()',
  '@network.T5Config()',
  '%UNDEFINED_MACRO',
  '[[[',
  '{1:',
  '1e999',
  '1' + '0' * 5000,
  '[' * 5000 + ']' * 5000,
  'None',
  "'\udcff'",
  '\udcff',
  'a\nb',
  '(',
  ')',
  '\\',
  '#',
  "'x' 'y'",
  '1 2',
  'lambda: 0',
  '__import__("os")',
]
GIN_TOKENS = [
  '=',
  '@',
  '%',
  '(',
  ')',
  '[',
  ']',
  '{',
  '}',
  ':',
  '.',
  ',',
  'import',
  'include',
  'from',
  '__gin__',
  'dynamic_registration',
  '"',
  "'",
  '\\',
  '#',
  'network.T5Config',
  'emb_dim',
  '1e999',
  'None',
  'True',
  '\n',
  '\n    ',
  ' ',
  '/',
  'scope/',
]


def _copy_gin_files(gin_dir: Path) -> None:
  if gin_dir.exists():
    shutil.rmtree(gin_dir)
  for name in GIN_FILES:
    (gin_dir / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(gin_utils.project_gin_dir() / name, gin_dir / name)


def _gin_case(
  gin_dir: Path, rng: random.Random
) -> tuple[list[str], str, str | None]:
  """Command-line arguments (before rewriting), what is odd about them, and
  the name of the damaged gin file, if one is."""
  files = [
    gin_dir / name
    for name in ('runs/dsbs.gin',)
    + tuple(rng.sample(GIN_FILES[2:], rng.randint(0, 3)))
  ]
  args = [f'--gin_search_paths={gin_dir}']
  kind = rng.choice(['file'] * 5 + ['binding'] * 3 + ['path'] * 2)
  what, damaged = '', None
  if kind == 'file':
    target = gin_dir / rng.choice(GIN_FILES)
    damaged = target.name
    data = target.read_bytes()
    choice = rng.randrange(12)
    if choice < 4:
      name = rng.choice(sorted(BYTE_MUTATIONS))
      target.write_bytes(BYTE_MUTATIONS[name](data, rng))
      what = name
    elif choice < 6:
      lines = data.split(b'\n')
      garbage = ''.join(
        rng.choice(GIN_TOKENS) for _ in range(rng.randint(1, 8))
      )
      lines.insert(rng.randrange(len(lines) + 1), garbage.encode())
      target.write_bytes(b'\n'.join(lines))
      what = f'line {garbage!r}'
    elif choice == 6:
      target.unlink()
      what = 'deleted'
    elif choice == 7:
      target.unlink()
      target.mkdir()
      what = 'a folder instead'
    elif choice == 8:
      target.write_bytes(data + f"\ninclude '{target}'\n".encode())
      what = 'includes itself'
    elif choice == 9:
      target.write_bytes(data + b"\ninclude 'runs/dsbs.gin'\n")
      what = 'includes runs/dsbs.gin'
    elif choice == 10:
      target.write_bytes(data + rng.choice([b'\nX = (', b"\nX = '''"]))
      what = 'unclosed bracket or string at the end'
    else:
      target.write_bytes(
        data + rng.choice([b'\nX = ', b'\nX = [']) + b'[' * 20_000
      )
      what = 'deeply nested value'
    what = f'{target.relative_to(gin_dir)}: {what}'
  elif kind == 'binding':
    for _ in range(rng.randint(1, 3)):
      name = rng.choice(GIN_NAMES[: 5 if rng.random() < 0.6 else None])
      value = rng.choice(GIN_VALUES)
      if rng.random() < 0.15:
        args.append(f'--gin.{name}')
      elif rng.random() < 0.3:
        args.append(f'--gin_bindings={name} = {value}')
      else:
        args.append(f'--gin.{name}={value}')
    what = ' '.join(args[1:])
  else:
    choice = rng.randrange(6)
    if choice == 0:
      files = []
      what = 'no gin file'
    elif choice == 1:
      files.append(gin_dir / 'no_such_file.gin')
      what = 'nonexistent file'
    elif choice == 2:
      files.append(Path('no/such/relative.gin'))
      what = 'nonexistent relative file'
    elif choice == 3:
      files.append(gin_dir / 'runs')
      what = 'a folder as file'
    elif choice == 4:
      files.append(Path(''))
      what = 'empty file name'
    else:
      args.append('--gin_search_paths=/no/such/folder,')
      what = 'nonexistent search path'
  return [*args, *(f'--gin_file={f}' for f in files)], what, damaged


def _parse_gin_command_line(args: list[str]) -> None:
  """What a binary does with its command line, up to the parsed gin config."""
  argv = gin_utils.rewrite_gin_args(['binary', *args])
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  gin.clear_config()
  gin_utils.parse_gin_flags()


def _check_gin_error(damaged: str | None) -> Callable[[Exception], str | None]:
  """Checks for a one-line GinConfigError naming the damaged file (except
  for nesting too deep: an include cycle can be noticed in any file of it)."""

  def check(error: Exception) -> str | None:
    message = str(error)
    if not isinstance(error, gin_utils.GinConfigError):
      return f'{type(error).__name__} is not a GinConfigError'
    if '\n' in message.strip() or not message.strip():
      return 'GinConfigError message is not one line'
    if damaged and damaged not in message and 'too deeply' not in message:
      return f'GinConfigError does not name {damaged}'
    return None

  return check


@pytest.fixture
def _gin_state():
  was_parsed = flags.FLAGS.is_parsed()
  prefixes = list(gin.config._LOCATION_PREFIXES)
  with flagsaver.flagsaver():
    yield
  gin.config._LOCATION_PREFIXES[:] = prefixes
  gin.clear_config()
  if was_parsed:
    flags.FLAGS.mark_as_parsed()
  else:
    flags.FLAGS.unparse_flags()


def test_gin_flags_fuzzed(tmp_path, _gin_state):
  gin_dir = tmp_path / 'gin'
  _copy_gin_files(gin_dir)
  base = [f'--gin_search_paths={gin_dir}']
  base += [f'--gin_file={gin_dir / name}' for name in GIN_FILES]
  _parse_gin_command_line(base)  # the base is valid (and imports modules)
  cases = _Cases()
  for seed in GIN_SEEDS:
    rng = random.Random(f'gin/{seed}')
    _copy_gin_files(gin_dir)
    args, what, damaged = _gin_case(gin_dir, rng)
    cases.run(
      f'gin seed {seed}: {what}',
      lambda args=args: _parse_gin_command_line(args),
      errors.UserError,
      _check_gin_error(damaged),
      lambda result: None,
    )
  print('gin', len(GIN_SEEDS), 'cases:', cases.outcomes)
  cases.check(len(GIN_SEEDS))


# --------------------------------------------------------------------------
# The binaries' checkpoint paths.


def _copy_tree(source: Path, destination: Path) -> Path:
  """A writable copy (the reference files are read-only)."""
  shutil.copytree(source, destination, copy_function=shutil.copyfile)
  for folder, _, _ in os.walk(destination):
    os.chmod(folder, 0o755)
  return destination


HF_CONFIG = {
  'model_type': 't5',
  'vocab_size': 384,
  'd_model': 32,
  'd_kv': 8,
  'd_ff': 64,
  'num_layers': 2,
  'num_decoder_layers': 2,
  'num_heads': 4,
  'relative_attention_num_buckets': 32,
  'relative_attention_max_distance': 128,
  'dropout_rate': 0.0,
  'layer_norm_epsilon': 1e-6,
  'feed_forward_proj': 'gated-gelu',
  'tie_word_embeddings': False,
}


@pytest.fixture(scope='module')
def checkpoint_bases(tmp_path_factory) -> dict[str, Path]:
  """Valid checkpoints of the tiny T5: t5x legacy and orbax, HuggingFace
  safetensors (one file and sharded) and pytorch_model.bin."""
  root = tmp_path_factory.mktemp('checkpoints')
  bases = {
    'legacy': T5X_TINY_DIR / 'legacy_checkpoint_400',
    'orbax': T5X_TINY_DIR / 'orbax_checkpoint_400',
  }
  for name in ('safetensors', 'sharded', 'bin'):
    bases[name] = root / name
    bases[name].mkdir()
    (bases[name] / 'config.json').write_text(json.dumps(HF_CONFIG))
  tensors = checkpoint_export.hf_tensors(
    checkpoint_import.load_params(bases['legacy']),
    checkpoint_import.config_from_hf(bases['safetensors']),
  )
  safetensors.numpy.save_file(
    tensors, bases['safetensors'] / 'model.safetensors'
  )
  names = sorted(tensors)
  weight_map = {}
  for shard, part in enumerate((names[::2], names[1::2])):
    file = f'model-0000{shard + 1}-of-00002.safetensors'
    safetensors.numpy.save_file(
      {n: tensors[n] for n in part}, bases['sharded'] / file
    )
    weight_map.update(dict.fromkeys(part, file))
  (bases['sharded'] / 'model.safetensors.index.json').write_text(
    json.dumps({'metadata': {}, 'weight_map': weight_map})
  )
  torch = pytest.importorskip('torch')
  torch.save(
    {name: torch.from_numpy(value) for name, value in tensors.items()},
    bases['bin'] / 'pytorch_model.bin',
  )
  return bases


HF_WRONG_VALUES = [
  None,
  0,
  -4,
  2.5,
  '32',
  True,
  [],
  {},
  10**12,
  float('nan'),
]


def _mutate_json_file(path: Path, rng: random.Random) -> str:
  """A JSON object file with a wrong value, a missing key, or wrong type."""
  value = json.loads(path.read_text())
  choice = rng.randrange(4)
  if choice == 0:
    value = rng.choice([[value], 1, 'text', None])
    what = f'is {type(value).__name__}'
  elif choice == 1 and value:
    key = rng.choice(sorted(value))
    del value[key]
    what = f'{key} missing'
  else:
    key = rng.choice(sorted(value))
    if key == 'weight_map' and rng.random() < 0.7:
      names = sorted(value[key])
      bad = rng.choice(
        ['../../x.safetensors', 'missing.safetensors', '', '.', 3, None, []]
      )
      value[key][rng.choice(names)] = bad
      what = f'weight_map entry {bad!r}'
    else:
      value[key] = rng.choice(
        HF_WRONG_VALUES
        + [
          'bert',
          'gated-',
          'gated-swish',
          'x-gelu',
          'gated-gelu_new',
          'gelu',
          'silu',
        ]
      )
      what = f'{key} = {value[key]!r}'
  path.write_text(json.dumps(value))
  return what


def _mutate_safetensors_header(path: Path, rng: random.Random) -> str:
  data = path.read_bytes()
  size = int.from_bytes(data[:8], 'little')
  header = json.loads(data[8 : 8 + size])
  name = rng.choice(sorted(k for k in header if k != '__metadata__'))
  choice = rng.randrange(5)
  if choice == 0:
    header[name]['dtype'] = rng.choice(['I64', 'U8', 'BOOL', 'F8_E4M3', 'X'])
    what = f'{name} dtype {header[name]["dtype"]}'
  elif choice == 1:
    header[name]['shape'] = rng.choice([[], [7], [1, 2, 3], [-1], [10**9]])
    what = f'{name} shape {header[name]["shape"]}'
  elif choice == 2:
    start, end = header[name]['data_offsets']
    header[name]['data_offsets'] = rng.choice(
      [[end, start], [start, end + 4], [start, 10**12], [0, 0]]
    )
    what = f'{name} offsets {header[name]["data_offsets"]}'
  elif choice == 3:
    return _set_header_size(path, data, rng)
  else:
    header[name] = rng.choice([None, 1, 'x', {}])
    what = f'{name} entry {header[name]!r}'
  encoded = json.dumps(header).encode()
  encoded += b' ' * (-len(encoded) % 8)
  path.write_bytes(
    len(encoded).to_bytes(8, 'little') + encoded + data[8 + size :]
  )
  return what


def _set_header_size(path: Path, data: bytes, rng: random.Random) -> str:
  size = rng.choice([0, 1, 2**40, 2**64 - 1, len(data)])
  path.write_bytes(size.to_bytes(8, 'little') + data[8:])
  return f'header size {size}'


def _mutate_bin(path: Path, rng: random.Random) -> str:
  """A pytorch_model.bin archive with a damaged member, or none."""
  with zipfile.ZipFile(path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  pickle_name = next(n for n in members if n.endswith('/data.pkl'))
  choice = rng.randrange(5)
  if choice == 0:
    name = rng.choice(sorted(members))
    del members[name]
    what = f'no {name}'
  elif choice == 1:
    mutation = rng.choice(['truncate', 'flip_bytes', 'garbage', 'special_byte'])
    members[pickle_name] = BYTE_MUTATIONS[mutation](members[pickle_name], rng)
    what = f'data.pkl: {mutation}'
  elif choice == 2:
    name = rng.choice([n for n in sorted(members) if '/data/' in n])
    members[name] = members[name][: rng.randrange(len(members[name]))]
    what = f'{name} truncated'
  elif choice == 3:
    members['other/data.pkl'] = members[pickle_name]
    what = 'two data.pkl'
  else:
    members[pickle_name] = pickle.dumps(
      rng.choice([[1, 2], {'a': 1}, None, {'a': 'text'}, {1: 2}]), protocol=2
    )
    what = 'data.pkl holds no tensors'
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return what


def _mutate_msgpack(path: Path, rng: random.Random) -> str:
  """The legacy `checkpoint` with a damaged tree."""
  state = serialization.msgpack_restore(path.read_bytes())
  target = state['optimizer']['target']
  flat = traverse_util.flatten_dict(
    target, is_leaf=lambda _, v: isinstance(v, dict) and 'driver' in v
  )
  key = rng.choice(sorted(flat))
  spec = flat[key]
  choice = rng.randrange(7)
  if choice == 0:
    state = rng.choice([{}, {'optimizer': 1}, {'optimizer': {'target': []}}])
    what = f'state {state!r}'
  elif choice == 1:
    del flat[key]
    what = f'no {"/".join(key)}'
  elif choice == 2:
    flat[key] = rng.choice(['text', None, [1, 2], {'a': 1}, b'\x00'])
    what = f'{"/".join(key)} is {flat[key]!r}'
  elif choice == 3:
    spec['kvstore'] = rng.choice([{}, None, 'x', {'path': 7}])
    what = f'kvstore {spec["kvstore"]!r}'
  elif choice == 4:
    spec['driver'] = rng.choice(['nonexistent', 'n5', 7])
    what = f'driver {spec["driver"]!r}'
  elif choice == 5:
    spec['kvstore']['path'] = rng.choice(['../../..', 'missing/', '', '/'])
    what = f'kvstore path {spec["kvstore"]["path"]!r}'
  else:
    spec['metadata'] = rng.choice([{'shape': [3]}, {'shape': 'x'}, None])
    what = f'metadata {spec["metadata"]!r}'
  if choice:
    state['optimizer']['target'] = traverse_util.unflatten_dict(flat)
  path.write_bytes(serialization.msgpack_serialize(state))
  return what


def _damage_file(path: Path, rng: random.Random) -> str:
  """Bytes mutated, the file deleted or made a folder."""
  choice = rng.random()
  if choice < 0.1:
    path.unlink()
    return 'deleted'
  if choice < 0.2:
    path.unlink()
    path.mkdir()
    return 'a folder instead'
  name = rng.choice(
    ['truncate', 'truncate', 'flip_bytes', 'flip_bytes', 'special_byte']
    + ['garbage', 'empty', 'nul_bytes', 'utf-16', 'latin-1']
  )
  data = path.read_bytes()
  if name in ('utf-16', 'latin-1'):
    data = data.decode('utf-8', 'replace').encode('utf-8')
  path.write_bytes(BYTE_MUTATIONS[name](data, rng))
  return name


def _checkpoint_case(
  work: dict[str, Path], fresh: Path, rng: random.Random
) -> tuple[Path, str, str, list[Path]]:
  """Damages a working copy of a base checkpoint (or picks a bad path).

  Returns the path to load, what was done, the base and what it touched.
  """
  kind = rng.choice(
    ['legacy'] * 8
    + ['orbax'] * 2
    + ['safetensors'] * 6
    + ['sharded'] * 2
    + ['bin'] * 3
    + ['path'] * 2
  )
  if kind == 'path':
    choice = rng.randrange(4)
    if choice == 0:
      return fresh, 'path: nonexistent', kind, []
    if choice == 1:
      fresh.mkdir()
      return fresh, 'path: an empty folder', kind, [fresh]
    if choice == 2:
      fresh.write_bytes(b'not a checkpoint')
      return fresh, 'path: a file', kind, [fresh]
    (work['legacy'] / 'checkpoint').unlink()
    what = 'path: legacy without checkpoint file'
    return work['legacy'], what, 'legacy', [work['legacy'] / 'checkpoint']
  folder = work[kind]
  if kind == 'legacy':
    file = folder / 'checkpoint'
    choice = rng.randrange(4)
    if choice == 0:
      return (
        folder,
        f'legacy checkpoint: {_damage_file(file, rng)}',
        kind,
        [file],
      )
    if choice == 1:
      return folder, f'legacy tree: {_mutate_msgpack(file, rng)}', kind, [file]
    array = rng.choice(sorted(folder.glob('target.*')))
    if choice == 2 and rng.random() < 0.2:
      shutil.rmtree(array)
      return folder, f'legacy {array.name}: deleted', kind, [array]
    file = array / rng.choice(
      ['.zarray', '0.0' if (array / '0.0').exists() else '0']
    )
    what = f'legacy {array.name}/{file.name}: {_damage_file(file, rng)}'
    return folder, what, kind, [file]
  if kind == 'orbax':
    state = folder / 'state'
    if rng.random() < 0.1:
      shutil.rmtree(state)
      state.mkdir()
      return folder, 'orbax: empty state/', kind, [state]
    file = rng.choice(sorted(p for p in state.rglob('*') if p.is_file()))
    what = f'orbax {file.relative_to(folder)}: {_damage_file(file, rng)}'
    return folder, what, kind, [file]
  if rng.random() < 0.35:
    file = folder / 'config.json'
    if rng.random() < 0.5:
      what = f'config.json: {_mutate_json_file(file, rng)}'
    else:
      what = f'config.json: {_damage_file(file, rng)}'
    return folder, what, kind, [file]
  if kind == 'safetensors':
    file = folder / 'model.safetensors'
    if rng.random() < 0.5:
      what = _mutate_safetensors_header(file, rng)
    else:
      what = _damage_file(file, rng)
    return folder, f'model.safetensors: {what}', kind, [file]
  if kind == 'sharded':
    file = folder / 'model.safetensors.index.json'
    if rng.random() < 0.5:
      what = f'index: {_mutate_json_file(file, rng)}'
    elif rng.random() < 0.5:
      what = f'index: {_damage_file(file, rng)}'
    else:
      file = rng.choice(sorted(folder.glob('model-*')))
      what = f'{file.name}: {_damage_file(file, rng)}'
    return folder, what, kind, [file]
  file = folder / 'pytorch_model.bin'
  if rng.random() < 0.5:
    what = _mutate_bin(file, rng)
  else:
    what = _damage_file(file, rng)
  return folder, f'pytorch_model.bin: {what}', kind, [file]


def _remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path)
  else:
    path.unlink(missing_ok=True)


def _restore(base: Path, work: Path, touched: list[Path]) -> None:
  """Puts back what a case changed in a working copy of `base`."""
  for path in touched:
    _remove(path)
    if not path.is_relative_to(work):
      continue
    source = base / path.relative_to(work)
    if source.is_dir():
      _copy_tree(source, path)
    elif source.exists():
      shutil.copyfile(source, path)


def _load_checkpoint(path: Path, config) -> Any:
  """What the binaries do with INITIAL_CHECKPOINT_PATH (and a HuggingFace
  folder's config)."""
  if (path / 'config.json').exists():
    checkpoint_import.config_from_hf(path)
  return checkpoint_import.load_params(path, config)


def _check_checkpoint_error(path: Path) -> Callable[[Exception], str | None]:
  def check(error: Exception) -> str | None:
    if str(path) not in str(error):
      return f'CheckpointError does not name {path}'
    return None

  return check


def _check_params(config) -> Callable[[Any], str | None]:
  def check(params: Any) -> str | None:
    try:
      checkpoint_import.check_params(params, config)
    except checkpoint_import.CheckpointError as error:
      return f'accepted parameters that do not fit: {error}'
    leaves = traverse_util.flatten_dict(params).values()
    if not all(
      isinstance(v, np.ndarray) and v.dtype == np.float32 for v in leaves
    ):
      return 'accepted parameters that are not float32 arrays'
    return None

  return check


def test_checkpoint_paths_fuzzed(tmp_path, tiny_config, checkpoint_bases):
  # Working copies, damaged by one case and repaired for the next: copying
  # a checkpoint per case would take most of the time.
  work = {
    kind: _copy_tree(base, tmp_path / kind)
    for kind, base in checkpoint_bases.items()
  }
  for folder in work.values():  # the bases are valid
    assert (
      _check_params(tiny_config)(_load_checkpoint(folder, tiny_config)) is None
    )
  cases = _Cases()
  for seed in CHECKPOINT_SEEDS:
    rng = random.Random(f'checkpoint/{seed}')
    fresh = tmp_path / f'case{seed}'
    path, what, kind, touched = _checkpoint_case(work, fresh, rng)
    cases.run(
      f'checkpoint seed {seed}: {what}',
      lambda path=path: _load_checkpoint(path, tiny_config),
      checkpoint_import.CheckpointError,
      _check_checkpoint_error(path),
      _check_params(tiny_config),
    )
    if kind in work:
      _restore(checkpoint_bases[kind], work[kind], touched)
    else:
      for file in touched:
        _remove(file)
  print('checkpoints', len(CHECKPOINT_SEEDS), 'cases:', cases.outcomes)
  cases.check(len(CHECKPOINT_SEEDS))
