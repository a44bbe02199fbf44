"""Distilling step-by-step as a model of the real t5x, for `t5x.train`.

`DistillStepByStepModel` is `t5x.models.EncoderDecoderModel` with the two-task
loss of DESIGN.md §1, computed by the same functions as our own
`dsbs_jax.models.DistillStepByStepModel`, and metrics in t5x's style. The gin
files under gin/t5x/ configure it for `python -m t5x.train` (see
docs/cloud_tpu.md).

t5x is not on PyPI, so this module alone needs it installed from its
repository; importing it without t5x raises an ImportError that says how.
"""

from collections.abc import Mapping
from typing import Any

from clu import metrics as clu_metrics
import jax

try:
  from t5x import metrics as t5x_metrics
  from t5x import models as t5x_models
except ImportError as e:
  raise ImportError(
    'dsbs_jax.t5x_models needs t5x, which is not on PyPI. Install it from '
    "its repository: pip install 'git+https://github.com/google-research/"
    "t5x' (or git clone it and pip install -e the clone)."
  ) from e

from dsbs_jax import losses
from tasks import feature_converters

Array = jax.Array


class DistillStepByStepModel(t5x_models.EncoderDecoderModel):
  """t5x's encoder-decoder trained on label and rationale tasks.

  Needs `decoder_task_ids` in the batch (FEATURE_CONVERTER_CLS provides it).
  The loss is `alpha * L_label + (1 - alpha) * L_rationale`, each term the
  token mean over that task's target tokens in the batch it is given;
  `loss_normalizing_factor` plays no part. Besides t5x's base metrics (`loss`,
  `accuracy`, timing, ...), it reports `label_loss`, `rationale_loss`,
  `label_accuracy`, and the per-step token counts `label_tokens` and
  `rationale_tokens`.

  t5x's trainer calls `loss_fn` on each microbatch and adds up the gradients,
  so with `Trainer.num_microbatches` set every microbatch is normalised by its
  own token counts (our trainer divides by the global batch's). For the exact
  global-batch normalisation keep t5x's default `num_microbatches = None`.
  """

  FEATURE_CONVERTER_CLS = feature_converters.DistillStepByStepFeatureConverter

  def __init__(self, *args, alpha: float = 0.5, **kwargs):
    super().__init__(*args, **kwargs)
    self.alpha = alpha

  def loss_fn(
    self, params: Any, batch: Mapping[str, Array], dropout_rng: Array | None
  ) -> tuple[Array, dict[str, clu_metrics.Metric]]:
    logits = self._compute_logits(params, batch, dropout_rng)
    out = losses.distill_step_by_step_from_logits(
      logits,
      batch,
      self.alpha,
      label_smoothing=self._label_smoothing,
      z_loss=self._z_loss,
    )
    # t5x's cross_ent_loss is loss - z_loss: pass the z-loss share of `loss`.
    metrics = dict(
      self._compute_metrics(
        logits=logits,
        targets=batch['decoder_target_tokens'],
        mask=losses.loss_weights(batch),
        loss=out.loss,
        z_loss=out.z_loss,
      )
    )
    metrics.update(
      {
        name: clu_metrics.Average(total=total, count=count)
        for name, (total, count) in out.metric_sums.items()
      }
    )
    metrics['label_tokens'] = t5x_metrics.AveragePerStep(
      total=out.metric_sums['label_loss'][1]
    )
    metrics['rationale_tokens'] = t5x_metrics.AveragePerStep(
      total=out.metric_sums['rationale_loss'][1]
    )
    return out.loss, metrics
