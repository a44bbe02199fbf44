"""T5's span corruption (dsbs_tasks.span_corruption) and the pretraining
Tasks and run file (dsbs_tasks.pretraining, runs/pretrain.gin).

Checked against the documented semantics (lengths, sentinels, the noise
mask's counts, every token recoverable, determinism) always, and token for
token against t5's own `span_corruption` where the `t5` package can be
imported (`_t5_preprocessors`).
"""

import functools
import importlib.util
import json
from pathlib import Path

from flax import traverse_util
import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import test_binaries

import dsbs_tasks
from dsbs_tasks import pretraining
from dsbs_tasks import sources
from dsbs_tasks import span_corruption as sc
from dsbs_tasks import synthetic

BYTES = seqio.ByteVocabulary()
VOCAB_SIZE = BYTES.vocab_size  # 259: sentinels 258, 257, ...
FEATURES = {
  key: seqio.Feature(BYTES, add_eos=True) for key in ('inputs', 'targets')
}
EOS = 1
GIN_DIR = Path(__file__).resolve().parents[1] / 'gin'


def _docs_dataset(docs) -> tf.data.Dataset:
  return tf.data.Dataset.from_generator(
    lambda: ({'targets': np.asarray(d, np.int32)} for d in docs),
    output_signature={'targets': tf.TensorSpec([None], tf.int32)},
  )


def _random_docs(seed=0, count=60, longest=300):
  """Token documents of byte ids 3..130 (ASCII text), never a sentinel."""
  rng = np.random.RandomState(seed)
  return [
    rng.randint(3, 131, size=rng.randint(1, longest)).tolist()
    for _ in range(count)
  ]


