"""The formatting and completion-parsing rules of tasks/parsing.py, on
handwritten text."""

import pytest

from dsbs_tasks import parsing
from dsbs_tasks.parsing import UNPARSED
from dsbs_tasks.parsing import Parsed

# --------------------------------------------------------------------------
# Formatting.


def test_cqa_input_lists_the_choices_one_per_line():
  record = {
    'question': 'Where do fish live?',
    'choices': ['sea', 'tree', 'sky', 'car', 'desk'],
    'answer': 'sea',
  }
  text, label = parsing.format_cqa(record)
  assert text == (
    'Where do fish live?\nAnswer Choices:\n'
    '(a) sea\n(b) tree\n(c) sky\n(d) car\n(e) desk'
  )
  assert label == 'sea'


def test_svamp_input_is_kept_as_given():
  record = {'input': 'Tom has 3 apples.\nHow many?', 'label': '( 3.0 + 0.0 )'}
  assert parsing.format_svamp(record) == (
    'Tom has 3 apples.\nHow many?',
    '( 3.0 + 0.0 )',
  )


@pytest.mark.parametrize(
  'index, label', [(0, 'entailment'), (1, 'neutral'), (2, 'contradiction')]
)
def test_nli_label_text_and_separator(index, label):
  record = {
    'premise': 'A man sleeps.',
    'hypothesis': 'A man rests.',
    'label': index,
  }
  assert parsing.format_nli(record) == (
    'A man sleeps. </s> A man rests.',
    label,
  )


def _cqa(**fields):
  return {'question': 'q', 'choices': ['a'] * 5, 'answer': 'a', **fields}


@pytest.mark.parametrize(
  'record, field',
  [
    ({'choices': ['a'] * 5, 'answer': 'a'}, 'question'),
    (_cqa(choices=['a'] * 4), 'choices'),
    (_cqa(choices=['a', 'b', 'c', 'd', 5]), 'choices'),
    (_cqa(answer='  '), 'answer'),
    (_cqa(answer=None), 'answer'),
  ],
)
def test_cqa_bad_records_name_the_field(record, field):
  with pytest.raises(parsing.FieldError) as error:
    parsing.format_cqa(record)
  assert error.value.field == field
  assert repr(field) in str(error.value)


@pytest.mark.parametrize('label', [3, -1, True, '0', 1.0])
def test_nli_rejects_labels_other_than_0_1_2(label):
  with pytest.raises(parsing.FieldError, match="'label'"):
    parsing.format_nli({'premise': 'p', 'hypothesis': 'h', 'label': label})


# --------------------------------------------------------------------------
# cqa: cut at Q:, split at "So the answer is", option text after (x).

CQA_TAIL = (
  '\n\nQ: What is red?\nAnswer Choices:\n(a) blood\n(b) sky\n'
  'A: Blood is red. So the answer is (a) blood.'
)


def test_cqa_rationale_and_option_text():
  completion = (
    'Fish need water. Of the above choices, only sea has water. '
    'So the answer is (a) sea.' + CQA_TAIL
  )
  assert parsing.parse_cqa(completion) == Parsed(
    'Fish need water. Of the above choices, only sea has water.', 'sea'
  )


def test_cqa_label_keeps_inner_periods_and_stops_at_the_next_option():
  def label(answer):
    return parsing.parse_cqa('R. So the answer is ' + answer).label

  assert label('(b) st. louis.') == 'st. louis'
  assert label('either (a) pond or (e) lake.') == 'pond or'
  assert label('(c) zoo') == 'zoo'


def test_cqa_failures():
  parse = parsing.parse_cqa
  assert parse('Fish need water. The answer is (a) sea.') == UNPARSED
  assert parse('R. So the answer is sea.') == Parsed('R.', None)
  assert parse('R. So the answer is (a) .') == Parsed('R.', None)
  assert parse('So the answer is (a) sea.') == Parsed(None, 'sea')
  # Twice before the cut: the reference's unpacking fails; both are missing.
  assert parse('So the answer is (a) x. So the answer is (b) y.') == UNPARSED
  # The marker only in the next few-shot example does not count.
  assert parse('No answer here.' + CQA_TAIL) == UNPARSED


# --------------------------------------------------------------------------
# svamp: cut at Q:, split at "The answer is", first ( to last ).


def test_svamp_rationale_and_parenthesised_expression():
  completion = (
    'He had 10 and gave 3 + 6, so 10 - (3 + 6) = 1. '
    'The answer is (10 - (3 + 6)).\n\n'
    'Q: There are 15 trees. The answer is (21 - 15).'
  )
  assert parsing.parse_svamp(completion) == Parsed(
    'He had 10 and gave 3 + 6, so 10 - (3 + 6) = 1.', '(10 - (3 + 6))'
  )


def test_svamp_failures():
  parse = parsing.parse_svamp
  assert parse('So 10 * 45 = 450. The answer is 450.') == Parsed(
    'So 10 * 45 = 450.', None
  )
  assert parse('So 10 * 45 = 450.') == UNPARSED
  assert parse('The answer is (1). The answer is (2).') == UNPARSED
  assert parse('The answer is (10 * 45).') == Parsed(None, '(10 * 45)')


# --------------------------------------------------------------------------
# esnli: rationale before "Answer:", label after "Answer: " up to "Premise".


def test_esnli_rationale_and_label():
  completion = (
    'Packages need not be from lunch.\nAnswer: neutral\n\n'
    'Premise: Two women hug.\nHypothesis: Two women hold packages.'
    '\nReasonings: They hold them.\nAnswer: entailment'
  )
  assert parsing.parse_esnli(completion) == Parsed(
    'Packages need not be from lunch.', 'neutral'
  )


def test_esnli_failures():
  parse = parsing.parse_esnli
  assert parse('Packages need not be from lunch.') == UNPARSED
  assert parse('Packages.\nAnswer:neutral') == Parsed('Packages.', None)
  assert parse('Packages.\nAnswer: \nPremise: x') == Parsed('Packages.', None)
  assert parse('Answer: neutral') == Parsed(None, 'neutral')


# --------------------------------------------------------------------------
# anli1: cut at "Premise:", split at "So the answer is", drop the last
# character.


def test_anli1_rationale_and_label():
  completion = (
    'He was a senator, so he had a political career. '
    'So the answer is entailment.\n\n'
    'Premise: Almost Sunrise is a film.\n'
    'Hypothesis: It is a film. So the answer is neutral.'
  )
  assert parsing.parse_anli1(completion) == Parsed(
    'He was a senator, so he had a political career.', 'entailment'
  )


def test_anli1_failures():
  parse = parsing.parse_anli1
  assert parse('He was.\n\nPremise: x. So the answer is neutral.') == UNPARSED
  assert parse('R. So the answer is .') == Parsed('R.', None)
  # The last character goes whatever it is, as in the reference.
  assert parse('R. So the answer is neutral') == Parsed('R.', 'neutra')
