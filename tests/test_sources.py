"""Reading the release layout and JSON Lines; parse counts on the real data
(the sample in tests/testdata, and the full release where DSBS_TEST_DATA_DIR
gives it, against docs/data_counts.md too); splits and data fractions."""

import json
from pathlib import Path
import re

from conftest import SAMPLE_DATA_DIR
import pytest

from dsbs_tasks import metrics
from dsbs_tasks import sources
from dsbs_tasks.examples import Example
from dsbs_tasks.sources import DataError

DATA = SAMPLE_DATA_DIR
DATA_COUNTS_DOC = (
  Path(__file__).resolve().parents[1] / 'docs' / 'data_counts.md'
)
REAL_SPLITS = [
  ('cqa', 'train'),
  ('cqa', 'test'),
  ('svamp', 'train'),
  ('svamp', 'test'),
  ('esnli', 'valid'),
  ('anli1', 'valid'),
]

# --------------------------------------------------------------------------
# Parse counts on the real data against a straightforward re-implementation.


def _cut(text, marker):
  index = text.find(marker)
  return (text if index < 0 else text[:index]).rstrip()


def _once(text, marker):
  """(before, after) if marker occurs exactly once."""
  if text.count(marker) != 1:
    return None
  index = text.index(marker)
  return text[:index], text[index + len(marker) :]


def reference_parse(name, completion):
  """(rationale, label), '' for a missing part; not using dsbs_tasks."""
  if name == 'esnli':
    if 'Answer:' not in completion:
      return '', ''
    rationale = completion[: completion.index('Answer:')].rstrip()
    if 'Answer: ' not in completion:
      return rationale, ''
    after = completion[completion.index('Answer: ') + len('Answer: ') :]
    return rationale, _cut(_cut(after, 'Answer: '), 'Premise')
  cut_at, marker = {
    'cqa': ('Q:', 'So the answer is'),
    'svamp': ('Q:', 'The answer is'),
    'anli1': ('Premise:', 'So the answer is'),
  }[name]
  parts = _once(_cut(completion, cut_at), marker)
  if parts is None:
    return '', ''
  rationale, rest = parts[0].rstrip(), parts[1]
  if name == 'cqa':
    markers = [m.span() for m in re.finditer(r'\(.\)', rest)]
    if not markers:
      return rationale, ''
    end = markers[1][0] if len(markers) > 1 else len(rest)
    label = rest[markers[0][1] : end].strip()
    return rationale, label[:-1] if label.endswith('.') else label
  if name == 'svamp':
    line = rest[rest.find('(') :].split('\n')[0] if '(' in rest else ''
    return rationale, line[: line.rfind(')') + 1] if ')' in line else ''
  return rationale, rest.lstrip()[:-1]


def _raw_split(name, file_split, root=DATA):
  lines = (root / name / f'{name}_{file_split}.json').read_text().splitlines()
  completions = []
  llm = root / name / 'llm'
  for k in range(len(list(llm.glob(f'{file_split}_CoT_*.json')))):
    completions += json.loads((llm / f'{file_split}_CoT_{k}.json').read_text())
  return [json.loads(line) for line in lines], completions


@pytest.mark.parametrize('name, file_split', REAL_SPLITS)
def test_parse_counts_on_the_real_data(name, file_split, any_data_dir):
  records, completions = _raw_split(name, file_split, any_data_dir)
  assert len(records) == len(completions)
  expected = [reference_parse(name, c) for c in completions]
  counts = sources.parse_counts(name, file_split, any_data_dir)
  assert counts.completions == len(records)
  assert counts.parsed + counts.unparsed == len(records)
  assert counts.parsed == sum(bool(r) and bool(lab) for r, lab in expected)
  assert counts.without_rationale == sum(not r for r, _ in expected)
  assert counts.without_label == sum(not lab for _, lab in expected)
  examples = sources.load_release_split(name, file_split, any_data_dir).examples
  parts = [(e.rationale or '', e.teacher_label or '') for e in examples]
  assert parts == expected


@pytest.mark.parametrize('name, file_split', REAL_SPLITS)
def test_the_sample_has_unparsed_completions_where_the_release_has(
  name, file_split
):
  """The sample exercises the unparsed path wherever the release can: every
  split but cqa test, in which every completion parses (docs/data_counts.md).
  """
  counts = sources.parse_counts(name, file_split, DATA)
  assert (counts.unparsed > 0) == ((name, file_split) != ('cqa', 'test'))


def _doc_table(heading_columns):
  """Rows of the docs/data_counts.md table whose header starts with these."""
  rows, inside = [], False
  for line in DATA_COUNTS_DOC.read_text().splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if line.startswith('|') and cells[: len(heading_columns)] == list(
      heading_columns
    ):
      inside = True
    elif inside and not line.startswith('|'):
      break
    elif inside and not set(''.join(cells)) <= set('-: '):
      rows.append(cells)
  return rows


