"""The `synthetic_multistep` dataset: dsbs_tasks.synthetic.multistep_splits."""

import collections
import hashlib
import math
import os
import re
import subprocess
import sys

import pytest

from dsbs_tasks import arithmetic
from dsbs_tasks import synthetic

SPLITS = ('train', 'validation', 'test')
# One step as the rationale writes it, after a word or two.
_STEP = r'[A-Za-z]+(?: [A-Za-z]+)* \d+ [-+*] \d+ = \d+\.'
_RATIONALE = re.compile(rf'{_STEP}(?: {_STEP})*')
_OPERATIONS = {
  '+': lambda a, b: a + b,
  '-': lambda a, b: a - b,
  '*': lambda a, b: a * b,
}


@pytest.fixture(scope='module')
def default_splits():
  return synthetic.multistep_splits()


@pytest.fixture(scope='module')
def splits_at_30_percent():
  return synthetic.multistep_splits(
    num_train=600,
    num_validation=90,
    num_test=150,
    seed=5,
    teacher_error_rate=0.3,
  )


def _steps(example):
  """(left, op, right, written result) of each step, all checked written as
  `<a> <op> <b> = <c>` with nothing else but words around them."""
  assert _RATIONALE.fullmatch(example.rationale), example
  steps = []
  for expression, written in synthetic.rationale_steps(example.rationale):
    left, op, right = expression.split(' ')
    steps.append((int(left), op, int(right), int(written)))
  return steps


def _value(left, op, right):
  value = arithmetic.value_or_none(f'{left} {op} {right}')
  assert value is not None and value == int(value)
  return int(value)


def _chained_sides(steps, index):
  """Where step `index` uses the previous written result: 0 left, 2 right."""
  previous = steps[index - 1][3]
  sides = [side for side in (0, 2) if steps[index][side] == previous]
  assert sides, f'step {index} does not use {previous}: {steps}'
  return sides


def _check_chain_and_numbers(example, steps):
  """Every step after the first uses the one before; the other operands are
  exactly the numbers of the input."""
  literals = [steps[0][0], steps[0][2]]
  for index in range(1, len(steps)):
    side = _chained_sides(steps, index)[0]
    literals.append(steps[index][2 - side])
  numbers = [int(n) for n in re.findall(r'\d+', example.input)]
  assert sorted(literals) == sorted(numbers), example


def _true_answers(steps, slipped):
  """The possible true answers of a chain whose step `slipped` is miswritten
  (two when a later step has the previous result on both sides)."""
  left, op, right, _ = steps[slipped]
  values = {_value(left, op, right)}
  for index in range(slipped + 1, len(steps)):
    left, op, right, _ = steps[index]
    sides = _chained_sides(steps, index)
    values = {
      _OPERATIONS[op](
        value if side == 0 else left, value if side == 2 else right
      )
      for value in values
      for side in sides
    }
  return values


def _check_split(examples, teacher_error_rate):
  """Every example of a split; returns (ops used, step counts)."""
  num_wrong = sum(e.teacher_label != e.label for e in examples)
  assert num_wrong == math.floor(teacher_error_rate * len(examples) + 0.5)
  if len(examples) >= 50:  # rounding moves it by at most half an example
    assert abs(num_wrong / len(examples) - teacher_error_rate) <= 0.01
  ops = collections.Counter()
  step_counts = collections.Counter()
  for example in examples:
    steps = _steps(example)
    assert len(steps) in (2, 3), example
    step_counts[len(steps)] += 1
    ops.update(op for _, op, _, _ in steps)
    _check_chain_and_numbers(example, steps)
    assert example.label == str(int(example.label))
    assert example.teacher_label == str(int(example.teacher_label))
    assert 0 <= int(example.label) < synthetic.MAX_VALUE
    for left, _, right, written in steps:
      for value in left, right, written:
        assert 0 <= value < synthetic.MAX_VALUE
    # Where the written results are not what the expressions make.
    slips = [
      index
      for index, (left, op, right, written) in enumerate(steps)
      if _value(left, op, right) != written
    ]
    assert steps[-1][3] == int(example.teacher_label), example
    if example.teacher_label == example.label:
      assert not slips, example
      continue
    assert len(slips) == 1, example
    (slipped,) = slips
    left, op, right, written = steps[slipped]
    assert 1 <= abs(written - _value(left, op, right)) <= 3, example
    if slipped + 1 < len(steps):  # carried through: the next step uses it
      assert written in (steps[slipped + 1][0], steps[slipped + 1][2])
    assert int(example.label) in _true_answers(steps, slipped), example
  return ops, step_counts


def test_sizes_distinct_and_disjoint(default_splits):
  assert {k: len(v) for k, v in default_splits.items()} == {
    'train': 4000,
    'validation': 200,
    'test': 500,
  }
  assert list(default_splits) == list(SPLITS)
  inputs = {k: [e.input for e in v] for k, v in default_splits.items()}
  for split, texts in inputs.items():
    assert len(set(texts)) == len(texts), split
  everything = [text for texts in inputs.values() for text in texts]
  assert len(set(everything)) == len(everything)


