"""Distilling step-by-step as a model of the real t5x, for `t5x.train`.

`DistillStepByStepModel` is `t5x.models.EncoderDecoderModel` with the two-task
loss `losses.DistillStepByStepLoss`, the same object that our own
`dsbs_jax.models.DistillStepByStepModel` holds, and metrics in t5x's style.
The gin files under gin/t5x/ configure it for `python -m t5x.train` (see
docs/cloud_tpu.md), with `trainer_reporting_present_tasks` as t5x's trainer so
that summaries leave out the means of a task that had no tokens.

t5x is not on PyPI, so this module alone needs it installed from its
repository; importing it without t5x raises an ImportError that says how.
"""

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

from clu import metrics as clu_metrics
import jax

try:
  from t5x import metrics as t5x_metrics
  from t5x import models as t5x_models
  from t5x import trainer as t5x_trainer
except ImportError as e:
  raise ImportError(
    'dsbs_jax.t5x_models needs t5x, which is not on PyPI. Install it from '
    "its repository without its dependencies: pip install 'git+https://"
    "github.com/google-research/t5x' --no-deps; the same for "
    "'git+https://github.com/google/airio' and 'git+https://github.com/"
    "google-research/jestimator'; then pip install grain fiddle "
    'cached_property chex jaxtyping (README.md, "The real t5x").'
  ) from e

from dsbs_jax import losses
from dsbs_jax import metrics as metrics_lib
from dsbs_jax import two_tasks

Array = jax.Array


class DistillStepByStepModel(t5x_models.EncoderDecoderModel):
  """t5x's encoder-decoder trained on label and rationale tasks.

  Needs `decoder_task_ids` in the batch (FEATURE_CONVERTER_CLS provides it).
  The loss is `loss` (`losses.DistillStepByStepLoss`: `alpha * L_label + (1 -
  alpha) * L_rationale`), each term the token mean over that task's target
  tokens in the batch it is given;
  `loss_normalizing_factor` plays no part. Where one task has no tokens (t5x's
  validation batches hold label examples only) the loss is the other task's
  mean loss (`losses.task_weights`). Besides t5x's base metrics (`loss`,
  `accuracy`, timing, ...), it reports `label_loss`, `rationale_loss`,
  `label_accuracy` (`metrics.TaskAverage`: left out of the summaries written
  through `trainer_reporting_present_tasks` when the task had no tokens), and
  the per-step token counts `label_tokens` and `rationale_tokens`.

  t5x's trainer calls `loss_fn` on each microbatch and adds up the gradients,
  so with `Trainer.num_microbatches` set every microbatch is normalised by its
  own token counts, and a microbatch without rationale examples is weighted as
  a label-only batch (our trainer divides by the global batch's counts). For
  the exact global-batch loss keep t5x's default `num_microbatches = None`.
  """

  FEATURE_CONVERTER_CLS = two_tasks.DistillStepByStepFeatureConverter

  def __init__(
    self,
    *args,
    loss: losses.DistillStepByStepLoss | None = None,
    **kwargs,
  ):
    super().__init__(*args, **kwargs)
    self.loss = loss or losses.DistillStepByStepLoss()

  def loss_fn(
    self, params: Any, batch: Mapping[str, Array], dropout_rng: Array | None
  ) -> tuple[Array, dict[str, clu_metrics.Metric]]:
    logits = self._compute_logits(params, batch, dropout_rng)
    out = self.loss(
      logits,
      batch,
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
      self.loss.metrics(
        out, lambda count: t5x_metrics.AveragePerStep(total=count)
      )
    )
    return out.loss, metrics


class _ReportPresentTasks:
  """A t5x `MetricsManager` that leaves out the means of absent tasks.

  t5x writes a summary value for every metric the train or eval step
  returns, and which metrics those are is fixed when the step is traced, so
  the model cannot leave out a task's mean when a batch turns out to have
  none of its tokens. The manager can: before writing, it drops each
  `metrics.TaskAverage` whose count is 0 (`metrics.reported_metrics`). Reading
  those counts waits for the steps behind the summary to finish (a few
  scalars, once per summary). Everything else is the wrapped manager's.
  """

  def __init__(self, manager: t5x_trainer.MetricsManager):
    self._manager = manager

  def __getattr__(self, name: str) -> Any:
    if name == '_manager':  # not set yet (copy, unpickling)
      raise AttributeError(name)
    return getattr(self._manager, name)

  def write_metrics_summary(
    self,
    metrics: Mapping[str, clu_metrics.Metric] | None,
    step: int,
    num_steps: int,
  ) -> Any:
    if metrics is not None:
      metrics = metrics_lib.reported_metrics(metrics)
    return self._manager.write_metrics_summary(metrics, step, num_steps)


def trainer_reporting_present_tasks(
  trainer_cls: Callable[..., t5x_trainer.BaseTrainer] = t5x_trainer.Trainer,
  **kwargs,
) -> t5x_trainer.BaseTrainer:
  """`trainer_cls(**kwargs)` whose summaries report only tasks with tokens.

  For t5x.train's `trainer_cls` (gin/t5x/dsbs.gin binds it, with t5x's
  configured `trainer.Trainer` as `trainer_cls`): its train and
  training_eval summaries leave out `label_loss`, `rationale_loss` and
  `label_accuracy` where that task had no tokens, rather than writing NaN.
  Validation holds label examples only, so its summaries have no
  `rationale_loss` (and `rationale_tokens = 0`). See `metrics.TaskAverage`.
  """
  trainer = trainer_cls(**kwargs)
  trainer.train_metrics_manager = _ReportPresentTasks(
    trainer.train_metrics_manager
  )
  trainer.eval_metrics_managers = {
    name: _ReportPresentTasks(manager)
    for name, manager in trainer.eval_metrics_managers.items()
  }
  return trainer
