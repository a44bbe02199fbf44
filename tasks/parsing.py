"""Per-dataset input formatting and teacher-completion parsing.

Everything here is a pure function of one record or one completion, so each
rule can be tested on handwritten text.

Formatters turn one JSON record of the original release into `(input, label)`,
the label being the ground truth. A record that lacks a field, or has one of
the wrong type, raises `FieldError` naming the field; the reader adds the file
and line.

Parsers turn one teacher completion into a `Parsed(rationale, label)`. Teacher
completions run on into the next few-shot example, which each rule cuts off.
A part that the rule cannot find, or that comes out empty, is `None`. Precisely:

- cqa: cut at the first `Q:`; `So the answer is` must then occur exactly once
  (otherwise both parts are `None`: the reference's tuple unpacking fails).
  Rationale: the text before it. Label: the text after the first `(x)` option
  marker (any single character between the parentheses) up to the next marker,
  stripped, with one final period removed; `None` if there is no marker.
- svamp: cut at the first `Q:`; `The answer is` must then occur exactly once.
  Label: the first `(` to the last `)` on that line (the reference's
  `\\(.*\\)` search); `None` if there is no parenthesised expression.
- esnli: `Answer:` must occur (else both `None`). Rationale: the text before
  the first `Answer:`. Label: the text after the first `Answer: ` (with the
  space) up to `Premise` or the next `Answer: `, right-stripped; `None` if
  there is no `Answer: `.
- anli1: cut at the first `Premise:`; `So the answer is` must then occur
  exactly once. Label: the remainder, left-stripped, without its last
  character (the reference drops the final period this way).
- answer sentence (the single-task targets of data without a teacher pattern
  of its own): `So the answer is` exactly once. Rationale: the text before
  it. Label: the text after it, stripped, with one final period removed.

Labels are not checked against a set of classes: a teacher label that is
wrong, or not a class at all, is still the teacher's label.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import re
from typing import Any

NLI_LABELS = ('entailment', 'neutral', 'contradiction')

# The reference joins premise and hypothesis with the tokenizer's EOS text,
# "</s>", which a HuggingFace tokenizer turns into the EOS id. A seqio
# SentencePiece vocabulary never produces a control id from text, so we keep
# the same text with spaces around it: the hypothesis then starts a new word,
# as it does in the reference, and the separator is an explicit marker.
NLI_SEPARATOR = ' </s> '

CQA_OPTION_LETTERS = 'abcde'


class FieldError(ValueError):
  """A record lacks a field or has one of the wrong type or value."""

  def __init__(self, field: str, problem: str):
    super().__init__(f'field {field!r}: {problem}')
    self.field = field
    self.problem = problem


@dataclasses.dataclass(frozen=True)
class Parsed:
  """One teacher completion; a part is None when it does not parse."""

  rationale: str | None
  label: str | None


UNPARSED = Parsed(rationale=None, label=None)

# --------------------------------------------------------------------------
# Record fields and formatting.


def unicode_problem(text: str) -> str | None:
  """Why `text` is not valid Unicode text, or None if it is.

  JSON may escape lone surrogates (`"\\ud800"`), which no UTF-8 text holds:
  TensorFlow and the tokenizers cannot encode them.
  """
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as error:
    return (
      f'not valid Unicode: lone surrogate {text[error.start]!r} at '
      f'character {error.start}'
    )
  return None


def get_field(record: Mapping[str, Any], name: str, kind: type) -> Any:
  """`record[name]`; FieldError if it is absent or not of type `kind`."""
  if name not in record:
    raise FieldError(name, 'missing')
  value = record[name]
  # bool is an int subclass; a JSON true is never a valid label index.
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise FieldError(
      name, f'expected {kind.__name__}, got {type(value).__name__}'
    )
  if isinstance(value, str) and (problem := unicode_problem(value)):
    raise FieldError(name, problem)
  return value


def get_text(record: Mapping[str, Any], name: str) -> str:
  """A string field that must not be blank (an empty target trains nothing)."""
  value = get_field(record, name, str)
  if not value.strip():
    raise FieldError(name, 'empty')
  return value


def format_cqa(record: Mapping[str, Any]) -> tuple[str, str]:
  """Question, `Answer Choices:`, `(a) …` to `(e) …`; label: the answer."""
  question = get_text(record, 'question')
  choices = get_field(record, 'choices', list)
  if len(choices) != len(CQA_OPTION_LETTERS) or not all(
    isinstance(c, str) for c in choices
  ):
    raise FieldError('choices', f'expected {len(CQA_OPTION_LETTERS)} strings')
  for index, choice in enumerate(choices):
    if problem := unicode_problem(choice):
      raise FieldError('choices', f'element {index}: {problem}')
  options = '\n'.join(
    f'({letter}) {choice}'
    for letter, choice in zip(CQA_OPTION_LETTERS, choices)
  )
  return f'{question}\nAnswer Choices:\n{options}', get_text(record, 'answer')


def format_svamp(record: Mapping[str, Any]) -> tuple[str, str]:
  """The input as given; the label is the equation string."""
  return get_text(record, 'input'), get_text(record, 'label')


def format_nli(record: Mapping[str, Any]) -> tuple[str, str]:
  """Premise and hypothesis joined by NLI_SEPARATOR; label 0/1/2 as text."""
  premise = get_text(record, 'premise')
  hypothesis = get_text(record, 'hypothesis')
  index = get_field(record, 'label', int)
  if not 0 <= index < len(NLI_LABELS):
    raise FieldError('label', f'expected 0, 1 or 2, got {index}')
  return f'{premise}{NLI_SEPARATOR}{hypothesis}', NLI_LABELS[index]


# --------------------------------------------------------------------------
# Teacher completions.


def _before(text: str, marker: str) -> str:
  """The text before the first `marker` (all if absent), right-stripped."""
  return text.split(marker, 1)[0].rstrip()


def _split_once(text: str, marker: str) -> tuple[str, str] | None:
  """(before, after) when `marker` occurs exactly once in `text`, else None."""
  parts = text.split(marker)
  return (parts[0], parts[1]) if len(parts) == 2 else None


def _nonempty(text: str) -> str | None:
  return text or None


def parse_cqa(completion: str) -> Parsed:
  parts = _split_once(_before(completion, 'Q:'), 'So the answer is')
  if parts is None:
    return UNPARSED
  rationale, answer = parts
  options = re.split(r'\(.\)', answer)
  label = options[1].strip().removesuffix('.') if len(options) > 1 else ''
  return Parsed(_nonempty(rationale.rstrip()), _nonempty(label))


def parse_svamp(completion: str) -> Parsed:
  parts = _split_once(_before(completion, 'Q:'), 'The answer is')
  if parts is None:
    return UNPARSED
  rationale, answer = parts
  expression = re.search(r'\(.*\)', answer)
  return Parsed(
    _nonempty(rationale.rstrip()), expression.group(0) if expression else None
  )


def parse_esnli(completion: str) -> Parsed:
  if 'Answer:' not in completion:
    return UNPARSED
  rationale = _before(completion, 'Answer:')
  answers = completion.split('Answer: ')
  label = ''
  if len(answers) > 1:
    label = answers[1].split('Premise', 1)[0].rstrip()
  return Parsed(_nonempty(rationale), _nonempty(label))


def parse_anli1(completion: str) -> Parsed:
  parts = _split_once(_before(completion, 'Premise:'), 'So the answer is')
  if parts is None:
    return UNPARSED
  rationale, answer = parts
  return Parsed(_nonempty(rationale.rstrip()), _nonempty(answer.lstrip()[:-1]))


# --------------------------------------------------------------------------
# The single-task baseline: rationale and label in one target.
#
# The target is the teacher's rationale followed by its label in the
# teacher's own pattern, so that the dataset's completion parser reads the
# label back from a generated target (each dataset's pair of target and
# parser is in `dsbs_tasks.datasets`). Data without a teacher pattern of its
# own (the generated datasets, JSON Lines) use `answer_sentence_target`, read
# by `parse_answer_sentence`.

ANSWER_SENTENCE = 'So the answer is'


def cqa_option_letter(input_text: str, label: str) -> str:
  """The letter of the choice `label` in a cqa input (format_cqa's lines).

  A teacher label that is no choice at all gets `?`: the parser accepts any
  single character between the parentheses, and the letter only mirrors the
  teacher's text.
  """
  for letter in CQA_OPTION_LETTERS:
    if f'\n({letter}) {label}\n' in f'{input_text}\n':
      return letter
  return '?'


def parse_answer_sentence(completion: str) -> Parsed:
  """`{rationale} So the answer is {label}.`, the sentence exactly once."""
  parts = _split_once(completion, ANSWER_SENTENCE)
  if parts is None:
    return UNPARSED
  rationale, answer = parts
  label = answer.strip().removesuffix('.')
  return Parsed(_nonempty(rationale.rstrip()), _nonempty(label))


def cqa_single_task_target(input_text: str, rationale: str, label: str) -> str:
  """`<rationale> So the answer is (x) <label>.`, as cqa's teacher writes."""
  letter = cqa_option_letter(input_text, label)
  return f'{rationale} {ANSWER_SENTENCE} ({letter}) {label}.'


def svamp_single_task_target(_: str, rationale: str, label: str) -> str:
  """`<rationale> The answer is <equation>.`, as svamp's teacher writes."""
  return f'{rationale} The answer is {label}.'


def esnli_single_task_target(_: str, rationale: str, label: str) -> str:
  """`<rationale>` then `Answer: <label>`, as esnli's teacher writes."""
  return f'{rationale}\nAnswer: {label}'


def answer_sentence_target(_: str, rationale: str, label: str) -> str:
  """`<rationale> So the answer is <label>.` (anli1's teacher pattern, and
  the one of data without a pattern of its own)."""
  return f'{rationale} {ANSWER_SENTENCE} {label}.'
