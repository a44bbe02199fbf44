"""The safe svamp evaluator and the metric functions."""

import pytest

from dsbs_tasks import arithmetic
from dsbs_tasks import metrics
from dsbs_tasks.arithmetic import ExpressionError


@pytest.mark.parametrize(
  'text, value',
  [
    ('( 10.0 - ( 6.0 + 3.0 ) )', 1.0),
    ('(10 - (3 + 6))', 1.0),
    ('( 84.0 / 2.0 )', 42.0),
    ('2 + 3 * 4', 14.0),
    ('(2 + 3) * 4', 20.0),
    ('8 / 4 / 2', 1.0),
    ('10 - 4 - 3', 3.0),
    ('-3 * -(2 - 5)', -9.0),
    ('--4', 4.0),
    (' .5 * 4 ', 2.0),
  ],
)
def test_values(text, value):
  assert arithmetic.evaluate(text) == value


@pytest.mark.parametrize(
  'text',
  [
    "__import__('os').system('x')",
    '2**999999',
    '2 ** 3',
    '1e999999',
    '1e5',
    'x + 1',
    '(1).real',
    'abs(-1)',
    "'1' + '2'",
    '[1]',
    '1 2',
    '(1 + 2',
    '1 + 2)',
    '',
    '+1',
    '1 +',
    '9' * 400,  # a literal too large for a float
    '(' * 101 + '1' + ')' * 101,  # too deep
    '-' * 200 + '1',
    '1' + ' + 1' * 400,  # too long
    '٣',  # digits are ASCII only
  ],
)
def test_rejected(text):
  with pytest.raises(ExpressionError):
    arithmetic.evaluate(text)


def test_division_by_zero_has_no_value():
  with pytest.raises(ExpressionError, match='division by zero'):
    arithmetic.evaluate('( 1.0 / ( 2.0 - 2.0 ) )')
  assert arithmetic.value_or_none('1 / 0') is None
  accuracy = metrics.equation_accuracy(['( 1.0 / 1.0 )'], ['(1 / 0)'])
  assert accuracy == {'accuracy': 0.0}


def test_label_accuracy_is_a_fraction_of_exact_matches_after_strip():
  targets = ['sea', 'neutral', 'math problem', 'zoo']
  predictions = [' sea\n', 'Neutral', 'math problem', 'zoos']
  assert metrics.accuracy(targets, predictions) == {'accuracy': 0.5}


def test_equation_accuracy_compares_values():
  targets = [
    '( 10.0 - ( 6.0 + 3.0 ) )',
    '( 0.1 + 0.2 )',
    '( 2.0 * 3.0 )',
    '( 1.0 + 1.0 )',
    '( 5.0 )',
  ]
  predictions = ['(10 - (3 + 6))', '0.3', '(2 * 4)', 'import os', '']
  assert 0.1 + 0.2 != 0.3  # equal only within the tolerance
  assert metrics.equation_accuracy(targets, predictions) == {'accuracy': 0.4}


def test_metrics_reject_mismatched_or_empty_inputs():
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.accuracy(['a', 'b'], ['a'])
  with pytest.raises(ValueError, match='no targets'):
    metrics.equation_accuracy([], [])
