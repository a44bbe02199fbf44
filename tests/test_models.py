"""EncoderDecoderModel: cached decoding against uncached decoding, scoring."""

import functools

import numerics
import numpy as np
import pytest
import seqio

from dsbs_jax import decoding
from dsbs_jax import losses
from dsbs_jax import metrics as metrics_lib
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import trainer as trainer_lib


def _encode(texts, length):
  vocabulary = seqio.ByteVocabulary()
  out = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = vocabulary.encode(text)[: length - 1] + [1]
    out[i, : len(ids)] = ids
  return out


# Inputs of very different lengths in one batch.
_INPUTS = [
  '[label] q5',
  '[rationale] q12',
  '[label] q41 with padding words',
  '[rationale] q3',
]


def _uncached_greedy(module, params, encoder_tokens, length):
  """Argmax decoding that reruns the full network on the whole prefix."""
  decoded = np.zeros((len(encoder_tokens), length), np.int32)
  done = np.zeros(len(encoder_tokens), bool)
  for t in range(length):
    decoder_inputs = np.zeros_like(decoded)
    decoder_inputs[:, 1:] = decoded[:, :-1]
    # Targets only mark which positions are real for the decoder's masks.
    targets = np.ones_like(decoded)
    logits = module.apply(
      {'params': params},
      encoder_tokens,
      decoder_inputs,
      targets,
      enable_dropout=False,
    )
    token = np.where(done, 0, np.argmax(np.asarray(logits[:, t]), -1))
    decoded[:, t] = token
    done |= token == 1
  return decoded


def test_cached_greedy_equals_uncached_argmax(tiny_config, reference_params):
  module = network.Transformer(tiny_config)
  vocabulary = seqio.ByteVocabulary()
  model = models.EncoderDecoderModel(
    module,
    vocabulary,
    vocabulary,
    decode_fn=functools.partial(decoding.temperature_sample, temperature=0.0),
  )
  encoder_tokens = _encode(_INPUTS, 24)
  batch = {
    'encoder_input_tokens': encoder_tokens,
    'decoder_input_tokens': np.zeros((4, 12), np.int32),
  }
  cached = np.asarray(model.predict_batch(reference_params, batch))
  uncached = _uncached_greedy(module, reference_params, encoder_tokens, 12)
  np.testing.assert_array_equal(cached, uncached)
  # The decodes are non-trivial (the reference model answers these).
  assert all((row > 2).sum() >= 2 for row in cached)


def test_cached_step_logits_equal_full_forward(tiny_config, reference_params):
  """Feeding the targets one token at a time through the cache reproduces
  the teacher-forced logits at every position."""
  module = network.Transformer(tiny_config)
  vocabulary = seqio.ByteVocabulary()
  model = models.EncoderDecoderModel(module, vocabulary, vocabulary)
  encoder_tokens = _encode(_INPUTS, 24)
  targets = _encode(['a2', '12 mod 3 = 0', 'a2', '3 mod 3 = 0'], 10)
  decoder_inputs = np.zeros_like(targets)
  decoder_inputs[:, 1:] = targets[:, :-1]
  full = module.apply(
    {'params': reference_params},
    encoder_tokens,
    decoder_inputs,
    np.ones_like(targets),
    enable_dropout=False,
  )
  cache = model._initial_cache(encoder_tokens.shape, targets.shape)
  encoded = module.apply(
    {'params': reference_params},
    encoder_tokens,
    enable_dropout=False,
    method=module.encode,
  )
  for t in range(targets.shape[1]):
    state = decoding.DecodingState(
      cur_index=None,
      sequences=None,
      cur_token=decoder_inputs[:, t : t + 1],
      cache=cache,
    )
    logits, cache = model._compute_logits_from_slice(
      state, reference_params, encoded, encoder_tokens, targets.shape[1]
    )
    numerics.assert_close(logits, full[:, t], what='logits')


