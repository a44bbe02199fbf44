"""dsbs-lengths: its statistics against hand-computed values, and its report
on the sample of cqa in tests/testdata against lengths counted here."""

import os
import re
import subprocess
import sys

from conftest import SAMPLE_DATA_DIR
import gin
import numpy as np
import pytest
import seqio

from dsbs_jax import gin_utils
from dsbs_jax.two_tasks import DistillStepByStepFeatureConverter
from dsbs_tasks import lengths
from dsbs_tasks import sources
from dsbs_tasks.lengths import TaskLengths
from dsbs_tasks.registry import dsbs_task

BYTES = seqio.ByteVocabulary()
ONE_TO_TEN = list(range(1, 11))
ONE_TO_HUNDRED = list(range(1, 101))

# --------------------------------------------------------------------------
# The pure functions.


@pytest.mark.parametrize(
  'values,share,expected',
  [
    (ONE_TO_TEN, 0.5, 5),
    (ONE_TO_TEN, 0.9, 9),
    (ONE_TO_TEN, 0.95, 10),  # ceil(9.5) = 10th
    (ONE_TO_TEN, 0.1, 1),
    (ONE_TO_TEN, 0.01, 1),
    (ONE_TO_TEN, 1.0, 10),
    (ONE_TO_HUNDRED, 0.99, 99),
    # 0.07 × 100 is 7.000000000000001 in floats: still the 7th, not the 8th.
    (ONE_TO_HUNDRED, 0.07, 7),
    ([10, 1, 5], 0.5, 5),  # unsorted: ceil(1.5) = 2nd smallest
    ([7], 0.5, 7),
  ],
)
def test_percentile_is_the_nearest_rank(values, share, expected):
  assert lengths.percentile(values, share) == expected


def test_percentile_rejects_no_lengths_and_bad_shares():
  with pytest.raises(ValueError):
    lengths.percentile([], 0.5)
  for share in (0, -0.1, 1.5):
    with pytest.raises(ValueError):
      lengths.percentile(ONE_TO_TEN, share)


@pytest.mark.parametrize(
  'length,multiple,expected',
  [(0, 8, 8), (1, 8, 8), (8, 8, 8), (9, 8, 16), (99, 8, 104), (5, 1, 5)],
)
def test_round_up_to_a_multiple(length, multiple, expected):
  assert lengths.round_up(length, multiple) == expected


def test_suggested_length_holds_the_coverage_and_no_less():
  assert lengths.suggest_length(ONE_TO_HUNDRED, 0.99, 8) == 104
  assert lengths.suggest_length(ONE_TO_HUNDRED, 0.99, 1) == 99
  assert lengths.truncated(ONE_TO_HUNDRED, 99) == 1  # 1% of 100
  assert lengths.truncated(ONE_TO_HUNDRED, 98) == 2  # too many: 99 is least
  assert lengths.suggest_length(ONE_TO_HUNDRED, 0.9, 4) == 92
  assert lengths.suggest_length(ONE_TO_HUNDRED, 1.0, 1) == 100
  assert lengths.suggest_length([3, 3, 3], 0.5, 8) == 8


def test_truncation_counts_token_loss_and_slots():
  values = [3, 5, 8, 10]
  assert lengths.truncated(values, 5) == 2  # 8 and 10; 5 fits exactly
  assert lengths.truncated(values, 10) == 0
  # (8 - 5) + (10 - 5) of 3 + 5 + 8 + 10 tokens.
  assert lengths.tokens_lost(values, 5) == pytest.approx(8 / 26)
  assert lengths.tokens_lost(values, 10) == 0
  # (3 + 5 + 5 + 5) tokens in 4 rows of 5 slots.
  assert lengths.slots_used(values, 5) == pytest.approx(18 / 20)
  # (3 + 5 + 8 + 10) tokens in 4 rows of 16 slots.
  assert lengths.slots_used(values, 16) == pytest.approx(26 / 64)
  assert lengths.slots_used([], 16) == 0
  assert lengths.tokens_lost([], 16) == 0


