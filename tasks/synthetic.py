"""Arithmetic word problems with a simulated teacher, made here.

Two datasets let the whole pipeline run with no download; both are
deterministic from their seed, with disjoint splits and no repeated input.

`synthetic` (`synthetic_splits`): inputs are short (at most 51 bytes, so with
the `[rationale] ` prefix and EOS they fit in 64 tokens of a byte vocabulary),
and a tiny T5 learns them in a few hundred CPU steps. Each problem adds or
subtracts two one-digit numbers:

    input:     "Tom has 3 apples and gets 4 more. How many now?"
    rationale: "Gets more, so add: 3 + 4 = 7."
    label:     "7"

Its simulated teacher is wrong on `round(teacher_error_rate · n)` examples of
every split: its label is off by one and its rationale ends in that wrong
number, so the `gt` and `llm` label sources differ exactly there. The splits
are disjoint samples of all possible problems.

`synthetic_multistep` (`multistep_splits`): harder problems that need two or
three operations among +, - and * over one- and two-digit numbers (the
problems give one-digit numbers; the steps reach two-digit ones), from a
dozen templates, so a model that sees only the label has to learn the
composition implicitly:

    input:     "Ann has 7 pens. She buys 3 boxes of 4 pens. How many pens now?"
    rationale: "Buys 3 * 4 = 12. Has 7 + 12 = 19."
    label:     "19"

Every number in it, intermediate or final, is a non-negative integer below
MAX_VALUE (100): larger numbers made the task one that no method learns with a
tiny model in a few CPU minutes (docs/results.md). Inputs have at most
MAX_INPUT_CHARS and rationales at most MAX_RATIONALE_CHARS ASCII characters.
The rationale writes one step at a time, each as `<a> <op> <b> = <c>` (read
back by `rationale_steps`), and every step but the first uses the result of the
step before. Its simulated teacher is wrong on `round(teacher_error_rate · n)`
examples of every split: it slips in one step, writing a result off by 1 to 3,
and carries the slip through, doing every later step right on the wrong number;
its label is the final, wrong value. `Example.label` is always the true answer.

The problems of `multistep_splits` are drawn test first, then validation,
then train: a split's problems depend only on the seed and the sizes of the
splits before it, so a larger `num_train` only adds training problems.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import re

import gin
import numpy as np

from dsbs_tasks.examples import Example

NAMES = ('Tom', 'Ann', 'Sam', 'Mia', 'Ben', 'Eva', 'Max', 'Zoe')
OBJECTS = ('apples', 'pens', 'cards', 'books', 'coins', 'shells')


def _problem(
  name: str, thing: str, add: bool, a: int, b: int
) -> tuple[str, str, int]:
  """(input, rationale without its result, answer)."""
  if add:
    return (
      f'{name} has {a} {thing} and gets {b} more. How many now?',
      f'Gets more, so add: {a} + {b} =',
      a + b,
    )
  return (
    f'{name} has {a} {thing} and gives away {b}. How many left?',
    f'Gives away, so subtract: {a} - {b} =',
    a - b,
  )


def all_problems() -> list[tuple[str, str, int]]:
  """Every problem in a fixed order: a + b, and a - b for a > b; a, b < 10."""
  problems = []
  for name, thing in itertools.product(NAMES, OBJECTS):
    for a, b in itertools.product(range(1, 10), repeat=2):
      problems.append(_problem(name, thing, True, a, b))
      if a > b:
        problems.append(_problem(name, thing, False, a, b))
  return problems


@gin.configurable
def synthetic_splits(
  num_train: int = 1000,
  num_validation: int = 100,
  num_test: int = 100,
  seed: int = 0,
  teacher_error_rate: float = 0.1,
) -> dict[str, list[Example]]:
  """Disjoint `train`, `validation` and `test` splits of the given sizes."""
  problems = all_problems()
  sizes = {'train': num_train, 'validation': num_validation, 'test': num_test}
  if min(sizes.values()) < 0 or sum(sizes.values()) > len(problems):
    raise ValueError(
      f'split sizes {sizes} must be >= 0 and sum to at most {len(problems)}'
    )
  if not 0 <= teacher_error_rate <= 1:
    raise ValueError(
      f'teacher_error_rate must be in [0, 1], got {teacher_error_rate}'
    )
  rng = np.random.RandomState(seed)
  order = rng.permutation(len(problems)).tolist()
  splits = {}
  start = 0
  for split, size in sizes.items():
    chosen = [problems[i] for i in order[start : start + size]]
    start += size
    num_wrong = math.floor(teacher_error_rate * size + 0.5)
    wrong = set(rng.permutation(size)[:num_wrong].tolist())
    examples = []
    for index, (text, reasoning, answer) in enumerate(chosen):
      teacher = answer
      if index in wrong:  # off by one, never below 1
        teacher += 1 if answer == 1 or rng.randint(2) else -1
      examples.append(
        Example(text, str(answer), f'{reasoning} {teacher}.', str(teacher))
      )
    splits[split] = examples
  return splits


# --------------------------------------------------------------------------
# synthetic_multistep

MAX_INPUT_CHARS = 100
MAX_RATIONALE_CHARS = 100
# Every number of a problem, its steps and its teacher's steps is below this.
MAX_VALUE = 100
MAX_STEP_SLIP = 3
# The most examples `multistep_splits` makes, all splits together: a small
# part of all problems, so drawing distinct ones at random stays quick.
MAX_EXAMPLES = 100_000

# (name, its pronoun); every name at most 4 characters.
MULTISTEP_NAMES = (
  ('Tom', 'He'),
  ('Ann', 'She'),
  ('Sam', 'He'),
  ('Mia', 'She'),
  ('Ben', 'He'),
  ('Eva', 'She'),
  ('Max', 'He'),
  ('Zoe', 'She'),
  ('Leo', 'He'),
  ('Ivy', 'She'),
  ('Omar', 'He'),
  ('Lily', 'She'),
)
# Plural nouns, each at most 7 characters.
MULTISTEP_OBJECTS = (
  'apples',
  'pens',
  'cards',
  'books',
  'coins',
  'shells',
  'stamps',
  'beads',
  'rocks',
  'marbles',
  'buttons',
  'toys',
)

# A step `left op right` whose operands are template numbers or `_`, the
# result of the step before.
_PREVIOUS = '_'
_STEP = re.compile(r'(\d+) ([-+*]) (\d+) = (\d+)')
_OPERATIONS = {
  '+': lambda a, b: a + b,
  '-': lambda a, b: a - b,
  '*': lambda a, b: a * b,
}


@dataclasses.dataclass(frozen=True)
class _Template:
  """A word problem: its text and how to solve it, step by step.

  `text` is a format string over `name`, `pronoun`, `other` (a second name),
  `thing` and the numbers in `ranges`: (number, lowest, highest). Each of
  `steps` is (word, left, op, right), written `<word> <left> <op> <right> =
  <result>.`
  """

  text: str
  ranges: tuple[tuple[str, int, int], ...]
  steps: tuple[tuple[str, str, str, str], ...]


_NUMBER = 1, 9  # the numbers a problem gives
_TIMES = 2, 5  # how many boxes, bags, ...
_TEMPLATES = (
  # Two steps.
  _Template(
    '{name} has {a} {thing}. {pronoun} buys {b} boxes of {c} {thing}. '
    'How many {thing} now?',
    (('a', *_NUMBER), ('b', *_TIMES), ('c', 2, 9)),
    (('Buys', 'b', '*', 'c'), ('Has', 'a', '+', '_')),
  ),
  _Template(
    '{name} has {a} {thing} and gives away {b} bags of {c}. How many are left?',
    (('a', *_NUMBER), ('b', *_TIMES), ('c', *_TIMES)),
    (('Gives', 'b', '*', 'c'), ('Left', 'a', '-', '_')),
  ),
  _Template(
    '{name} has {a} {thing}, gets {b} more, then loses {c}. How many now?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_NUMBER)),
    (('Gets', 'a', '+', 'b'), ('Left', '_', '-', 'c')),
  ),
  _Template(
    '{name} had {a} {thing}, gave away {b}, then found {c}. How many now?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_NUMBER)),
    (('Left', 'a', '-', 'b'), ('Now', '_', '+', 'c')),
  ),
  _Template(
    'A box has {a} red and {b} blue {thing}. How many {thing} are in {c} '
    'boxes?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_TIMES)),
    (('Per box', 'a', '+', 'b'), ('In all', '_', '*', 'c')),
  ),
  _Template(
    '{name} fills {c} bags with {a} {thing} each, then takes {b} from each '
    'bag. How many are left?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_TIMES)),
    (('Per bag', 'a', '-', 'b'), ('In all', '_', '*', 'c')),
  ),
  _Template(
    '{name} has {a} {thing} and gets {b} more. {other} has {c} times as '
    'many. How many has {other}?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_TIMES)),
    (('Has', 'a', '+', 'b'), ('Times', 'c', '*', '_')),
  ),
  _Template(
    '{name} had {a} {thing} and lost {b}. {other} has {c} times as many. '
    'How many has {other}?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_TIMES)),
    (('Left', 'a', '-', 'b'), ('Times', 'c', '*', '_')),
  ),
  # Three steps.
  _Template(
    '{name} has {a} {thing}. {pronoun} buys {b} packs of {c} and gives away '
    '{d}. How many now?',
    (('a', *_NUMBER), ('b', *_TIMES), ('c', 2, 9), ('d', *_NUMBER)),
    (('Buys', 'b', '*', 'c'), ('Has', 'a', '+', '_'), ('Left', '_', '-', 'd')),
  ),
  _Template(
    '{name} puts {a} red and {b} blue {thing} in each of {c} boxes, then '
    'sells {d}. How many are left?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_TIMES), ('d', *_NUMBER)),
    (
      ('Per box', 'a', '+', 'b'),
      ('In all', '_', '*', 'c'),
      ('Left', '_', '-', 'd'),
    ),
  ),
  _Template(
    'Each of {c} boxes had {a} {thing}; {b} were taken from each. {name} '
    'adds {d}. How many now?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_TIMES), ('d', *_NUMBER)),
    (
      ('Per box', 'a', '-', 'b'),
      ('In all', '_', '*', 'c'),
      ('Now', '_', '+', 'd'),
    ),
  ),
  _Template(
    '{name} buys {a} packs of {b} {thing}, gets {c} free, and loses {d}. '
    'How many now?',
    (('a', *_TIMES), ('b', 2, 9), ('c', *_NUMBER), ('d', *_NUMBER)),
    (('Buys', 'a', '*', 'b'), ('Has', '_', '+', 'c'), ('Left', '_', '-', 'd')),
  ),
  _Template(
    'Each box has {a} red and {b} blue {thing}; {c} are taken from each. '
    'How many in {d} boxes?',
    (('a', *_NUMBER), ('b', *_NUMBER), ('c', *_NUMBER), ('d', *_TIMES)),
    (
      ('Per box', 'a', '+', 'b'),
      ('Left', '_', '-', 'c'),
      ('In all', '_', '*', 'd'),
    ),
  ),
)


def rationale_steps(rationale: str) -> list[tuple[str, str]]:
  """(expression, written result) of each step `<a> <op> <b> = <c>`, in order.

  For example, 'Buys 3 * 4 = 12. Has 5 + 12 = 17.' has the steps
  [('3 * 4', '12'), ('5 + 12', '17')].
  """
  return [
    (f'{left} {op} {right}', result)
    for left, op, right, result in _STEP.findall(rationale)
  ]


def _results(
  template: _Template,
  values: dict[str, int],
  slip_step: int = -1,
  slip: int = 0,
) -> list[tuple[int, int, int]] | None:
  """(left, right, written result) of each step; None if a value is out of
  [0, MAX_VALUE). The result of step `slip_step` is written off by `slip`,
  and later steps use it as written."""
  steps = []
  previous = None
  for index, (_, left, op, right) in enumerate(template.steps):
    a = previous if left == _PREVIOUS else values[left]
    b = previous if right == _PREVIOUS else values[right]
    previous = _OPERATIONS[op](a, b) + (slip if index == slip_step else 0)
    if not 0 <= previous < MAX_VALUE:
      return None
    steps.append((a, b, previous))
  return steps


def _rationale(template: _Template, steps: list[tuple[int, int, int]]) -> str:
  return ' '.join(
    f'{word} {a} {op} {b} = {result}.'
    for (word, _, op, _), (a, b, result) in zip(template.steps, steps)
  )


@dataclasses.dataclass(frozen=True)
class _Problem:
  text: str
  template: _Template
  values: dict[str, int]


def _draw_problem(rng: np.random.RandomState) -> _Problem:
  """A problem drawn uniformly: template, names, thing, then numbers whose
  every step stays in [0, MAX_VALUE)."""
  template = _TEMPLATES[rng.randint(len(_TEMPLATES))]
  first = rng.randint(len(MULTISTEP_NAMES))
  second = (first + 1 + rng.randint(len(MULTISTEP_NAMES) - 1)) % len(
    MULTISTEP_NAMES
  )
  name, pronoun = MULTISTEP_NAMES[first]
  thing = MULTISTEP_OBJECTS[rng.randint(len(MULTISTEP_OBJECTS))]
  while True:  # every template accepts a good part of its numbers
    values = {
      number: int(rng.randint(lowest, highest + 1))
      for number, lowest, highest in template.ranges
    }
    if _results(template, values) is not None:
      break
  text = template.text.format(
    name=name,
    pronoun=pronoun,
    other=MULTISTEP_NAMES[second][0],
    thing=thing,
    **values,
  )
  return _Problem(text, template, values)


def _teacher_example(
  problem: _Problem, rng: np.random.RandomState | None
) -> Example:
  """The problem's example; with `rng`, its teacher slips in one step."""
  template, values = problem.template, problem.values
  steps = _results(template, values)
  answer = steps[-1][-1]
  if rng is not None:
    slips = [
      (index, slip)
      for index in range(len(template.steps))
      for slip in range(-MAX_STEP_SLIP, MAX_STEP_SLIP + 1)
      if slip and _results(template, values, index, slip) is not None
    ]
    # Never empty: the last result r in [0, MAX_VALUE) allows r + 1 or r - 1.
    steps = _results(template, values, *slips[rng.randint(len(slips))])
  rationale = _rationale(template, steps)
  if len(problem.text) > MAX_INPUT_CHARS or not problem.text.isascii():
    raise AssertionError(f'input too long or not ASCII: {problem.text!r}')
  if len(rationale) > MAX_RATIONALE_CHARS or not rationale.isascii():
    raise AssertionError(f'rationale too long or not ASCII: {rationale!r}')
  return Example(problem.text, str(answer), rationale, str(steps[-1][-1]))