def test_data_counts_doc_matches_the_full_release(release_data_dir):
  """docs/data_counts.md: parse counts and teacher accuracy per file split,
  then the sizes of the task splits, all from the full release."""
  rows = _doc_table(('dataset', 'file split'))
  assert [tuple(row[:2]) for row in rows] == REAL_SPLITS
  for name, file_split, *numbers in rows:
    counts = sources.parse_counts(name, file_split, release_data_dir)
    examples = sources.load_release_split(
      name, file_split, release_data_dir
    ).examples
    metric = metrics.equation_accuracy if name == 'svamp' else metrics.accuracy
    accuracy = metric(
      [e.label for e in examples], [e.teacher_label or '' for e in examples]
    )['accuracy']
    assert numbers == [
      str(counts.completions),
      str(counts.parsed),
      str(counts.unparsed),
      str(counts.without_rationale),
      str(counts.without_label),
      f'{accuracy:.4f}',
    ], (name, file_split)

  rows = _doc_table(('dataset', 'train', 'validation', 'test'))
  assert [row[0] for row in rows] == ['cqa', 'svamp']
  for name, *numbers in rows:
    splits = {
      split: sources.release_examples(name, split, data_dir=release_data_dir)
      for split in ('train', 'validation', 'test')
    }
    train = splits['train']
    without_label = sum(e.teacher_label is None for e in train)
    without_rationale = sum(e.rationale is None for e in train)
    assert numbers == [
      *(str(len(split)) for split in splits.values()),
      f'{without_label} / {without_rationale}',
    ], name


def test_examples_keep_the_ground_truth_next_to_the_teacher():
  records, _ = _raw_split('cqa', 'train')
  examples = sources.load_release_split('cqa', 'train', DATA).examples
  assert [e.label for e in examples] == [r['answer'] for r in records]
  assert examples[0].input.startswith(
    records[0]['question'] + '\nAnswer Choices:\n(a) '
  )


# --------------------------------------------------------------------------
# Splits and data fractions.


def test_held_out_validation_is_ten_percent_disjoint_and_fixed():
  file_train = sources.load_release_split('cqa', 'train', DATA).examples
  train = sources.release_examples('cqa', 'train', data_dir=DATA)
  validation = sources.release_examples('cqa', 'validation', data_dir=DATA)
  assert len(validation) == round(0.1 * len(file_train))
  assert len(train) + len(validation) == len(file_train)
  train_ids = {id(e) for e in train}
  validation_ids = {id(e) for e in validation}
  assert not train_ids & validation_ids
  assert train_ids | validation_ids == {id(e) for e in file_train}
  # A data fraction subsets train only.
  assert (
    sources.release_examples(
      'cqa', 'validation', data_dir=DATA, data_fraction=0.2, seed=3
    )
    == validation
  )


def test_splits_with_a_validation_file_use_it(tmp_path):
  _write_release(tmp_path, 'anli1', 'valid', [_nli(i) for i in range(3)])
  validation = sources.release_examples(
    'anli1', 'validation', data_dir=tmp_path
  )
  assert [e.label for e in validation] == [
    'entailment',
    'neutral',
    'contradiction',
  ]


def test_data_fractions_are_nested_and_deterministic():
  fractions = [0.01, 0.1, 0.25, 0.5, 0.75, 1.0]
  for seed in range(3):
    subsets = [set(sources.fraction_indices(1000, f, seed)) for f in fractions]
    assert [len(s) for s in subsets] == [10, 100, 250, 500, 750, 1000]
    assert all(small <= large for small, large in zip(subsets, subsets[1:]))
    again = [set(sources.fraction_indices(1000, f, seed)) for f in fractions]
    assert subsets == again
  assert sources.fraction_indices(1000, 0.1, 0) != sources.fraction_indices(
    1000, 0.1, 1
  )
  assert len(sources.fraction_indices(5, 0.01, 0)) == 1


def test_data_fractions_on_real_data_are_nested_subsets_of_train():
  def inputs(**subset):
    examples = sources.release_examples(
      'svamp', 'train', data_dir=DATA, **subset
    )
    return [e.input for e in examples]

  train = inputs()
  quarter = inputs(data_fraction=0.25, seed=7)
  half = inputs(data_fraction=0.5, seed=7)
  assert len(quarter) == round(0.25 * len(train))
  assert len(half) == round(0.5 * len(train))
  assert set(quarter) <= set(half) <= set(train)


@pytest.mark.parametrize('fraction', [0, -0.5, 1.5])
def test_bad_data_fraction(fraction):
  with pytest.raises(ValueError, match='data fraction'):
    sources.fraction_indices(10, fraction, 0)


# --------------------------------------------------------------------------
# Bad input: errors name the file, line and field.


def _nli(label):
  return {
    'premise': f'premise {label}',
    'hypothesis': f'hypothesis {label}',
    'label': label,
  }


