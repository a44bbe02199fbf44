"""Parity with the real t5x: tests/testdata/t5x_tiny (see its README).

The checkpoint was written by t5x's train binary; expected.npz holds the
logits, loss, greedy decodes and beam decodes t5x computed from it.
"""

import functools

from conftest import T5X_TINY_DIR
from conftest import reference_batch
import numpy as np
import seqio

from dsbs_jax import checkpoint_import
from dsbs_jax import decoding
from dsbs_jax import models
from dsbs_jax import network


def _model(config, **kwargs):
  vocabulary = seqio.ByteVocabulary()
  return models.EncoderDecoderModel(
    network.Transformer(config), vocabulary, vocabulary, **kwargs
  )


def test_both_checkpoint_formats_give_the_expected_logits(
  tiny_config, expected
):
  module = network.Transformer(tiny_config)
  for name in ('legacy_checkpoint_400', 'orbax_checkpoint_400'):
    params = checkpoint_import.load_params(T5X_TINY_DIR / name, tiny_config)
    logits = module.apply(
      {'params': params}, **reference_batch(expected), enable_dropout=False
    )
    # All positions, padding included: our masking is t5x's.
    np.testing.assert_allclose(logits, expected['logits'], atol=1e-4, rtol=0)


def test_loss_matches_t5x(tiny_config, expected, reference_params):
  batch = reference_batch(expected)
  batch['decoder_loss_weights'] = (batch['decoder_target_tokens'] > 0).astype(
    np.float32
  )
  loss, metrics = _model(tiny_config).loss_fn(
    reference_params, batch, dropout_rng=None
  )
  np.testing.assert_allclose(loss, expected['loss'], rtol=1e-5)
  assert (
    metrics['target_tokens'].compute() == batch['decoder_loss_weights'].sum()
  )


def test_greedy_decodes_match_t5x(tiny_config, expected, reference_params):
  greedy = functools.partial(decoding.temperature_sample, temperature=0.0)
  model = _model(tiny_config, decode_fn=greedy)
  decodes = model.predict_batch(reference_params, reference_batch(expected))
  np.testing.assert_array_equal(decodes, expected['greedy_decodes'])
  texts = [seqio.ByteVocabulary().decode(d.tolist()) for d in decodes]
  assert texts == ['a1', '5 mod 3 = 0', 'a2', '3 mod 3 = 0']  # README's


def test_beam_search_matches_t5x(tiny_config, expected, reference_params):
  model = _model(tiny_config)  # beam search is the default, as in t5x
  batch = reference_batch(expected)
  best, aux = model.predict_batch_with_aux(
    reference_params, batch, num_decodes=4
  )
  np.testing.assert_array_equal(best, expected['beam_decodes'])
  np.testing.assert_allclose(
    aux['scores'], expected['beam_scores'], rtol=1e-5, atol=1e-5
  )
  beams, aux = model.predict_batch_with_aux(
    reference_params, batch, num_decodes=4, return_all_decodes=True
  )
  np.testing.assert_array_equal(beams, expected['all_beam_decodes'])
  np.testing.assert_allclose(
    aux['scores'], expected['all_beam_scores'], rtol=1e-5, atol=1e-5
  )