def test_same_seed_same_splits_other_seed_other_splits(default_splits):
  assert synthetic.multistep_splits(seed=0) == default_splits
  other = synthetic.multistep_splits(seed=1)
  for split in SPLITS:
    assert other[split] != default_splits[split]
    assert {e.input for e in other[split]} != {
      e.input for e in default_splits[split]
    }


def test_same_in_every_process(default_splits):
  # Python's string hashing differs from one process to the next (here by
  # PYTHONHASHSEED), so the splits must not depend on it.
  digest = hashlib.sha256(repr(default_splits).encode()).hexdigest()
  other = subprocess.run(
    [sys.executable, '-c', _DIGEST_PROGRAM],
    env=dict(os.environ, PYTHONHASHSEED='12345', TF_CPP_MIN_LOG_LEVEL='3'),
    capture_output=True,
    text=True,
    check=True,
  )
  assert other.stdout.split()[-1] == digest


_DIGEST_PROGRAM = """
import hashlib
from dsbs_tasks import synthetic
splits = synthetic.multistep_splits()
print(hashlib.sha256(repr(splits).encode()).hexdigest())
"""


def test_test_split_does_not_depend_on_train_size():
  small = synthetic.multistep_splits(num_train=10, num_validation=20, seed=3)
  large = synthetic.multistep_splits(num_train=300, num_validation=20, seed=3)
  assert small['test'] == large['test']
  assert small['validation'] == large['validation']
  assert [e.input for e in small['train']] == [
    e.input for e in large['train'][:10]
  ]


def test_default_teacher_and_rationales(default_splits):
  for split in SPLITS:
    ops, step_counts = _check_split(default_splits[split], 0.1)
    assert set(ops) == {'+', '-', '*'}, split
    assert set(step_counts) == {2, 3}, split


def test_teacher_at_30_percent(splits_at_30_percent):
  for split in SPLITS:
    ops, _ = _check_split(splits_at_30_percent[split], 0.3)
    assert set(ops) == {'+', '-', '*'}, split
  wrong = [
    e for e in splits_at_30_percent['train'] if e.teacher_label != e.label
  ]
  # The slips fall in first, middle and last steps alike.
  slipped = collections.Counter()
  for example in wrong:
    steps = _steps(example)
    for index, (left, op, right, written) in enumerate(steps):
      if _value(left, op, right) != written:
        slipped[index == len(steps) - 1] += 1
  assert slipped[True] > 0 and slipped[False] > 0


@pytest.mark.parametrize('rate', [0.0, 0.25, 1.0])
def test_teacher_error_count_rounds_half_up(rate):
  # 0.25 of 10, 6 and 2 examples: 2.5, 1.5 and 0.5 wrong round to 3, 2, 1.
  splits = synthetic.multistep_splits(
    num_train=10, num_validation=6, num_test=2, teacher_error_rate=rate
  )
  for split in SPLITS:
    _check_split(splits[split], rate)


def test_lengths_and_ascii(default_splits, splits_at_30_percent):
  for splits in (default_splits, splits_at_30_percent):
    for examples in splits.values():
      for e in examples:
        assert e.input.isascii() and e.rationale.isascii(), e
        assert len(e.input) <= synthetic.MAX_INPUT_CHARS, e
        assert len(e.rationale) <= synthetic.MAX_RATIONALE_CHARS, e


def test_every_template_fits_at_its_longest():
  """The bounds hold for any seed: each template filled with its longest
  words and numbers (every input number has one digit, every result at
  most two)."""
  longest_name = max((n for n, _ in synthetic.MULTISTEP_NAMES), key=len)
  longest_pronoun = max((p for _, p in synthetic.MULTISTEP_NAMES), key=len)
  longest_thing = max(synthetic.MULTISTEP_OBJECTS, key=len)
  for template in synthetic._TEMPLATES:  # pylint: disable=protected-access
    assert all(1 <= low <= high <= 9 for _, low, high in template.ranges)
    text = template.text.format(
      name=longest_name,
      pronoun=longest_pronoun,
      other=longest_name,
      thing=longest_thing,
      **{number: 9 for number, _, _ in template.ranges},
    )
    assert len(text) <= synthetic.MAX_INPUT_CHARS, text
    rationale = ' '.join(
      f'{word} 99 {op} 99 = 99.' for word, _, op, _ in template.steps
    )
    assert len(rationale) <= synthetic.MAX_RATIONALE_CHARS, rationale


def test_rationale_steps():
  assert synthetic.rationale_steps('Buys 3 * 4 = 12. Has 5 + 12 = 17.') == [
    ('3 * 4', '12'),
    ('5 + 12', '17'),
  ]
  assert synthetic.rationale_steps('no steps here') == []


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'num_train': -1}, 'integers >= 0'),
    ({'num_validation': 2.5}, 'integers >= 0'),
    ({'num_test': True}, 'integers >= 0'),
    ({'num_train': synthetic.MAX_EXAMPLES}, 'sum to at most'),
    ({'seed': -1}, 'seed'),
    ({'seed': 2**32}, 'seed'),
    ({'seed': 'zero'}, 'seed'),
    ({'teacher_error_rate': -0.1}, 'teacher_error_rate'),
    ({'teacher_error_rate': 1.5}, 'teacher_error_rate'),
    ({'teacher_error_rate': float('nan')}, 'teacher_error_rate'),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.multistep_splits(**kwargs)
