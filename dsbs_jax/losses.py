"""Loss functions shared by our models and the real-t5x model subclass.

Token cross-entropy follows t5x (`t5x.losses`): optional label smoothing
(reported relative to the smoothed target's entropy, so a perfect prediction
scores 0) and z-loss `z_loss * logsumexp(logits)**2`.

The distilling step-by-step loss (docs/design.md, "The loss") is
`alpha * L_label + (1 - alpha) * L_rationale`, each term the token mean over
that task's target tokens in the *global* batch; when one task has no tokens
there, the loss is the other's mean loss (`task_weights`). Callers that split
a batch (microbatches, data-parallel shards) pass the global token counts as
`normalizers`, so summing the pieces' losses gives the global loss exactly.
`DistillStepByStepLoss` holds alpha, that reduction and the metrics it
reports; both model classes use it.
"""

from collections.abc import Callable
from collections.abc import Mapping
import dataclasses
from typing import NamedTuple

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp

from dsbs_jax import metrics as metrics_lib
from dsbs_jax import two_tasks

Array = jax.Array


# t5x's special loss normalizing factors we support (by name, as in gin).
NUM_REAL_TARGET_TOKENS = 'NUM_REAL_TARGET_TOKENS'
NUM_TOTAL_TARGET_TOKENS = 'NUM_TOTAL_TARGET_TOKENS'
LossNormalizingFactor = float | int | str | None


def token_cross_entropy(
  logits: Array,
  targets: Array,
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
) -> tuple[Array, Array]:
  """Per-token cross-entropy (including z-loss) and the z-loss part alone.

  Computed in float32 whatever the logits' dtype.
  """
  logits = logits.astype(jnp.float32)
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  # Entropy of the smoothed target distribution (0 without smoothing).
  normalizing_constant = -(
    confidence * jnp.log(confidence)
    + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20)
  )
  soft_targets = (
    jax.nn.one_hot(targets, vocab_size) * (confidence - low_confidence)
    + low_confidence
  )
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  log_softmax = logits - log_z
  z_part = z_loss * jnp.square(log_z[..., 0])
  loss = -jnp.sum(soft_targets * log_softmax, axis=-1) + z_part
  return loss - normalizing_constant, z_part


def loss_weights(batch: Mapping[str, Array]) -> Array:
  """`decoder_loss_weights` when present, else the non-padding targets."""
  if 'decoder_loss_weights' in batch:
    return batch['decoder_loss_weights'].astype(jnp.float32)
  return (batch['decoder_target_tokens'] > 0).astype(jnp.float32)


def normalizing_factor(
  factor: LossNormalizingFactor, batch: Mapping[str, Array]
) -> Array | None:
  """The divisor t5x applies to summed token losses, from the global batch."""
  if factor is None:
    return None
  if factor == NUM_REAL_TARGET_TOKENS:
    return jnp.sum(loss_weights(batch))
  if factor == NUM_TOTAL_TARGET_TOKENS:
    return jnp.asarray(batch['decoder_target_tokens'].size, jnp.float32)
  if isinstance(factor, str):
    raise ValueError(
      f'Unknown loss_normalizing_factor {factor!r}; use a number, '
      f'{NUM_REAL_TARGET_TOKENS!r} or {NUM_TOTAL_TARGET_TOKENS!r}.'
    )
  return jnp.asarray(factor, jnp.float32)


def weighted_cross_entropy(
  logits: Array,
  targets: Array,
  weights: Array,
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
  normalizer: Array | None = None,
) -> tuple[Array, Array, Array]:
  """t5x's `compute_weighted_cross_entropy`: (loss, z_loss, weight sum)."""
  loss, z_part = token_cross_entropy(logits, targets, label_smoothing, z_loss)
  loss, z_part = loss * weights, z_part * weights
  if normalizer is not None:
    loss, z_part = loss / normalizer, z_part / normalizer
  return jnp.sum(loss), jnp.sum(z_part), jnp.sum(weights)


def task_token_counts(weights: Array, task_ids: Array) -> dict[str, Array]:
  """Weighted target-token count of each task: the per-task normalizers."""
  return {
    name: jnp.sum(weights * (task_ids == task))
    for task, name in two_tasks.TASK_NAMES.items()
  }


def task_weights(alpha: float, counts: Mapping[str, Array]) -> dict[str, Array]:
  """The weight of each task's mean loss: alpha and 1 - alpha, renormalised
  over the tasks present in the global batch.

  With both tasks present these are `alpha` and `1 - alpha` exactly. A task
  with no tokens has no mean loss; the tasks present then share the whole
  weight in the ratio alpha : (1 - alpha), so the loss is their mean loss: a
  label-only batch (validation and test splits, finetune and distill runs)
  has loss = L_label, not alpha * L_label. All weights are 0 when no task
  with a non-zero weight is present. The weights depend on the token counts
  only, never on the parameters.
  """
  label = counts['label'] > 0
  rationale = counts['rationale'] > 0
  weights = {'label': alpha * label, 'rationale': (1.0 - alpha) * rationale}
  total = weights['label'] + weights['rationale']
  # Both present: the weights as given (their float sum may be off 1 in the
  # last bit). One present: w / w, exactly 1 (or 0 for a zero weight).
  scale = jnp.where(
    label & rationale, 1.0, 1.0 / jnp.where(total > 0, total, 1.0)
  )
  return {name: weight * scale for name, weight in weights.items()}