def _corrupt(docs, lengths, seed=0, **kwargs):
  with seqio.map_seed_manager(seed):
    ds = sc.span_corruption(_docs_dataset(docs), lengths, FEATURES, **kwargs)
    return [
      {k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()
    ]


def _sentinel(k: int) -> int:
  """The k-th sentinel, k = 1, 2, ..."""
  return VOCAB_SIZE - k


def _uncorrupt(inputs, targets):
  """The original tokens: each sentinel of `inputs` replaced by the tokens
  after the same sentinel in `targets`. Checks the sentinels' order."""
  inputs = [t for t in inputs if t != EOS]
  targets = [t for t in targets if t != EOS]
  in_sentinels = [t for t in inputs if t > 130]
  out_sentinels = [t for t in targets if t > 130]
  expected = [_sentinel(k) for k in range(1, len(in_sentinels) + 1)]
  assert in_sentinels == expected and out_sentinels == expected
  assert targets and targets[0] == _sentinel(1)
  spans = {}
  for token in targets:
    if token > 130:
      current = spans.setdefault(token, [])
    else:
      current.append(token)
  assert all(spans.values()), 'a noise span is empty'
  restored = []
  for token in inputs:
    restored += spans[token] if token > 130 else [token]
  return restored


# -- lengths -----------------------------------------------------------------


@pytest.mark.parametrize(
  'inputs_length,tokens_length,targets_length',
  # t5's figures: 512 input tokens are 568 raw tokens and 114 targets.
  [(512, 568, 114), (128, 141, 29), (64, 70, 14)],
)
def test_segments_are_sized_to_fill_the_inputs(
  inputs_length, tokens_length, targets_length
):
  assert sc.random_spans_helper(inputs_length) == (
    tokens_length,
    targets_length,
  )
  assert sc.feature_lengths(inputs_length) == {
    'inputs': inputs_length,
    'targets': targets_length,
  }
  # The longest segment that fits: one more raw token would not.
  assert sc._corrupted_lengths(tokens_length, 0.15, 3.0) == (
    inputs_length,
    targets_length,
  )
  assert sc._corrupted_lengths(tokens_length + 1, 0.15, 3.0)[0] > inputs_length


def test_shapes_sentinels_and_every_token_recovered():
  docs = _random_docs()
  examples = _corrupt(docs, {'inputs': 64, 'targets': 14})
  # Documents are joined and cut into segments of 70 raw tokens.
  joined = [t for d in docs for t in d]
  assert len(examples) == -(-len(joined) // 70)
  restored = []
  for example in examples:
    inputs, targets = example['inputs'], example['targets']
    assert EOS not in inputs + targets  # added later (append_eos_after_trim)
    segment = _uncorrupt(inputs, targets)
    if len(segment) == 70:  # every row but the last fills the inputs
      assert len(inputs) + 1 == 64 and len(targets) + 1 == 14
    restored += segment
  assert restored == joined


def test_targets_length_too_short_is_an_error_naming_the_length():
  with pytest.raises(ValueError, match="'targets': 29"):
    sc.span_corruption(
      _docs_dataset([[5]]), {'inputs': 128, 'targets': 28}, FEATURES
    )
  with pytest.raises(ValueError, match='inputs length'):
    sc.span_corruption(_docs_dataset([[5]]), None, FEATURES)
  with pytest.raises(ValueError, match='noise_density'):
    sc.feature_lengths(128, noise_density=1.0)
  with pytest.raises(ValueError, match='mean_noise_span_length'):
    sc.feature_lengths(128, mean_noise_span_length=0.5)


# -- the noise mask ----------------------------------------------------------


def _runs(mask):
  """(is_noise, length) of each run of the mask."""
  runs = []
  for value in mask:
    if runs and runs[-1][0] == value:
      runs[-1][1] += 1
    else:
      runs.append([value, 1])
  return runs


@pytest.mark.parametrize('density,mean_span', [(0.15, 3.0), (0.3, 2.0)])
def test_noise_mask_has_t5s_counts_and_alternates(density, mean_span):
  for length in [1, 2, 3, 5, 10, 29, 70, 141, 568]:
    seeds = tf.constant([[length, 1], [2, length]], tf.int32)
    mask = sc.random_spans_noise_mask(length, density, seeds, mean_span)
    mask = mask.numpy().tolist()
    assert len(mask) == length
    padded = max(length, 2)
    noise = min(max(round(padded * density), 1), padded - 1)
    spans = max(1, round(noise / mean_span))
    runs = _runs(mask)
    if length >= 2:
      assert sum(mask) == noise
      # Non-noise first, then alternating, ending with noise.
      assert [r[0] for r in runs] == [False, True] * spans
    else:
      assert mask == [False]


def test_noise_density_and_mean_span_length_over_many_rows():
  noise = spans = total = 0
  lengths = []
  for seed in range(200):
    seeds = tf.constant([[seed, 7], [11, seed]], tf.int32)
    mask = sc.random_spans_noise_mask(141, 0.15, seeds).numpy().tolist()
    runs = _runs(mask)
    noise += sum(mask)
    total += len(mask)
    spans += sum(1 for is_noise, _ in runs if is_noise)
    lengths += [n for is_noise, n in runs if is_noise]
  # round(141 * 0.15) = 21 noise tokens in round(21 / 3) = 7 spans per row.
  assert noise / total == pytest.approx(0.15, abs=0.5 / 141)
  assert noise / spans == 3.0
  # Span lengths are random (a uniform split of 21 into 7), not all 3.
  assert min(lengths) == 1 and max(lengths) >= 6


def test_sentinels_come_from_the_top_of_the_vocabulary_in_order():
  tokens = tf.constant([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
  mask = tf.constant([0, 0, 1, 1, 0, 0, 0, 0, 0, 1]) > 0
  inputs = sc.noise_span_to_unique_sentinel(tokens, mask, BYTES)
  targets = sc.nonnoise_span_to_unique_sentinel(tokens, mask, BYTES)
  # The module docstring's example.
  assert inputs.numpy().tolist() == [10, 11, 258, 14, 15, 16, 17, 18, 257]
  assert targets.numpy().tolist() == [258, 12, 13, 257, 19]
  # With the T5 vocabulary's size (32000 pieces and 100 extra ids) the
  # sentinels are <extra_id_0> = 32099, <extra_id_1> = 32098, ...
  sized_like_t5 = seqio.PassThroughVocabulary(size=32100)
  with_t5 = sc.noise_span_to_unique_sentinel(tokens, mask, sized_like_t5)
  assert with_t5.numpy().tolist()[2::6] == [32099, 32098]


# -- the pretraining Tasks ---------------------------------------------------


def _task_examples(name, lengths, seed=0, shuffle=True, split='train'):
  ds = seqio.get_mixture_or_task(name).get_dataset(
    lengths, split=split, shuffle=shuffle, seed=seed, num_epochs=1
  )
  return list(ds.as_numpy_iterator())


def test_synthetic_task_rows_recover_the_problem_texts_without_answers():
  name = dsbs_tasks.pretrain_task('synthetic', vocabulary=BYTES)
  assert name == 'span_corruption_synthetic_byte'
  lengths = sc.feature_lengths(128)
  examples = _task_examples(name, lengths, shuffle=False)
  texts = [e.input for e in synthetic.synthetic_splits()['train']]
  joined = [t for text in texts for t in BYTES.encode(text)]
  restored = []
  for example in examples:
    assert example['task'] == 1  # the label task: the finetune loss
    assert example['inputs'][-1] == EOS and example['targets'][-1] == EOS
    assert len(example['inputs']) <= 128 and len(example['targets']) <= 29
    restored += _uncorrupt(example['inputs'], example['targets'])
  assert restored == joined
  # Rows are full but for the last of each 128 documents joined.
  short = sum(len(e['inputs']) < 128 for e in examples)
  assert short <= -(-len(texts) // sc.CONCATENATED_DOCUMENTS)
  assert len(examples) > 300


def test_pretraining_is_deterministic_given_the_seed():
  name = dsbs_tasks.pretrain_task('synthetic', vocabulary=BYTES)
  lengths = sc.feature_lengths(128)
  first, again, other = (
    _task_examples(name, lengths, seed=seed)[:20] for seed in (3, 3, 4)
  )
  same = lambda a, b: all(
    np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x
  )
  assert same(first, again)
  assert not same(first, other)


def test_every_epoch_draws_new_masks(tmp_path):
  # 128 documents: each epoch joins them into the same segments.
  path = tmp_path / 'texts.jsonl'
  lines = [
    json.dumps({'text': f'Text {i} holds {i % 7} pens.'}) for i in range(128)
  ]
  path.write_text('\n'.join(lines))
  name = dsbs_tasks.pretrain_task(
    'jsonl', text_files={'train': str(path)}, vocabulary=BYTES
  )
  ds = seqio.get_mixture_or_task(name).get_dataset(
    {'inputs': 64, 'targets': 14},
    split='train',
    shuffle=False,
    seed=0,
    num_epochs=2,
  )
  examples = list(ds.as_numpy_iterator())
  half = len(examples) // 2
  for a, b in zip(examples[:half], examples[half:]):
    assert _uncorrupt(a['inputs'], a['targets']) == _uncorrupt(
      b['inputs'], b['targets']
    )
  remasked = sum(
    a['inputs'].tolist() != b['inputs'].tolist()
    for a, b in zip(examples[:half], examples[half:])
  )
  assert half > 30 and remasked > 0.9 * half


def test_jsonl_text_source(tmp_path):
  train = tmp_path / 'train.jsonl'
  lines = [{'text': f'Document {i} is about shells.'} for i in range(30)]
  train.write_text('\n'.join(json.dumps(line) for line in lines) + '\n\n')
  name = dsbs_tasks.pretrain_task(
    'jsonl', text_files={'train': str(train)}, vocabulary=BYTES
  )
  assert name.startswith('span_corruption_jsonl_byte_')
  assert seqio.get_mixture_or_task(name).splits == ('train',)
  examples = _task_examples(name, {'inputs': 64, 'targets': 14}, shuffle=False)
  restored = [
    t for e in examples for t in _uncorrupt(e['inputs'], e['targets'])
  ]
  assert BYTES.decode(restored) == ''.join(line['text'] for line in lines)


@pytest.mark.parametrize(
  'line,problem',
  [
    ('{"txt": "a"}', "field 'text': missing"),
    ('{"text": 3}', "field 'text': expected str, got int"),
    ('{"text": "  "}', "field 'text': empty"),
    ('["text"]', 'expected a JSON object, got list'),
    ('{"text": "a"', 'not valid JSON'),
  ],
)
def test_bad_jsonl_lines_name_file_line_and_field(tmp_path, line, problem):
  path = tmp_path / 'bad.jsonl'
  path.write_text('{"text": "fine"}\n' + line + '\n')
  with pytest.raises(sources.DataError) as error:
    pretraining.read_text_jsonl(path)
  assert f'{path.resolve()}:2: ' in str(error.value)
  assert problem in str(error.value)


def test_bad_text_sources_are_errors(tmp_path):
  with pytest.raises(sources.DataError, match='no such file'):
    pretraining.read_text_jsonl(tmp_path / 'missing.jsonl')
  (tmp_path / 'blank.jsonl').write_text('\n')
  with pytest.raises(sources.DataError, match="no lines with 'text'"):
    pretraining.read_text_jsonl(tmp_path / 'blank.jsonl')
  with pytest.raises(ValueError, match='unknown text_source'):
    dsbs_tasks.pretrain_task('cqa')
  with pytest.raises(ValueError, match='text_files goes with'):
    dsbs_tasks.pretrain_task('jsonl')
  with pytest.raises(ValueError, match="needs a 'train' file"):
    dsbs_tasks.pretrain_task('jsonl', text_files={'test': 'x.jsonl'})


def test_pretrain_gin_configures_the_tiny_model_on_synthetic_texts():
  gin.clear_config()
  try:
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.parse_config_files_and_bindings(
      ['runs/pretrain.gin'], [], finalize_config=False
    )
    assert gin.query_parameter('%TEXT_SOURCE') == 'synthetic'
    assert gin.query_parameter('%NOISE_DENSITY') == 0.15
    assert gin.query_parameter('%MEAN_NOISE_SPAN_LENGTH') == 3.0
    assert gin.query_parameter('%ALPHA') == 1.0
    assert sc.feature_lengths() == {'inputs': 128, 'targets': 29}
    assert dsbs_tasks.pretrain_task() == 'span_corruption_synthetic_byte'

  finally:
    gin.clear_config()


# -- against t5 --------------------------------------------------------------


@functools.cache
def _t5_preprocessors():
  """t5.data.preprocessors; or, where t5 is installed without its many
  dependencies (`pip install --no-deps t5 babel`), that one file loaded on
  its own (it needs only babel, gin, seqio and TensorFlow); None without t5."""
  try:
    from t5.data import preprocessors  # pylint: disable=g-import-not-at-top

    return preprocessors
  except ImportError:
    pass
  spec = importlib.util.find_spec('t5')
  if spec is None or not spec.submodule_search_locations:
    return None
  path = Path(
    list(spec.submodule_search_locations)[0], 'data', 'preprocessors.py'
  )
  module_spec = importlib.util.spec_from_file_location(
    't5_data_preprocessors_reference', path
  )
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except ImportError:
    return None
  return module


@pytest.mark.parametrize(
  'inputs_length,density,mean_span', [(128, 0.15, 3.0), (64, 0.3, 2.0)]
)
def test_same_examples_as_t5_span_corruption(inputs_length, density, mean_span):
  t5 = _t5_preprocessors()
  if t5 is None:
    pytest.skip(
      'needs the t5 package: pip install --no-deps --target DIR t5==0.9.4 '
      'babel, then PYTHONPATH=DIR (docs/pretraining.md)'
    )
  # One document longer than t5's 65536-token chunk, so that one is chosen.
  docs = _random_docs(seed=1, count=80, longest=500) + [
    np.random.RandomState(2).randint(3, 131, size=70_000).tolist()
  ]
  lengths = {'inputs': inputs_length, 'targets': inputs_length}
  assert t5.random_spans_helper(
    inputs_length=inputs_length,
    noise_density=density,
    mean_noise_span_length=mean_span,
    extra_tokens_per_span_inputs=1,
    extra_tokens_per_span_targets=1,
  ) == sc.random_spans_helper(inputs_length, density, mean_span)
  ours = _corrupt(
    docs,
    lengths,
    seed=5,
    noise_density=density,
    mean_noise_span_length=mean_span,
  )
  with seqio.map_seed_manager(5):
    theirs = t5.span_corruption(
      _docs_dataset(docs),
      lengths,
      FEATURES,
      noise_density=density,
      mean_noise_span_length=mean_span,
    )
    theirs = [
      {k: v.tolist() for k, v in ex.items()}
      for ex in theirs.as_numpy_iterator()
    ]
  assert len(ours) == len(theirs) > 100
  assert ours == theirs


# -- end to end --------------------------------------------------------------


@pytest.mark.slow
def test_pretrain_run_then_a_run_starting_from_its_checkpoint(tmp_path):
  pretrain_dir = tmp_path / 'pretrain'
  test_binaries._ok(
    test_binaries.run_binary(
      'train',
      '--gin_file=runs/pretrain.gin',
      f"--gin.MODEL_DIR='{pretrain_dir}'",
      '--gin.TRAIN_STEPS=20',
      '--gin.train.train.log_period=1',
    )
  )
  [losses] = test_binaries.scalars(pretrain_dir / 'train', 'loss')
  assert sorted(losses) == list(range(1, 21))
  assert np.mean([losses[s] for s in range(16, 21)]) < losses[1]
  pretrained = test_binaries.final_params(pretrain_dir, 20)

  # Fine-tuning at learning rate 0 keeps the parameters it started from.
  finetune_dir = tmp_path / 'finetune'
  result = test_binaries._ok(
    test_binaries.run_binary(
      'train',
      '--gin_file=runs/main.gin',
      f"--gin.MODEL_DIR='{finetune_dir}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{pretrain_dir}'",
      '--gin.TRAIN_STEPS=2',
      '--gin.LEARNING_RATE=0.0',
      '--gin.train.train.final_eval_split=None',
    )
  )
  assert f'Starting from the parameters of {pretrain_dir} (step 20)' in (
    result.stderr
  )
  pretrained = traverse_util.flatten_dict(pretrained, sep='/')
  finetuned = traverse_util.flatten_dict(
    test_binaries.final_params(finetune_dir, 2), sep='/'
  )
  assert finetuned.keys() == pretrained.keys()
  for key, value in pretrained.items():
    np.testing.assert_array_equal(finetuned[key], value, err_msg=key)
