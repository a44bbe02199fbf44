"""Paired examples, the seqio tasks end to end (on the sample of the release
in tests/testdata), task names, and the synthetic dataset."""

import json
import re

from conftest import SAMPLE_DATA_DIR
import gin
import pytest
import seqio

from dsbs_jax import two_tasks
import dsbs_tasks
from dsbs_tasks import metrics
from dsbs_tasks import parsing
from dsbs_tasks import preprocessors
from dsbs_tasks import sources
from dsbs_tasks import synthetic
from dsbs_tasks.examples import Example
from dsbs_tasks.registry import dsbs_task

DATA = SAMPLE_DATA_DIR
BYTES = seqio.ByteVocabulary()
LENGTHS = {'inputs': 64, 'targets': 64}


def _examples(name, split='train', lengths=None, limit=-1):
  """The task's first `limit` examples (all: -1) in order, strings decoded."""
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(
    sequence_length=lengths or LENGTHS, split=split, shuffle=False
  )
  return [
    {k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}
    for ex in ds.take(limit).as_numpy_iterator()
  ]


def _strip(text, prefix):
  assert text.startswith(prefix), text
  return text[len(prefix) :]


def _records(name, file_split):
  path = DATA / name / f'{name}_{file_split}.json'
  return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------
# The preprocessor on handwritten examples.

SOURCE = [
  Example('q1', 'a1', 'r1', 't1'),
  Example('q2', 'a2', None, 't2'),  # no rationale
  Example('q3', 'a3', 'r3', None),  # no teacher label
]


def _made(
  *, training, label_source='llm', with_rationale=True, keep_unparsed=False
):
  """(inputs, targets, task, rationale) made from SOURCE."""
  ds = preprocessors.source_dataset(
    SOURCE, training=training, label_source=label_source
  )
  ds = preprocessors.make_examples(
    ds,
    with_rationale=with_rationale,
    prefixes=two_tasks.TaskPrefixes('P: ', 'E: '),
    keep_unparsed=keep_unparsed,
  )
  return [
    (
      ex['inputs'].decode(),
      ex['targets'].decode(),
      int(ex['task']),
      ex['rationale'].decode(),
    )
    for ex in ds.as_numpy_iterator()
  ]


def test_training_pairs_are_adjacent_and_missing_parts_are_dropped():
  assert _made(training=True) == [
    ('P: q1', 't1', 1, 'r1'),
    ('E: q1', 'r1', 2, 'r1'),
    ('P: q2', 't2', 1, ''),
    ('E: q3', 'r3', 2, 'r3'),
  ]
  assert _made(training=True, label_source='gt') == [
    ('P: q1', 'a1', 1, 'r1'),
    ('E: q1', 'r1', 2, 'r1'),
    ('P: q2', 'a2', 1, ''),
    ('P: q3', 'a3', 1, 'r3'),
    ('E: q3', 'r3', 2, 'r3'),
  ]


def test_keep_unparsed_keeps_blank_targets_as_the_reference():
  made = _made(training=True, keep_unparsed=True)
  assert [(inputs, targets) for inputs, targets, _, _ in made] == [
    ('P: q1', 't1'),
    ('E: q1', 'r1'),
    ('P: q2', 't2'),
    ('E: q2', ''),
    ('P: q3', ''),
    ('E: q3', 'r3'),
  ]


def test_baselines_and_evaluation_have_label_examples_only():
  assert _made(training=True, with_rationale=False) == [
    ('P: q1', 't1', 1, 'r1'),
    ('P: q2', 't2', 1, ''),
  ]
  assert _made(training=False) == [
    ('P: q1', 'a1', 1, 'r1'),
    ('P: q2', 'a2', 1, ''),
    ('P: q3', 'a3', 1, 'r3'),
  ]


# --------------------------------------------------------------------------
# Real data through seqio.


def test_cqa_task_yields_the_pairs_in_file_order():
  records = _records('cqa', 'train')
  completions = []
  llm = DATA / 'cqa' / 'llm'
  for k in range(len(list(llm.glob('train_CoT_*.json')))):
    completions += json.loads((llm / f'train_CoT_{k}.json').read_text())
  assert len(completions) == len(records)
  position = {parsing.format_cqa(r)[0]: i for i, r in enumerate(records)}

  name = dsbs_task('cqa', vocabulary=BYTES, data_dir=DATA)
  assert re.fullmatch(r'dsbs_cqa_llm_byte_[0-9a-f]{8}', name)
  made = _examples(name, limit=40)
  previous = -1
  for label_example, rationale_example in zip(made[::2], made[1::2]):
    text = _strip(label_example['inputs_pretokenized'], '[label] ')
    assert (
      _strip(rationale_example['inputs_pretokenized'], '[rationale] ') == text
    )
    assert (label_example['task'], rationale_example['task']) == (1, 2)
    index = position[text]
    assert index > previous
    previous = index
    teacher = parsing.parse_cqa(completions[index])
    assert label_example['targets_pretokenized'] == teacher.label
    assert rationale_example['targets_pretokenized'] == teacher.rationale
    for example in label_example, rationale_example:
      for feature in 'inputs', 'targets':
        ids = example[feature]
        assert 0 < len(ids) <= 64 and ids[-1] == BYTES.eos_id
        text = example[f'{feature}_pretokenized']
        assert BYTES.decode(list(ids[:-1])) == text[: len(ids) - 1]


