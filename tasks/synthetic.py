"""`synthetic`: arithmetic word problems with a simulated teacher, made here.

It lets the whole pipeline run with no download: inputs are short (at most
51 bytes, so with the `[rationale] ` prefix and EOS they fit in 64 tokens of a
byte vocabulary), and a tiny T5 learns them in a few hundred CPU steps. Each
problem adds or subtracts two one-digit numbers:

    input:     "Tom has 3 apples and gets 4 more. How many now?"
    rationale: "Gets more, so add: 3 + 4 = 7."
    label:     "7"

The simulated teacher is wrong on `round(teacher_error_rate · n)` examples of
every split: its label is off by one and its rationale ends in that wrong
number, so the `gt` and `llm` label sources differ exactly there. The splits
are disjoint samples of all possible problems, deterministic from the seed.
"""

from __future__ import annotations

import itertools
import math

import gin
import numpy as np

from dsbs_tasks.sources import Example

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