def test_score_batch_is_the_negative_summed_cross_entropy(
  tiny_config, reference_params
):
  module = network.Transformer(tiny_config)
  vocabulary = seqio.ByteVocabulary()
  model = models.EncoderDecoderModel(module, vocabulary, vocabulary)
  targets = _encode(['a2', '12 mod 3 = 0', 'a1', 'zz'], 12)
  decoder_inputs = np.zeros_like(targets)
  decoder_inputs[:, 1:] = targets[:, :-1]
  batch = {
    'encoder_input_tokens': _encode(_INPUTS, 24),
    'decoder_input_tokens': decoder_inputs,
    'decoder_target_tokens': targets,
  }
  scores = np.asarray(model.score_batch(reference_params, batch))
  logits = np.asarray(
    module.apply({'params': reference_params}, **batch, enable_dropout=False),
    np.float64,
  )
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  numerics.assert_close(scores, (picked * (targets > 0)).sum(-1), what='scores')
  assert np.all(scores < 0)


def test_label_smoothing_and_z_loss_follow_t5x_definitions():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 3))
  loss, z = losses.token_cross_entropy(
    logits, targets, label_smoothing=0.1, z_loss=1e-4
  )
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  log_p = logits - log_z[..., None]
  soft = np.full(logits.shape, 0.1 / 6)
  np.put_along_axis(soft, targets[..., None], 0.9, -1)
  entropy = -(0.9 * np.log(0.9) + 6 * (0.1 / 6) * np.log(0.1 / 6))
  want = -(soft * log_p).sum(-1) + 1e-4 * log_z**2 - entropy
  numerics.assert_close(loss, want, what='loss')
  numerics.assert_close(z, 1e-4 * log_z**2, what='z-loss')
  # A perfect, confident smoothed prediction costs (almost) nothing.
  perfect = np.log(soft[:1, :1])
  zero, _ = losses.token_cross_entropy(perfect, targets[:1, :1], 0.1)
  assert abs(float(zero[0, 0])) < 1e-5


def test_task_weights_renormalise_alpha_over_the_tasks_present():
  both = losses.task_weights(0.3, {'label': 5.0, 'rationale': 7.0})
  # Both present: alpha and 1 - alpha exactly, as before.
  assert float(both['label']) == np.float32(0.3)
  assert float(both['rationale']) == np.float32(1 - 0.3)
  for alpha in (0.3, 0.5, 1.0):
    label_only = losses.task_weights(alpha, {'label': 5.0, 'rationale': 0.0})
    assert (float(label_only['label']), float(label_only['rationale'])) == (
      1.0,
      0.0,
    )
  rationale_only = losses.task_weights(0.3, {'label': 0.0, 'rationale': 4.0})
  assert float(rationale_only['rationale']) == 1.0
  # A task with weight 0 stays at 0; nothing present gives no loss.
  assert (
    float(losses.task_weights(1.0, {'label': 0, 'rationale': 4})['rationale'])
    == 0
  )
  none = losses.task_weights(0.5, {'label': 0.0, 'rationale': 0.0})
  assert float(none['label']) == float(none['rationale']) == 0.0


def test_label_only_batch_reports_the_label_loss_and_no_nan(
  tiny_config, reference_params
):
  """A validation batch holds label examples only: the loss is the label
  loss (not alpha times it) and the reported metrics have no NaN."""
  vocabulary = seqio.ByteVocabulary()
  model = models.DistillStepByStepModel(
    network.Transformer(tiny_config),
    vocabulary,
    vocabulary,
    loss=losses.DistillStepByStepLoss(alpha=0.3),
  )
  targets = _encode(['7', '12', '3'], 4)
  batch = {
    'encoder_input_tokens': _encode(
      ['[label] a', '[label] bc', '[label] d'], 12
    ),
    'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    'decoder_target_tokens': targets,
    'decoder_task_ids': (targets > 0).astype(np.int32),  # all label task
  }
  loss, metrics = model.loss_fn(reference_params, batch, dropout_rng=None)
  values = trainer_lib.compute_metrics(metrics)
  assert not any(np.isnan(v) for v in values.values()), values
  assert float(loss) == pytest.approx(values['label_loss'], rel=1e-6)
  assert float(loss) > 0
  assert 'label_accuracy' in values
  assert 'rationale_loss' not in values and values['rationale_tokens'] == 0
  # The empty mean is still there, undefined, for whoever computes it.
  assert isinstance(metrics['rationale_loss'], metrics_lib.TaskAverage)
  assert not metrics['rationale_loss'].has_tokens()