def test_gt_and_llm_labels_differ_exactly_where_the_teacher_was_wrong():
  answers = {
    parsing.format_cqa(r)[0]: r['answer'] for r in _records('cqa', 'train')
  }

  def label_targets(label_source):
    name = dsbs_task(
      'cqa', 'dsbs', label_source, vocabulary=BYTES, data_dir=DATA
    )
    ds = seqio.get_mixture_or_task(name).source.get_dataset(
      'train', shuffle=False
    )
    ds = preprocessors.make_examples(
      ds, with_rationale=False, prefixes=two_tasks.TaskPrefixes()
    )
    batch = next(ds.batch(100_000).as_numpy_iterator())
    return {
      _strip(i.decode(), '[label] '): t.decode()
      for i, t in zip(batch['inputs'], batch['targets'])
    }

  llm, gt = label_targets('llm'), label_targets('gt')
  train = sources.release_examples('cqa', 'train', data_dir=DATA)
  assert len(gt) == len(train)
  assert len(llm) == len(train) - sum(e.teacher_label is None for e in train)
  assert all(gt[text] == answers[text] for text in gt)
  differ = {text for text in llm if llm[text] != gt[text]}
  teacher_wrong = {
    e.input
    for e in train
    if e.teacher_label is not None and e.teacher_label != e.label
  }
  assert differ == teacher_wrong and differ


def test_evaluation_splits_score_against_ground_truth():
  name = dsbs_task('svamp', vocabulary=BYTES, data_dir=DATA)
  test = _examples(name, 'test', {'inputs': 512, 'targets': 512})
  records = _records('svamp', 'test')
  assert [ex['task'] for ex in test] == [1] * len(records)
  assert [ex['targets_pretokenized'] for ex in test] == [
    r['label'] for r in records
  ]
  assert [_strip(ex['inputs_pretokenized'], '[label] ') for ex in test] == [
    r['input'] for r in records
  ]
  counts = sources.parse_counts('svamp', 'test', DATA)
  with_rationale = sum(bool(ex['rationale']) for ex in test)
  assert with_rationale == counts.completions - counts.without_rationale
  assert seqio.get_mixture_or_task(name).metric_fns == [
    metrics.equation_accuracy
  ]
  cqa = dsbs_task('cqa', vocabulary=BYTES, data_dir=DATA)
  assert seqio.get_mixture_or_task(cqa).metric_fns == [metrics.accuracy]


def test_unparsed_completions_are_dropped_or_kept():
  train = sources.release_examples('svamp', 'train', data_dir=DATA)
  no_label = sum(e.teacher_label is None for e in train)
  no_rationale = sum(e.rationale is None for e in train)
  assert no_label and no_rationale
  dropped = _examples(dsbs_task('svamp', vocabulary=BYTES, data_dir=DATA))
  kept = _examples(
    dsbs_task('svamp', vocabulary=BYTES, data_dir=DATA, keep_unparsed=True)
  )
  assert [ex['task'] for ex in kept] == [1, 2] * len(train)
  assert sum(ex['task'] == 1 for ex in dropped) == len(train) - no_label
  assert sum(ex['task'] == 2 for ex in dropped) == len(train) - no_rationale


def test_finetune_needs_no_completions_and_dsbs_names_the_missing_file(
  tmp_path,
):
  (tmp_path / 'anli1').mkdir()
  lines = [
    json.dumps({'premise': f'p{i}', 'hypothesis': f'h{i}', 'label': i % 3})
    for i in range(4)
  ]
  (tmp_path / 'anli1' / 'anli1_train.json').write_text('\n'.join(lines))
  finetune = _examples(
    dsbs_task('anli1', 'finetune', vocabulary=BYTES, data_dir=tmp_path)
  )
  assert [ex['targets_pretokenized'] for ex in finetune] == [
    'entailment',
    'neutral',
    'contradiction',
    'entailment',
  ]
  assert finetune[0]['inputs_pretokenized'] == '[label] p0 </s> h0'
  dsbs = dsbs_task('anli1', 'dsbs', 'gt', vocabulary=BYTES, data_dir=tmp_path)
  message = r'needs teacher completions: no .*train_CoT_0\.json'
  with pytest.raises(sources.DataError, match=message):
    _examples(dsbs)


