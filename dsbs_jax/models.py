"""Model classes with t5x's interface: loss, evaluation, decoding, scoring.

`EncoderDecoderModel` mirrors `t5x.models.EncoderDecoderModel` (same method
names and arguments) around our `network.Transformer`. `DistillStepByStepModel`
replaces the loss with the two-task loss (`losses.DistillStepByStepLoss`).

Losses may be normalised by quantities of the *global* batch. `loss_fn` takes
them as `normalizers` (default: computed from the batch it is given); a trainer
that splits a batch into microbatches computes `loss_normalizers` once on the
whole batch and passes them to every piece, so the pieces' losses and
gradients add up to the whole batch's exactly.
"""

from collections.abc import Callable
from collections.abc import Mapping
import functools
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import optax
import seqio

from dsbs_jax import decoding
from dsbs_jax import losses
from dsbs_jax import metrics as metrics_lib
from dsbs_jax import two_tasks

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = metrics_lib.Metrics


class EncoderDecoderModel:
  """T5-style encoder-decoder with t5x's `EncoderDecoderModel` interface."""

  FEATURE_CONVERTER_CLS = seqio.EncDecFeatureConverter

  def __init__(
    self,
    module: nn.Module,
    input_vocabulary: seqio.Vocabulary,
    output_vocabulary: seqio.Vocabulary,
    optimizer_def: optax.GradientTransformation | None = None,
    decode_fn: Callable[..., Any] = decoding.beam_search,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: losses.LossNormalizingFactor = None,
  ):
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.optimizer_def = optimizer_def
    self._decode_fn = decode_fn
    self._label_smoothing = label_smoothing
    self._z_loss = z_loss
    self._loss_normalizing_factor = loss_normalizing_factor

  # -- initialisation ------------------------------------------------------

  def get_initial_variables(
    self,
    rng: Array,
    input_shapes: Mapping[str, tuple[int, ...]],
    input_types: Mapping[str, Any] | None = None,
  ):
    """Variables of the module for batches of the given feature shapes."""
    input_types = input_types or {}
    ones = lambda name: jnp.ones(
      input_shapes[name], input_types.get(name, jnp.int32)
    )
    segments = {
      name: ones(name)
      for name in ('encoder_segment_ids', 'decoder_segment_ids')
      if name in input_shapes
    }
    return self.module.init(
      rng,
      ones('encoder_input_tokens'),
      ones('decoder_input_tokens'),
      ones('decoder_input_tokens'),
      **segments,
      enable_dropout=False,
    )

  # -- loss ----------------------------------------------------------------

  def _compute_logits(
    self, params, batch: Batch, dropout_rng: Array | None = None
  ) -> Array:
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
      {'params': params},
      batch['encoder_input_tokens'],
      batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      encoder_segment_ids=batch.get('encoder_segment_ids'),
      decoder_segment_ids=batch.get('decoder_segment_ids'),
      encoder_positions=batch.get('encoder_positions'),
      decoder_positions=batch.get('decoder_positions'),
      enable_dropout=rngs is not None,
      rngs=rngs,
    )

  def loss_normalizers(self, batch: Batch) -> Any:
    """Batch-level divisors of the loss (see the module docstring)."""
    return losses.normalizing_factor(self._loss_normalizing_factor, batch)

  def loss_fn(
    self,
    params,
    batch: Batch,
    dropout_rng: Array | None,
    normalizers: Any = None,
  ) -> tuple[Array, Metrics]:
    """Summed weighted token cross-entropy (t5x's loss) and metrics."""
    if normalizers is None:
      normalizers = self.loss_normalizers(batch)
    logits = self._compute_logits(params, batch, dropout_rng)
    targets = batch['decoder_target_tokens']
    weights = losses.loss_weights(batch)
    loss, _, _ = losses.weighted_cross_entropy(
      logits, targets, weights, self._label_smoothing, self._z_loss, normalizers
    )
    token_loss, z_part = losses.token_cross_entropy(
      logits, targets, self._label_smoothing, self._z_loss
    )
    return loss, metrics_lib.token_metrics(
      logits, targets, weights, token_loss, z_part
    )

  def eval_fn(self, params, batch: Batch) -> tuple[Array, Metrics]:
    return self.loss_fn(params, batch, dropout_rng=None)

  def score_batch(self, params, batch: Batch) -> Array:
    """Log-likelihood of each target sequence (weighted token sum)."""
    logits = self._compute_logits(params, batch)
    token_loss, _ = losses.token_cross_entropy(
      logits, batch['decoder_target_tokens']
    )
    return -jnp.sum(token_loss * losses.loss_weights(batch), axis=-1)

  # -- decoding --------------------------------------------------------------

  def _initial_cache(self, encoder_shape, decoder_shape):
    """Zero key/value cache for `decoder_shape` targets, as t5x builds it."""
    variables = jax.eval_shape(
      functools.partial(self.module.init, decode=True, enable_dropout=False),
      jax.random.PRNGKey(0),
      jnp.ones(encoder_shape, jnp.int32),
      jnp.ones(decoder_shape, jnp.int32),
      jnp.ones(decoder_shape, jnp.int32),
    )
    return jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), variables['cache']
    )

  def _compute_logits_from_slice(
    self,
    state: decoding.DecodingState,
    params,
    encoded: Array,
    encoder_tokens: Array,
    max_decode_length: int,
  ):
    """Next-token logits for one decoding step, updating the cache."""
    token = state.cur_token
    logits, variables = self.module.apply(
      {'params': params, 'cache': state.cache},
      encoded,
      encoder_tokens,
      token,
      token,
      enable_dropout=False,
      decode=True,
      max_decode_length=max_decode_length,
      mutable=['cache'],
      method=self.module.decode,
    )
    return logits[:, 0, :], variables['cache']

  def predict_batch_with_aux(
    self,
    params,
    batch: Batch,
    rng: Array | None = None,
    decoder_params: dict[str, Any] | None = None,
    return_all_decodes: bool = False,
    num_decodes: int = 1,
    prompt_with_targets: bool = False,
  ):
    """Decodes with `decode_fn` (beam search by default) and a kv cache.

    Returns the best decode per example ([batch, length]) and its score, or
    with `return_all_decodes` all `num_decodes` of them sorted by increasing
    score ([batch, num_decodes, length]).
    """
    encoder_tokens = batch['encoder_input_tokens']
    decoder_input_tokens = batch['decoder_input_tokens']
    cache = self._initial_cache(
      encoder_tokens.shape, decoder_input_tokens.shape
    )
    encoded = self.module.apply(
      {'params': params},
      encoder_tokens,
      enable_dropout=False,
      method=self.module.encode,
    )
    tokens_to_logits = functools.partial(
      self._compute_logits_from_slice,
      params=params,
      encoded=decoding.flat_batch_beam_expand(encoded, num_decodes),
      encoder_tokens=decoding.flat_batch_beam_expand(
        encoder_tokens, num_decodes
      ),
      max_decode_length=decoder_input_tokens.shape[1],
    )
    decoder_params = dict(decoder_params or {})
    if rng is not None:
      decoder_params['decode_rng'] = rng
    prompt = (
      decoder_input_tokens
      if prompt_with_targets
      else jnp.zeros_like(decoder_input_tokens)
    )
    decodes, scores = self._decode_fn(
      inputs=prompt,
      cache=cache,
      tokens_to_logits=tokens_to_logits,
      eos_id=self.output_vocabulary.eos_id,
      num_decodes=num_decodes,
      **decoder_params,
    )
    if return_all_decodes:
      return decodes, {'scores': scores}
    return decodes[:, -1, :], {'scores': scores[:, -1]}

  def predict_batch(
    self, params, batch: Batch, rng: Array | None = None, **kwargs
  ) -> Array:
    return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]