def _is_count(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@gin.configurable
def multistep_splits(
  num_train: int = 4000,
  num_validation: int = 200,
  num_test: int = 500,
  seed: int = 0,
  teacher_error_rate: float = 0.1,
) -> dict[str, list[Example]]:
  """Disjoint `train`, `validation` and `test` splits of multi-step problems.

  Args:
    num_train: how many examples `train` has.
    num_validation: how many examples `validation` has.
    num_test: how many examples `test` has; the sizes sum to at most
      MAX_EXAMPLES.
    seed: the seed of everything random, in [0, 2**32).
    teacher_error_rate: the teacher is wrong on round(teacher_error_rate ·
      size) examples of each split.

  Returns:
    The splits by name, each a list of examples with distinct inputs.
  """
  sizes = {'train': num_train, 'validation': num_validation, 'test': num_test}
  if not all(_is_count(size) and size >= 0 for size in sizes.values()):
    raise ValueError(f'split sizes {sizes} must be integers >= 0')
  if sum(sizes.values()) > MAX_EXAMPLES:
    raise ValueError(
      f'split sizes {sizes} must sum to at most {MAX_EXAMPLES}, '
      f'not {sum(sizes.values())}'
    )
  if not _is_count(seed) or not 0 <= seed < 2**32:
    raise ValueError(f'seed must be an integer in [0, 2**32), got {seed!r}')
  if not isinstance(teacher_error_rate, numbers.Real) or not (
    0 <= teacher_error_rate <= 1
  ):
    raise ValueError(
      f'teacher_error_rate must be in [0, 1], got {teacher_error_rate!r}'
    )
  problem_rng = np.random.RandomState(seed)
  seen = set()  # membership only: its order never matters
  splits = {}
  for number, split in enumerate(('test', 'validation', 'train')):
    problems = []
    while len(problems) < sizes[split]:
      problem = _draw_problem(problem_rng)
      if problem.text not in seen:
        seen.add(problem.text)
        problems.append(problem)
    teacher_rng = np.random.RandomState([seed, number])
    size = len(problems)
    num_wrong = math.floor(teacher_error_rate * size + 0.5)
    wrong = np.zeros(size, bool)
    wrong[teacher_rng.permutation(size)[:num_wrong]] = True
    splits[split] = [
      _teacher_example(problem, teacher_rng if is_wrong else None)
      for problem, is_wrong in zip(problems, wrong.tolist())
    ]
  return {split: splits[split] for split in ('train', 'validation', 'test')}