def test_an_example_is_cut_once_for_input_or_target():
  # Fits; input cut; target cut; both cut.
  inputs, targets = [3, 9, 2, 9], [4, 1, 7, 9]
  assert lengths.examples_cut(inputs, targets, 5, 5) == 3
  assert lengths.examples_cut(inputs, targets, 9, 9) == 0
  assert lengths.examples_cut(inputs, targets, 9, 4) == 2


def test_summary():
  summary = lengths.summarize([4, 1, 3, 2])
  assert summary == lengths.Summary(
    count=4, mean=2.5, percentiles=(2, 4, 4, 4), max=4
  )


BY_TASK = {
  1: TaskLengths(inputs=[10, 12, 14], targets=[2, 3, 4]),
  2: TaskLengths(inputs=[14, 16, 18], targets=[30, 40, 50]),
}


def test_suggestion_covers_each_kind_and_takes_the_max_per_feature():
  # p50: label inputs 12, rationale inputs 16; label targets 3 -> 4,
  # rationale targets 40.
  assert lengths.suggest(BY_TASK, 0.5, 4) == lengths.Suggestion(
    inputs=16, label_targets=4, rationale_targets=40, targets=40
  )
  # p100: inputs 18 -> 20, label targets 4, rationale targets 50 -> 52.
  assert lengths.suggest(BY_TASK, 1.0, 4) == lengths.Suggestion(
    inputs=20, label_targets=4, rationale_targets=52, targets=52
  )
  label_only = {1: BY_TASK[1]}
  assert lengths.suggest(label_only, 1.0, 1) == lengths.Suggestion(
    inputs=14, label_targets=4, rationale_targets=None, targets=4
  )


def test_report_text():
  text = lengths.format_report(
    'some_task', 'train', BY_TASK, {'inputs': 15, 'targets': 40}, 0.5, 4
  )
  assert 'some_task, split ' in text
  row = re.search(r'^  rationale targets +(.*)$', text, re.M).group(1).split()
  assert row == ['3', '40.0', '40', '50', '50', '50', '50']
  # The current lengths cut no label example; two rationale inputs (16 and
  # 18 > 15) and one rationale target (50 > 40), of the examples 16/40 and
  # 18/50.
  assert 'label 0 of 3 (0.00%), rationale 2 of 3 (66.67%)' in text
  current = text.split('Current')[1].split('Suggested')[0]
  row = re.search(r'^  all targets +(.*)$', current, re.M).group(1).split()
  # 10 of 129 target tokens cut; 2+3+4+30+40+40 tokens in 6 × 40 slots.
  assert row == ['40', '6', '1', '16.67%', '7.75%', '49.6%']
  assert (
    """\n  --gin.TASK_FEATURE_LENGTHS="{'inputs': 16, 'targets': 40}"\n"""
    in text
  )
  packed = text.split('Packed (PACK = True, pack window 64)')[1]
  assert '--gin.PACK=True --gin.TASK_FEATURE_LENGTHS=' in packed


def test_packed_fill_of_rows_packed_as_training_packs():
  # Rows of 8 input and 3 target tokens. In order (window 1): [6, 1] alone
  # (the next [6, 2] does not fit), [6, 2], then [2, 1] + [2, 1].
  examples = [(6, 1), (6, 2), (2, 1), (2, 1)]
  fill = lengths.packed_fill(examples, {'inputs': 8, 'targets': 3}, 1)
  assert fill.examples_per_row == 4 / 3
  assert fill.inputs_filled == 16 / 24
  assert fill.targets_filled == 5 / 9
  # A window of 2 puts [2, 1] beside [6, 1]: 2 rows.
  fill = lengths.packed_fill(examples, {'inputs': 8, 'targets': 3}, 2)
  assert fill.examples_per_row == 2


