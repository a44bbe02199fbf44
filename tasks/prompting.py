"""dsbs-annotate's few-shot prompts: templates, shots, stops and parsers.

A template is one worked example's text with `{slot}` placeholders; the
prompt for an input is the template filled with each shot, then with the
input up to `{rationale}` (docs/annotate.md, "Prompts"). The built-in
templates and shots are package data in `prompts/`. Everything here is a
pure function of its files and arguments.

`AnnotateError`, the error of every dsbs-annotate module, lives here
because this is the module they all import.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import importlib.resources
import json
from pathlib import Path
import re
from typing import Any

from dsbs_jax import errors
from dsbs_tasks import datasets
from dsbs_tasks import parsing

# The datasets with a prompt of their own (`datasets.Dataset.builtin_prompt`).
BUILTIN_PROMPTS = tuple(
  name for name, spec in datasets.DATASETS.items() if spec.builtin_prompt
)
# `--parser`: a release dataset's completion parser, or none.
PARSERS: dict[str, Callable[[str], parsing.Parsed] | None] = {
  **{
    name: datasets.get(name).parse_completion
    for name in datasets.names(datasets.RELEASE)
  },
  'none': None,
}
SLOTS = ('input', 'premise', 'hypothesis', 'rationale', 'label')
SHOT_SEPARATOR = '\n\n'

_SLOT_RE = re.compile(r'\{(' + '|'.join(SLOTS) + r')\}')

Request = str | list[dict[str, str]]  # a prompt text, or chat messages


class AnnotateError(errors.UserError):
  """A problem the user can fix; the binary prints it as one line."""


@dataclasses.dataclass(frozen=True)
class Template:
  """One worked example's text, with `{slot}` placeholders.

  Slots: `{input}` (or `{premise}` and `{hypothesis}`, the two halves of an
  NLI input), then `{rationale}` and `{label}`. A shot is the whole template
  filled in; the query for an input is the template up to `{rationale}`,
  right-stripped (e.g. `Q: <input>\\nA:`), and the teacher's completion
  continues it. Other braces are plain text.
  """

  text: str
  name: str

  def __post_init__(self):
    slots = [m.group(1) for m in _SLOT_RE.finditer(self.text)]
    for slot in ('rationale', 'label'):
      if slots.count(slot) > 1:
        raise AnnotateError(f'template {self.name}: {{{slot}}} occurs twice')
    query = self.query_part
    has_input = '{input}' in query or (
      '{premise}' in query and '{hypothesis}' in query
    )
    if not has_input:
      where = ' before {rationale}' if '{rationale}' in self.text else ''
      raise AnnotateError(
        f'template {self.name}: no {{input}} slot (nor {{premise}} and '
        f'{{hypothesis}}){where}, so the teacher would never see the input'
      )
    if '{label}' in query:
      raise AnnotateError(
        f'template {self.name}: {{label}} must come after {{rationale}}'
      )

  @property
  def query_part(self) -> str:
    return self.text.split('{rationale}', 1)[0]

  @property
  def answer_part(self) -> str:
    """From `{rationale}` on; empty without a `{rationale}` slot."""
    parts = self.text.split('{rationale}', 1)
    return '{rationale}' + parts[1] if len(parts) == 2 else ''

  @property
  def input_slots(self) -> frozenset[str]:
    return frozenset(
      m.group(1)
      for m in _SLOT_RE.finditer(self.query_part)
      if m.group(1) in ('input', 'premise', 'hypothesis')
    )

  @property
  def default_stop(self) -> str | None:
    """The text before the first slot (`Q:`, `Premise:`), where the next
    example would begin; None if the template starts with a slot."""
    head = _SLOT_RE.split(self.text, 1)[0].strip()
    return head or None

  def check_input(self, slots: dict[str, str], what: str) -> None:
    """Before any request: an input (its `slots_for`) must fill the query's
    input slots, or the teacher would be asked about a hole."""
    if missing := self.input_slots - set(slots):
      raise AnnotateError(
        f'{what} has no {"/".join(sorted(missing))} for the template: NLI '
        'inputs are `premise </s> hypothesis` or have `premise` and '
        '`hypothesis` fields'
      )

  @staticmethod
  def fill(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
      slot = match.group(1)
      if slot not in values:
        raise AnnotateError(f'no value for the slot {{{slot}}}')
      return values[slot]

    return _SLOT_RE.sub(replace, text)


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A template with its shots, stop strings and parser."""

  template: Template
  shots: tuple[dict[str, str], ...]
  stop: tuple[str, ...]
  parser: str
  system: str | None = None

  def __post_init__(self):
    if self.shots and '{rationale}' not in self.template.text:
      raise AnnotateError(
        f'template {self.template.name}: without a {{rationale}} slot it '
        'cannot show the shots; write the examples into the template instead'
      )

  def completion_prompt(self, slots: dict[str, str]) -> str:
    """Shots and query as one text (the completions API)."""
    parts = [Template.fill(self.template.text, s).rstrip() for s in self.shots]
    parts.append(Template.fill(self.template.query_part, slots).rstrip())
    return SHOT_SEPARATOR.join(parts)

  def chat_messages(self, slots: dict[str, str]) -> list[dict[str, str]]:
    """Each shot as a user turn (its query) and an assistant turn (its
    rationale and answer), then the query (the chat API)."""
    messages = []
    if self.system:
      messages.append({'role': 'system', 'content': self.system})
    for shot in self.shots:
      query = Template.fill(self.template.query_part, shot).rstrip()
      answer = Template.fill(self.template.answer_part, shot).strip()
      messages.append({'role': 'user', 'content': query})
      messages.append({'role': 'assistant', 'content': answer})
    query = Template.fill(self.template.query_part, slots).rstrip()
    messages.append({'role': 'user', 'content': query})
    return messages

  def parse(self, completion: str) -> parsing.Parsed | None:
    parse = PARSERS[self.parser]
    return parse(completion) if parse else None


