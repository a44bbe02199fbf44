"""Training metrics that merge exactly across microbatches and shards.

Every metric a model's `loss_fn` returns is a clu metric built from sums
(`Sum`, clu's `Average`), so a trainer that splits a batch merges the pieces'
metrics into the whole batch's. `TaskAverage` is the mean over one task's
tokens, which is left out of what is reported (`reported_metrics`) when that
task had none.
"""

from collections.abc import Mapping
from typing import Any

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Metrics = dict[str, clu_metrics.Metric]


@flax.struct.dataclass
class Sum(clu_metrics.Metric):
  """A total that adds up across microbatches (clu has no such metric)."""

  total: Array

  def merge(self, other: 'Sum') -> 'Sum':
    return type(self)(self.total + other.total)

  def compute(self) -> Array:
    return self.total


@flax.struct.dataclass
class TaskAverage(clu_metrics.Average):
  """A mean over one task's target tokens (`label_loss`, `rationale_loss`,
  `label_accuracy`), reported only when that task had tokens.

  A batch, or all the batches behind one summary, may hold no tokens of a
  task: validation and test splits hold label examples only, and finetune and
  distill runs train on the label task alone. The mean over no tokens is
  undefined, and any number put in its place misleads: clu's `Average` gives
  NaN (and a warning), which reads as divergence and breaks dashboards and
  alerts; 0 would read as a perfect loss. So such a metric is left out of
  what is reported (`reported_metrics`): our trainer's `compute_metrics` and,
  for t5x's summaries, `dsbs_jax.t5x_models.trainer_reporting_present_tasks`
  go through it. The task's token count (`label_tokens`, `rationale_tokens`)
  is always reported, so a 0 there says why a mean is missing. `compute()`
  itself is clu's: NaN for an empty count.
  """

  def has_tokens(self) -> bool:
    """Whether the count is positive (needs host values, or syncs)."""
    return bool(np.all(np.asarray(jax.device_get(self.count)) > 0))


def reported_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """`metrics` without the `TaskAverage`s of tasks that had no tokens."""
  return {
    name: metric
    for name, metric in metrics.items()
    if not isinstance(metric, TaskAverage) or metric.has_tokens()
  }


def _mean(values: Array, weights: Array) -> clu_metrics.Average:
  """A weighted mean that merges exactly across microbatches."""
  return clu_metrics.Average(
    total=jnp.sum(values * weights), count=jnp.sum(weights)
  )


def token_metrics(
  logits: Array,
  targets: Array,
  weights: Array,
  token_loss: Array,
  z_part: Array,
) -> Metrics:
  """Per-token accuracy and losses, and padding statistics."""
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {
    'accuracy': _mean(correct, weights),
    'cross_ent_loss_per_token': _mean(token_loss - z_part, weights),
    'z_loss_per_token': _mean(z_part, weights),
    'nonpadding_fraction': _mean(
      (targets > 0).astype(jnp.float32), jnp.ones_like(weights)
    ),
    'target_tokens': Sum(jnp.sum(weights)),
  }
