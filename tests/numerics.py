"""Tolerances for float32 results computed in another order.

Two float32 computations of the same value agree only up to rounding when
their sums run in different orders: rematerialisation and scanned layers
recompute the forward pass inside the backward, microbatches and shards split
a sum, packing changes the shapes, and t5x or HuggingFace use other kernels.
Which order XLA picks depends on its fusions and on the CPU's vector width
(AVX2, AVX-512, AMX), so a bound of a few ulps that holds on one machine fails
on another. A rounding error is proportional to the magnitudes summed, so the
bound here is proportional to the scale of the compared array itself:

    |actual - desired| <= k * max|desired| + k * |desired|

for each array (each leaf of a tree, so that a small bias vector is not
judged on a large kernel's scale). Claims of exact equality (checkpoint round
trips, resume, packed rows) use `np.testing.assert_array_equal` instead.

With DSBS_NUMERICS_LOG set to a file, every comparison appends one JSON line
(the test, what was compared, the error relative to the scale and the k it
was held to). `python tests/numerics.py FILE` lists the largest error of each
test against its k: the margin to check before and after a change to the
network or the trainer, also with XLA's instruction set capped
(docs/numerics.md says how).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

# One float32 computation reordered: the same operations on the same values.
# About 80 ulps of the array's largest value; the reorderings seen on CPUs
# stay within a few (docs/numerics.md has the measured margins).
REORDERED = 1e-5
# The same mathematics through another library's kernels (t5x, HuggingFace):
# its own reductions, its own softmax and norm, a float32 logit projection.
OTHER_LIBRARY = 1e-5
# A few optimizer steps of a reordered computation: rounding differences in
# the gradients pass through the update rule and compound over the steps.
TRAINED = 1e-5
# bfloat16 computation (or bfloat16-rounded weights) against float32: 8
# significant bits, 2**-9 per rounding, over every layer of the tiny models.
BFLOAT16 = 0.03

_LOG_ENV = 'DSBS_NUMERICS_LOG'


def relative_error(actual, desired) -> float:
  """max |actual - desired| / max |desired| over one array (0 for zeros)."""
  actual = np.asarray(actual, np.float64)
  desired = np.asarray(desired, np.float64)
  if actual.shape != desired.shape:
    raise AssertionError(f'shapes differ: {actual.shape} != {desired.shape}')
  scale = np.max(np.abs(desired), initial=0.0)
  difference = np.max(np.abs(actual - desired), initial=0.0)
  if scale == 0:
    return 0.0 if difference == 0 else float('inf')
  return float(difference / scale)


def tree_relative_error(actual, desired) -> float:
  """The largest `relative_error` over the leaves of two matching trees."""
  if jax.tree.structure(actual) != jax.tree.structure(desired):
    raise AssertionError(
      f'trees differ: {jax.tree.structure(actual)} != '
      f'{jax.tree.structure(desired)}'
    )
  return max(
    (
      relative_error(a, d)
      for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired))
    ),
    default=0.0,
  )


def _log(what: str, error: float, k: float) -> None:
  path = os.environ.get(_LOG_ENV)
  if not path:
    return
  test = os.environ.get('PYTEST_CURRENT_TEST', '?').rsplit(' (', 1)[0]
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(dict(test=test, what=what, error=error, k=k)) + '\n')


def assert_close(actual, desired, k: float = REORDERED, what: str = '') -> None:
  """Asserts |actual - desired| <= k * (max|desired| + |desired|)."""
  actual = np.asarray(actual, np.float64)
  desired = np.asarray(desired, np.float64)
  _log(what, relative_error(actual, desired), k)
  scale = np.max(np.abs(desired), initial=0.0)
  np.testing.assert_allclose(
    actual, desired, rtol=k, atol=k * scale, err_msg=what
  )


def assert_trees_close(
  actual, desired, k: float = REORDERED, what: str = ''
) -> None:
  """`assert_close` on every pair of leaves, each on its own scale."""
  if jax.tree.structure(actual) != jax.tree.structure(desired):
    raise AssertionError(
      f'{what}: trees differ: {jax.tree.structure(actual)} != '
      f'{jax.tree.structure(desired)}'
    )
  _log(what, tree_relative_error(actual, desired), k)
  flat = jax.tree_util.tree_flatten_with_path(desired)[0]
  for (path, d), a in zip(flat, jax.tree.leaves(actual)):
    d = np.asarray(d, np.float64)
    np.testing.assert_allclose(
      np.asarray(a, np.float64),
      d,
      rtol=k,
      atol=k * np.max(np.abs(d), initial=0.0),
      err_msg=f'{what} {jax.tree_util.keystr(path)}',
    )


def _report(path: str) -> None:
  """Per test and comparison: the largest error seen and its share of k."""
  worst = {}
  with open(path, encoding='utf-8') as f:
    for line in f:
      row = json.loads(line)
      key = (row['test'], row['what'])
      if key not in worst or row['error'] > worst[key]['error']:
        worst[key] = row
  print('| test | compared | largest error / scale | k | share of k |')
  print('| --- | --- | ---: | ---: | ---: |')
  for (test, what), row in sorted(worst.items()):
    share = row['error'] / row['k']
    print(
      f'| {test} | {what} | {row["error"]:.2e} | {row["k"]:.0e} | {share:.3f} |'
    )


if __name__ == '__main__':
  _report(sys.argv[1])