def test_packed_candidates_grow_until_both_features_are_full():
  by_task = {
    1: TaskLengths(inputs=[10] * 50, targets=[2] * 50),
    2: TaskLengths(inputs=[10] * 50, targets=[18] * 50),
  }
  # Inputs: multiples of the p99 input (10); targets near the ratio 1:1,
  # never below the p99 target (18).
  candidates = lengths.packed_candidates(by_task, 64, 0.9, 1)
  assert [c.feature_lengths for c in candidates] == [
    {'inputs': 10, 'targets': 18},
    {'inputs': 20, 'targets': 20},
  ]
  # One example per row; then a label and a rationale example per row, both
  # full.
  assert candidates[-1].inputs_filled == candidates[-1].targets_filled == 1
  assert lengths.packed_suggestion(candidates, 0.9) is candidates[-1]
  # Never full enough: the fullest is suggested.
  stingy = lengths.packed_candidates(by_task, 1, 0.99, 1)
  assert len(stingy) > 2
  best = lengths.packed_suggestion(stingy, 0.99)
  assert min(best.inputs_filled, best.targets_filled) == max(
    min(c.inputs_filled, c.targets_filled) for c in stingy
  )


def test_packed_targets_are_searched_around_the_ratio():
  """60 label examples (targets 2) for 40 rationales (targets 16): the
  ratio puts 16 target slots beside 20 inputs, where a label and a rationale
  example (18 targets) do not fit together; 18 slots hold them."""
  by_task = {
    1: TaskLengths(inputs=[10] * 60, targets=[2] * 60),
    2: TaskLengths(inputs=[10] * 40, targets=[16] * 40),
  }
  candidates = lengths.packed_candidates(by_task, 64, 0.9, 1)
  chosen = candidates[1]
  assert chosen.feature_lengths == {'inputs': 20, 'targets': 18}
  examples = [(10, 2)] * 60 + [(10, 16)] * 40
  for targets in (16, 17, 19, 20):
    other = lengths.packed_fill(
      examples, {'inputs': 20, 'targets': targets}, 64
    )
    assert other.least_filled < chosen.least_filled, targets


def test_no_examples_is_a_user_error():
  with pytest.raises(lengths.EmptySplitError, match="no examples in split 'x'"):
    lengths.format_report('t', 'x', {}, {'inputs': 8, 'targets': 8}, 0.99, 8)


# --------------------------------------------------------------------------
# The cqa sample of the release, end to end.


def _expected_lengths():
  """The task's examples' lengths, counted here from the source texts: a
  label example per teacher label, a rationale example per rationale."""
  examples = sources.release_examples('cqa', 'train', data_dir=SAMPLE_DATA_DIR)

  def count(text):
    return len(BYTES.encode(text)) + 1  # EOS

  label = [e for e in examples if e.teacher_label]
  rationale = [e for e in examples if e.rationale]
  return {
    1: TaskLengths(
      [count('[label] ' + e.input) for e in label],
      [count(e.teacher_label) for e in label],
    ),
    2: TaskLengths(
      [count('[rationale] ' + e.input) for e in rationale],
      [count(e.rationale) for e in rationale],
    ),
  }


def test_report_on_the_cqa_sample():
  name = dsbs_task('cqa', vocabulary=BYTES, data_dir=SAMPLE_DATA_DIR)
  expected = _expected_lengths()
  assert lengths.read_lengths(name, 'train') == expected
  # Long enough to be cut, well below the longest examples.
  current = {'inputs': 160, 'targets': 64}
  coverage = 0.9
  text = lengths.report(name, current, 'train', coverage, 1)

  for kind, values in lengths.kinds(expected).items():
    row = re.search(rf'^  {kind} +(.*)$', text, re.M).group(1).split()
    assert (int(row[0]), int(row[-1])) == (len(values), max(values))
  assert len(expected[1].inputs) < len(expected[2].inputs)  # an unparsed label
  assert lengths.truncated(expected[2].targets, current['targets']) > 0

  suggested = re.search(
    r"^  --gin.TASK_FEATURE_LENGTHS=\"\{'inputs': (\d+), 'targets': (\d+)\}\"$",
    text,
    re.M,
  ).groups()
  suggested = dict(zip(('inputs', 'targets'), map(int, suggested)))
  for kind, values in lengths.kinds(expected).items():
    limit = suggested[kind.split()[1]]
    assert lengths.truncated(values, limit) <= (1 - coverage) * len(values)
  # The smallest such lengths (multiple 1): one less cuts too many of the
  # kind that decided it.
  for feature, limit in suggested.items():
    assert any(
      lengths.truncated(values, limit - 1) > (1 - coverage) * len(values)
      for kind, values in lengths.kinds(expected).items()
      if kind.endswith(feature)
    )