def test_generic_jsonl_task(tmp_path):
  train = tmp_path / 'train.jsonl'
  rows = [
    {
      'input': f'{i} plus 1?',
      'label': str(i + 1),
      'rationale': f'{i} + 1 = {i + 1}.',
    }
    for i in range(20)
  ]
  train.write_text('\n'.join(map(json.dumps, rows)))
  files = {'train': str(train)}
  name = dsbs_task('jsonl', 'dsbs', 'gt', vocabulary=BYTES, jsonl_files=files)
  made = _examples(name) + _examples(name, 'validation')
  assert len(made) == 18 * 2 + 2  # 2 validation examples held out
  label_inputs = [
    _strip(ex['inputs_pretokenized'], '[label] ')
    for ex in made
    if ex['task'] == 1
  ]
  assert sorted(label_inputs) == sorted(r['input'] for r in rows)
  with pytest.raises(ValueError, match="'test'"):
    seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split='test')
  rows[3].pop('rationale')
  train.write_text('\n'.join(map(json.dumps, rows)))
  message = r"train\.jsonl:4: field 'rationale': missing"
  with pytest.raises(sources.DataError, match=message):
    _examples(name)
  finetune = dsbs_task('jsonl', 'finetune', vocabulary=BYTES, jsonl_files=files)
  assert len(_examples(finetune)) == 18


# --------------------------------------------------------------------------
# Names.


def test_named_tasks_are_registered_at_import():
  for dataset in 'cqa', 'svamp', 'esnli', 'anli1':
    for name in (
      f'dsbs_{dataset}_llm',
      f'dsbs_{dataset}_gt',
      f'finetune_{dataset}',
      f'distill_{dataset}',
      f'single_task_{dataset}',
    ):
      assert name in dsbs_tasks.NAMED_TASKS
      task = seqio.get_mixture_or_task(name)
      assert (
        task.output_features['targets'].vocabulary == dsbs_tasks.t5_vocabulary()
      )
  assert 'dsbs_synthetic_llm_byte' in dsbs_tasks.NAMED_TASKS
  for mode in 'dsbs_synthetic_multistep_llm', 'single_task_synthetic_multistep':
    name = f'{mode}_byte'
    assert name in dsbs_tasks.NAMED_TASKS
    task = seqio.get_mixture_or_task(name)
    assert task.output_features['targets'].vocabulary == BYTES
  assert dsbs_task('svamp') == 'dsbs_svamp_llm'
  assert dsbs_task('svamp', 'finetune') == 'finetune_svamp'
  assert dsbs_task('svamp', 'distill', vocabulary=BYTES) == 'distill_svamp_byte'
  assert (
    dsbs_task('synthetic', 'dsbs', 'gt', vocabulary=BYTES)
    == 'dsbs_synthetic_gt_byte'
  )


def _with_prefixes(label: str, rationale: str, make):
  """make() with gin binding the task prefixes, as LABEL_PREFIX and
  RATIONALE_PREFIX do in runs/dsbs.gin."""
  with gin.unlock_config():
    gin.bind_parameter('TaskPrefixes.label', label)
    gin.bind_parameter('TaskPrefixes.rationale', rationale)
  try:
    return make()
  finally:
    gin.clear_config()


def test_names_differ_when_the_task_does():
  other_vocabulary = seqio.SentencePieceVocabulary('/my/spm.model')
  names = {
    dsbs_task('cqa'),
    dsbs_task('cqa', data_fraction=0.5),
    dsbs_task('cqa', data_fraction=0.5, seed=1),
    dsbs_task('cqa', keep_unparsed=True),
    _with_prefixes('predict: ', 'explain: ', lambda: dsbs_task('cqa')),
    dsbs_task('cqa', data_dir='/elsewhere'),
    dsbs_task('cqa', vocabulary=other_vocabulary),
  }
  assert len(names) == 7
  assert (
    dsbs_task('cqa', data_fraction=0.5, seed=1) == 'dsbs_cqa_llm_frac0.5_seed1'
  )
  # The seed only picks a fraction's subset.
  assert dsbs_task('cqa', seed=5) == dsbs_task('cqa')


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(mode='finetune', label_source='llm'), "use mode 'distill'"),
    (dict(mode='distill', label_source='gt'), "use mode 'finetune'"),
    (dict(mode='teach'), 'unknown mode'),
    (dict(dataset='gsm8k'), 'unknown dataset'),
    (dict(data_fraction=0), 'data fraction'),
    (dict(dataset='jsonl'), 'jsonl_files'),
    (dict(dataset='jsonl', jsonl_files={'valid': 'x'}), "'train'"),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dsbs_task(**{'dataset': 'cqa', **kwargs})