def task_metric_sums(
  logits: Array,
  targets: Array,
  token_loss: Array,
  weights: Array,
  task_ids: Array,
) -> dict[str, tuple[Array, Array]]:
  """(total, count) of each task's mean loss, and of label token accuracy.

  Totals and counts add up across microbatches and shards, so any metric
  type built from them (clu `Average`) merges exactly.
  """
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  sums = {}
  for task, name in two_tasks.TASK_NAMES.items():
    task_weight = weights * (task_ids == task)
    sums[f'{name}_loss'] = (
      jnp.sum(token_loss * task_weight),
      jnp.sum(task_weight),
    )
  label = weights * (task_ids == two_tasks.LABEL_TASK)
  sums['label_accuracy'] = (jnp.sum(correct * label), jnp.sum(label))
  return sums


class TwoTaskLoss(NamedTuple):
  """The two-task loss of a batch and what its metrics are made of."""

  loss: Array  # alpha * L_label + (1 - alpha) * L_rationale
  z_loss: Array  # the z-loss share of `loss`
  token_loss: Array  # per-token cross-entropy, z-loss included
  token_z_loss: Array  # per-token z-loss
  metric_sums: dict[str, tuple[Array, Array]]  # see task_metric_sums


@dataclasses.dataclass(frozen=True)
class DistillStepByStepLoss:
  """`alpha * L_label + (1 - alpha) * L_rationale`, its reduction and metrics.

  The one definition that both model classes hold (`models` and
  `t5x_models.DistillStepByStepModel`, gin: `loss =
  @losses.DistillStepByStepLoss()`). Each term is the token mean over that
  task's target tokens in the *global* batch: `normalizers` are the global
  per-task token counts, which a trainer that splits the batch computes once
  and passes to every piece. A task absent from the batch has term 0, and
  the present task's loss is weighted 1 (`task_weights`). Another weighting
  of the two means is a subclass that overrides `task_weights`.
  """

  alpha: float = 0.5

  def normalizers(self, batch: Mapping[str, Array]) -> dict[str, Array]:
    """The per-task token counts of `batch`: pass the global batch's."""
    return task_token_counts(loss_weights(batch), batch['decoder_task_ids'])

  def task_weights(self, counts: Mapping[str, Array]) -> dict[str, Array]:
    """The weight of each task's mean loss, from the global token counts."""
    return task_weights(self.alpha, counts)

  def _weighted_means(self, token_values, weights, task_ids, counts) -> Array:
    task_weight = self.task_weights(counts)
    total = 0.0
    for task, name in two_tasks.TASK_NAMES.items():
      task_sum = jnp.sum(token_values * weights * (task_ids == task))
      total += task_weight[name] * task_sum / jnp.maximum(counts[name], 1.0)
    return total

  def __call__(
    self,
    logits: Array,
    batch: Mapping[str, Array],
    normalizers: Mapping[str, Array] | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
  ) -> TwoTaskLoss:
    """The loss of a batch with `decoder_task_ids`, from its logits;
    `normalizers` default to the batch's own token counts."""
    targets = batch['decoder_target_tokens']
    weights = loss_weights(batch)
    task_ids = batch['decoder_task_ids']
    if normalizers is None:
      normalizers = self.normalizers(batch)
    token_loss, token_z_loss = token_cross_entropy(
      logits, targets, label_smoothing, z_loss
    )
    return TwoTaskLoss(
      self._weighted_means(token_loss, weights, task_ids, normalizers),
      self._weighted_means(token_z_loss, weights, task_ids, normalizers),
      token_loss,
      token_z_loss,
      task_metric_sums(logits, targets, token_loss, weights, task_ids),
    )

  def metrics(
    self,
    out: TwoTaskLoss,
    tokens_metric: Callable[[Array], clu_metrics.Metric] = metrics_lib.Sum,
  ) -> dict[str, clu_metrics.Metric]:
    """Each task's means (`metrics.TaskAverage`: reported only when the task
    had tokens) and token count (`<task>_tokens`, as `tokens_metric`)."""
    metrics = {
      name: metrics_lib.TaskAverage(total=total, count=count)
      for name, (total, count) in out.metric_sums.items()
    }
    for name in two_tasks.TASK_NAMES.values():
      metrics[f'{name}_tokens'] = tokens_metric(
        out.metric_sums[f'{name}_loss'][1]
      )
    return metrics
