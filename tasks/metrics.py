"""seqio metric functions `(targets, predictions) -> {"accuracy": fraction}`.

Accuracy is a fraction in [0, 1] (the reference reports the same fraction).
Targets are the ground-truth labels; predictions the decoded label task.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

from dsbs_tasks import arithmetic

# Equations that differ only in float rounding, e.g. (10/3)*3 and 10, are equal.
RELATIVE_TOLERANCE = 1e-6
ABSOLUTE_TOLERANCE = 1e-6


def _check(targets: Sequence[str], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
      f'{len(targets)} targets but {len(predictions)} predictions'
    )
  if not targets:
    raise ValueError('no targets to score')


def accuracy(
  targets: Sequence[str], predictions: Sequence[str]
) -> dict[str, float]:
  """Exact match after stripping surrounding whitespace."""
  _check(targets, predictions)
  hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions))
  return {'accuracy': hits / len(targets)}


def equations_equal(target: str, prediction: str) -> bool:
  """Both have a value (dsbs_tasks.arithmetic) and the values agree closely."""
  expected = arithmetic.value_or_none(target)
  predicted = arithmetic.value_or_none(prediction)
  if expected is None or predicted is None:
    return False
  return math.isclose(
    expected, predicted, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE
  )


def equation_accuracy(
  targets: Sequence[str], predictions: Sequence[str]
) -> dict[str, float]:
  """svamp: the fraction of predicted equations with the target's value."""
  _check(targets, predictions)
  hits = sum(equations_equal(t, p) for t, p in zip(targets, predictions))
  return {'accuracy': hits / len(targets)}