def test_packed_fill_is_the_fill_of_the_rows_training_packs():
  """The report's simulation packs as the feature converter does: on the
  cqa sample in the task's order, the same rows, so the same fill."""
  name = dsbs_task('cqa', vocabulary=BYTES, data_dir=SAMPLE_DATA_DIR)
  task_lengths = {'inputs': 512, 'targets': 224}
  dataset = seqio.get_mixture_or_task(name).get_dataset(
    task_lengths, split='train', shuffle=False, num_epochs=1
  )
  converter = DistillStepByStepFeatureConverter(pack=True, pack_window=8)
  rows = list(converter(dataset, task_lengths).as_numpy_iterator())
  in_order = [
    (int(np.sum(e['inputs'] > 0)), int(np.sum(e['targets'] > 0)))
    for e in dataset.as_numpy_iterator()
  ]
  fill = lengths.packed_fill(in_order, task_lengths, 8)
  assert fill.examples_per_row == len(in_order) / len(rows)
  assert fill.inputs_filled == pytest.approx(
    np.mean([np.mean(row['encoder_segment_ids'] > 0) for row in rows])
  )
  assert fill.targets_filled == pytest.approx(
    np.mean([np.mean(row['decoder_segment_ids'] > 0) for row in rows])
  )


def test_an_empty_split_is_named(tmp_path):
  (tmp_path / 'train.jsonl').write_text('{"input": "q", "label": "a"}\n')
  (tmp_path / 'test.jsonl').write_text('')
  files = {'train': tmp_path / 'train.jsonl', 'test': tmp_path / 'test.jsonl'}
  name = dsbs_task('jsonl', 'finetune', vocabulary=BYTES, jsonl_files=files)
  with pytest.raises(lengths.EmptySplitError, match="no examples in split 'te"):
    lengths.report(name, {'inputs': 8, 'targets': 8}, 'test')
  with pytest.raises(gin_utils.GinConfigError, match='--split=dev'):
    lengths.report(name, {'inputs': 8, 'targets': 8}, 'dev')


def test_the_binary_reads_the_task_from_the_train_gin_flags():
  """One run of `dsbs-lengths` (a few seconds: TensorFlow's import)."""
  command = [
    os.path.join(os.path.dirname(sys.executable), 'dsbs-lengths'),
    '--gin_file=runs/dsbs.gin',
    '--gin_file=models/t5_1_1_tiny.gin',
    "--gin.DATASET='cqa'",
    f"--gin.DATA_DIR='{SAMPLE_DATA_DIR}'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 160, 'targets': 64}",
    '--coverage=0.9',
    '--multiple=1',
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(
    command, capture_output=True, text=True, env=env, timeout=300, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  name = dsbs_task('cqa', vocabulary=BYTES, data_dir=SAMPLE_DATA_DIR)
  expected = lengths.report(
    name, {'inputs': 160, 'targets': 64}, 'train', 0.9, 1
  )
  assert result.stdout.strip() == expected


@pytest.fixture
def clean_gin():
  gin.clear_config()
  gin.add_config_file_search_path(str(gin_utils.project_gin_dir()))
  yield
  gin.clear_config()


def test_a_missing_vocabulary_is_named(clean_gin):
  del clean_gin
  gin.parse_config_file('runs/dsbs.gin')
  with pytest.raises(gin_utils.GinConfigError, match='VOCABULARY is not'):
    lengths._check_vocabulary()  # pylint: disable=protected-access
  gin.parse_config_file('models/t5_1_1_tiny.gin')
  lengths._check_vocabulary()  # pylint: disable=protected-access