def _write_release(root, name, file_split, records, completion_batches=()):
  """Records are dicts, or strings written as they are."""
  (root / name / 'llm').mkdir(parents=True, exist_ok=True)
  lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
  (root / name / f'{name}_{file_split}.json').write_text('\n'.join(lines))
  for k, batch in enumerate(completion_batches):
    path = root / name / 'llm' / f'{file_split}_CoT_{k}.json'
    path.write_text(json.dumps(batch))


def test_malformed_json_line_names_file_and_line(tmp_path):
  records = [_nli(0), '{"premise": "p", ', _nli(1)]
  _write_release(tmp_path, 'esnli', 'valid', records)
  with pytest.raises(DataError, match=r'esnli_valid\.json:2: not valid JSON'):
    sources.load_release_split('esnli', 'valid', tmp_path)


def test_missing_field_names_file_line_and_field(tmp_path):
  records = [_nli(0), _nli(1), {'premise': 'p', 'label': 1}]
  _write_release(tmp_path, 'esnli', 'valid', records)
  message = r"esnli_valid\.json:3: field 'hypothesis': missing"
  with pytest.raises(DataError, match=message):
    sources.load_release_split('esnli', 'valid', tmp_path)


def test_completion_count_mismatch_names_files_and_counts(tmp_path):
  batches = [['R.\nAnswer: entailment'], ['R.\nAnswer: neutral']]
  _write_release(tmp_path, 'esnli', 'valid', [_nli(0)] * 3, batches)
  with pytest.raises(DataError) as error:
    sources.load_release_split('esnli', 'valid', tmp_path)
  message = str(error.value)
  for part in (
    'valid_CoT_0.json',
    'valid_CoT_1.json',
    '2 teacher completions',
    '3 records',
    'esnli_valid.json',
  ):
    assert part in message


def test_completion_files_must_be_arrays_of_strings(tmp_path):
  _write_release(tmp_path, 'esnli', 'valid', [_nli(0), _nli(1)], [['ok', 3]])
  message = r'valid_CoT_0\.json: element 1: expected a string'
  with pytest.raises(DataError, match=message):
    sources.load_release_split('esnli', 'valid', tmp_path)


def test_gaps_in_completion_files_are_an_error(tmp_path):
  _write_release(tmp_path, 'esnli', 'valid', [_nli(0)])
  (tmp_path / 'esnli' / 'llm' / 'valid_CoT_1.json').write_text('["x"]')
  with pytest.raises(DataError, match='not numbered'):
    sources.load_release_split('esnli', 'valid', tmp_path)


def test_invalid_utf8_and_bad_completion_json_are_data_errors(tmp_path):
  _write_release(tmp_path, 'esnli', 'valid', [_nli(0)])
  with (tmp_path / 'esnli' / 'esnli_valid.json').open('ab') as f:
    f.write(b'\n{"premise": "\xff"}\n')
  with pytest.raises(DataError, match=r'esnli_valid\.json:2: not UTF-8'):
    sources.load_release_split('esnli', 'valid', tmp_path)
  _write_release(tmp_path, 'anli1', 'valid', [_nli(0)])
  path = tmp_path / 'anli1' / 'llm' / 'valid_CoT_0.json'
  path.write_text('["R. So the answer is neutral."')
  with pytest.raises(DataError, match=r'valid_CoT_0\.json: not valid JSON'):
    sources.load_release_split('anli1', 'valid', tmp_path)


def test_data_dir_comes_from_the_environment_when_read(tmp_path, monkeypatch):
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  with pytest.raises(DataError, match=sources.DATA_DIR_ENV):
    sources.load_release_split('esnli', 'valid')
  _write_release(
    tmp_path,
    'esnli',
    'valid',
    [_nli(2)],
    [['Contradicts.\nAnswer: contradiction']],
  )
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
  split = sources.load_release_split('esnli', 'valid')
  assert split.examples == (
    Example(
      'premise 2 </s> hypothesis 2',
      'contradiction',
      'Contradicts.',
      'contradiction',
    ),
  )


def test_generic_jsonl(tmp_path):
  path = tmp_path / 'mine.jsonl'
  lines = [
    {
      'input': '2+2?',
      'label': '4',
      'rationale': 'Two and two.',
      'llm_label': '5',
    },
    {'input': '3+3?', 'label': '6', 'rationale': None},
  ]
  path.write_text('\n'.join(map(json.dumps, lines)) + '\n\n')
  assert sources.read_jsonl_examples(path) == (
    Example('2+2?', '4', 'Two and two.', '5'),
    Example('3+3?', '6'),
  )
  with pytest.raises(DataError, match=r"mine\.jsonl:2: field 'rationale'"):
    sources.read_jsonl_examples(path, required=('input', 'label', 'rationale'))
  path.write_text(json.dumps({'input': '2+2?'}) + '\n')
  with pytest.raises(DataError, match=r"mine\.jsonl:1: field 'label': missing"):
    sources.read_jsonl_examples(path)
  path.write_text('[1, 2]\n')
  with pytest.raises(DataError, match=r'mine\.jsonl:1: expected a JSON object'):
    sources.read_jsonl_examples(path)