def _prompt_file(name: str) -> Path:
  return Path(str(importlib.resources.files('dsbs_tasks') / 'prompts' / name))


def read_template(prompt: str) -> Template:
  """A built-in prompt's template (`cqa`, …) or a template file."""
  if prompt in BUILTIN_PROMPTS:
    path = _prompt_file(f'{prompt}.txt')
  else:
    path = Path(prompt)
    if not path.is_file():
      raise AnnotateError(
        f'--prompt={prompt}: neither a built-in prompt '
        f'({", ".join(BUILTIN_PROMPTS)}) nor a template file'
      )
  try:
    text = path.read_text(encoding='utf-8')
  except (OSError, UnicodeDecodeError) as error:
    raise AnnotateError(f'{path}: cannot be read: {error}') from None
  text = text.rstrip()
  if not text:
    raise AnnotateError(f'template {path}: empty')
  return Template(text, str(path))


def _nli_fields(record: dict[str, Any]) -> tuple[str, str] | None:
  """(premise, hypothesis) where the record has both as strings."""
  premise, hypothesis = record.get('premise'), record.get('hypothesis')
  if isinstance(premise, str) and isinstance(hypothesis, str):
    return premise, hypothesis
  return None


def slots_for(
  text: str, record: dict[str, Any] | None = None
) -> dict[str, str]:
  """A template's values for one input: `input`, and `premise` and
  `hypothesis` from the record's fields or from an input of the form
  `premise </s> hypothesis` (how the NLI tasks write it)."""
  slots = {'input': text}
  fields = _nli_fields(record or {})
  if fields is None and parsing.NLI_SEPARATOR in text:
    fields = tuple(text.split(parsing.NLI_SEPARATOR, 1))
  if fields is not None:
    slots['premise'], slots['hypothesis'] = fields
  return slots


def read_shots(path: Path) -> tuple[dict[str, str], ...]:
  """Shots: JSON Lines with `input` (or `premise` and `hypothesis`),
  `rationale` and `label` as the prompt shows them (each where the template
  has its slot); blank lines and lines starting with `#` are skipped."""
  try:
    lines = path.read_text(encoding='utf-8').splitlines()
  except FileNotFoundError:
    raise AnnotateError(f'{path}: no such shots file') from None
  except (OSError, UnicodeDecodeError) as error:
    raise AnnotateError(f'{path}: cannot be read: {error}') from None
  shots = []
  for number, line in enumerate(lines, start=1):
    if not line.strip() or line.lstrip().startswith('#'):
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise AnnotateError(
        f'{path}:{number}: not valid JSON: {error.msg}'
      ) from None
    if not isinstance(record, dict):
      raise AnnotateError(f'{path}:{number}: expected a JSON object')
    text = record.get('input')
    if not isinstance(text, str):
      fields = _nli_fields(record)
      if fields is None:
        raise AnnotateError(f'{path}:{number}: no `input` string')
      text = parsing.NLI_SEPARATOR.join(fields)
    shot = slots_for(text, record)
    for field in ('rationale', 'label'):
      value = record.get(field)
      if isinstance(value, str) and value.strip():
        shot[field] = value
      elif value is not None:
        raise AnnotateError(
          f'{path}:{number}: `{field}` must be a non-empty string'
        )
    shots.append(shot)
  return tuple(shots)


def make_prompt(
  prompt: str,
  *,
  shots: str | None = None,
  stop: Sequence[str] | None = None,
  parser: str | None = None,
  dataset: str | None = None,
  system: str | None = None,
) -> Prompt:
  """A built-in prompt or a template file, with its shots, stops, parser.

  Defaults: a built-in prompt's own shots and parser; for a template file no
  shots and the parser of `dataset` (else none); the stop string is the
  template's text before its first slot (`stop=['']` for none).
  """
  template = read_template(prompt)
  if shots is not None:
    shots_path = Path(shots)
  elif prompt in BUILTIN_PROMPTS:
    shots_path = _prompt_file(f'{prompt}_shots.jsonl')
  else:
    shots_path = None
  shot_list = read_shots(shots_path) if shots_path else ()
  needed = {m.group(1) for m in _SLOT_RE.finditer(template.text)}
  for number, shot in enumerate(shot_list, start=1):
    if missing := needed - set(shot):
      raise AnnotateError(
        f'{shots_path}: shot {number} lacks '
        f'{", ".join(sorted(missing))} for the template {template.name} '
        '(NLI shots have `premise </s> hypothesis` inputs)'
      )
  if parser is None:
    if prompt in BUILTIN_PROMPTS:
      parser = prompt
    else:
      parser = dataset if dataset in PARSERS else 'none'
  if parser not in PARSERS:
    raise AnnotateError(
      f'--parser={parser}: expected one of {", ".join(PARSERS)}'
    )
  if stop is None:
    stop = [template.default_stop] if template.default_stop else []
  stop = tuple(s for s in stop if s)
  if len(stop) > 4:
    raise AnnotateError('at most 4 stop strings (the OpenAI API limit)')
  return Prompt(template, shot_list, stop, parser, system)