# --------------------------------------------------------------------------
# The synthetic dataset.


def test_synthetic_splits_are_disjoint_short_and_deterministic():
  sizes = dict(
    num_train=300, num_validation=50, num_test=40, teacher_error_rate=0.2
  )
  splits = synthetic.synthetic_splits(seed=3, **sizes)
  assert {k: len(v) for k, v in splits.items()} == {
    'train': 300,
    'validation': 50,
    'test': 40,
  }
  inputs = [e.input for split in splits.values() for e in split]
  assert len(set(inputs)) == len(inputs)
  assert max(len(text.encode()) for text in inputs) < 64
  assert splits == synthetic.synthetic_splits(seed=3, **sizes)
  assert splits != synthetic.synthetic_splits(seed=4, **sizes)
  for split in splits.values():
    wrong = [e for e in split if e.teacher_label != e.label]
    assert len(wrong) == round(0.2 * len(split))
    for e in wrong:
      assert abs(int(e.teacher_label) - int(e.label)) == 1
      assert int(e.teacher_label) > 0
    for e in split:
      a, b = map(int, re.findall(r'\d+', e.input))
      assert int(e.label) == (a + b if 'gets' in e.input else a - b)
      assert e.rationale.endswith(f'= {e.teacher_label}.')


@pytest.fixture
def small_synthetic():
  """Split sizes set through gin, as a gin file would."""
  with gin.unlock_config():
    gin.bind_parameter('synthetic_splits.num_train', 200)
    gin.bind_parameter('synthetic_splits.num_validation', 30)
    gin.bind_parameter('synthetic_splits.teacher_error_rate', 0.25)
  yield synthetic.synthetic_splits()
  gin.clear_config()


def test_synthetic_task_end_to_end(small_synthetic):
  llm = _examples('dsbs_synthetic_llm_byte')
  gt = _examples('dsbs_synthetic_gt_byte')
  source = small_synthetic['train']
  assert len(source) == 200
  assert [ex['task'] for ex in llm] == [1, 2] * len(source)
  assert [_strip(ex['inputs_pretokenized'], '[label] ') for ex in llm[::2]] == [
    e.input for e in source
  ]
  differ = [
    a['targets_pretokenized'] != b['targets_pretokenized']
    for a, b in zip(llm[::2], gt[::2])
  ]
  assert differ == [e.teacher_label != e.label for e in source]
  assert sum(differ) == 50
  # Nothing is cut: every input fits in 64 bytes with its prefix and EOS.
  for example in llm:
    inputs = BYTES.decode(list(example['inputs'][:-1]))
    assert inputs == example['inputs_pretokenized']
  validation = _examples('finetune_synthetic_byte', 'validation')
  assert [ex['targets_pretokenized'] for ex in validation] == [
    e.label for e in small_synthetic['validation']
  ]


def test_shuffled_training_keeps_every_example(small_synthetic):
  del small_synthetic  # sets the sizes
  task = seqio.get_mixture_or_task('dsbs_synthetic_llm_byte')
  shuffled = task.get_dataset(LENGTHS, split='train', shuffle=True, seed=1)
  texts = [
    ex['inputs_pretokenized'].decode() for ex in shuffled.as_numpy_iterator()
  ]
  in_order = [
    ex['inputs_pretokenized'] for ex in _examples('dsbs_synthetic_llm_byte')
  ]
  assert texts != in_order and sorted(texts) == sorted(in_order)


def test_packed_batches_from_a_task_mark_rationale_tokens(small_synthetic):
  converter = two_tasks.DistillStepByStepFeatureConverter(pack=True)
  ds = seqio.get_dataset(
    'dsbs_synthetic_llm_byte',
    task_feature_lengths=LENGTHS,
    dataset_split='train',
    shuffle=False,
    feature_converter=converter,
  )
  segments = 0
  for row in ds.as_numpy_iterator():
    for segment in range(1, row['decoder_segment_ids'].max() + 1):
      where = row['decoder_segment_ids'] == segment
      text = BYTES.decode(list(row['decoder_target_tokens'][where]))
      task = 2 if text.startswith(('Gets more', 'Gives away')) else 1
      assert set(row['decoder_task_ids'][where]) == {task}
      segments += 1
  assert segments == 2 * len(small_synthetic['train'])