class DistillStepByStepModel(EncoderDecoderModel):
  """Encoder-decoder trained on label and rationale tasks with shared weights.

  Needs the batch feature `decoder_task_ids` (1 label, 2 rationale, 0 padding)
  that FEATURE_CONVERTER_CLS adds. The loss is `loss`
  (`losses.DistillStepByStepLoss`: `alpha * L_label + (1 - alpha) *
  L_rationale` with per-task token means over the global batch); `alpha = 1`
  trains the label task alone (standard finetuning or distillation). Where
  one task has no tokens in the global batch (a label-only validation batch)
  the loss is the other task's mean loss, and the absent task's means are not
  reported (`metrics.TaskAverage`).
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

  def loss_normalizers(self, batch: Batch) -> dict[str, Array]:
    return self.loss.normalizers(batch)

  def loss_fn(
    self,
    params,
    batch: Batch,
    dropout_rng: Array | None,
    normalizers: Mapping[str, Array] | None = None,
  ) -> tuple[Array, Metrics]:
    logits = self._compute_logits(params, batch, dropout_rng)
    out = self.loss(
      logits, batch, normalizers, self._label_smoothing, self._z_loss
    )
    metrics = metrics_lib.token_metrics(
      logits,
      batch['decoder_target_tokens'],
      losses.loss_weights(batch),
      out.token_loss,
      out.token_z_loss,
    )
    metrics.update(self.loss.metrics(out))
    return out.loss, metrics
