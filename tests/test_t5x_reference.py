"""Parity with the real t5x: tests/testdata/t5x_tiny (see its README).

The checkpoint was written by t5x's train binary; expected.npz holds the
logits, loss, greedy decodes and beam decodes t5x computed from it. Each test
runs with t5x's per-layer modules and with scanned layers (stacked on load).
"""

import functools

from conftest import T5X_TINY_DIR
from conftest import reference_batch
import numerics
import numpy as np
import pytest
import seqio

from dsbs_jax import checkpoint_import
from dsbs_jax import decoding
from dsbs_jax import models
from dsbs_jax import network


@pytest.fixture(params=[False, True], ids=['per_layer', 'scan_layers'])
def config(request, tiny_config):
  """The reference's configuration, with t5x's layers or scanned ones."""
  return tiny_config.replace(scan_layers=request.param)


@pytest.fixture
def params(config, reference_params):
  """The reference's parameters in `config`'s layout."""
  return network.stack_layers(reference_params, config)


def _model(config, **kwargs):
  vocabulary = seqio.ByteVocabulary()
  return models.EncoderDecoderModel(
    network.Transformer(config), vocabulary, vocabulary, **kwargs
  )


def test_both_checkpoint_formats_give_the_expected_logits(config, expected):
  module = network.Transformer(config)
  for name in ('legacy_checkpoint_400', 'orbax_checkpoint_400'):
    params = checkpoint_import.load_params(T5X_TINY_DIR / name, config)
    logits = module.apply(
      {'params': params}, **reference_batch(expected), enable_dropout=False
    )
    # All positions, padding included: our masking is t5x's.
    numerics.assert_close(
      logits, expected['logits'], numerics.OTHER_LIBRARY, what='logits'
    )


def test_loss_matches_t5x(config, expected, params):
  batch = reference_batch(expected)
  batch['decoder_loss_weights'] = (batch['decoder_target_tokens'] > 0).astype(
    np.float32
  )
  loss, metrics = _model(config).loss_fn(params, batch, dropout_rng=None)
  numerics.assert_close(loss, expected['loss'], numerics.OTHER_LIBRARY, 'loss')
  assert (
    metrics['target_tokens'].compute() == batch['decoder_loss_weights'].sum()
  )


def test_greedy_decodes_match_t5x(config, expected, params):
  greedy = functools.partial(decoding.temperature_sample, temperature=0.0)
  model = _model(config, decode_fn=greedy)
  decodes = model.predict_batch(params, reference_batch(expected))
  np.testing.assert_array_equal(decodes, expected['greedy_decodes'])
  texts = [seqio.ByteVocabulary().decode(d.tolist()) for d in decodes]
  assert texts == ['a1', '5 mod 3 = 0', 'a2', '3 mod 3 = 0']  # README's


def test_beam_search_matches_t5x(config, expected, params):
  model = _model(config)  # beam search is the default, as in t5x
  batch = reference_batch(expected)
  best, aux = model.predict_batch_with_aux(params, batch, num_decodes=4)
  np.testing.assert_array_equal(best, expected['beam_decodes'])
  numerics.assert_close(
    aux['scores'], expected['beam_scores'], numerics.OTHER_LIBRARY, 'scores'
  )
  beams, aux = model.predict_batch_with_aux(
    params, batch, num_decodes=4, return_all_decodes=True
  )
  np.testing.assert_array_equal(beams, expected['all_beam_decodes'])
  numerics.assert_close(
    aux['scores'], expected['all_beam_scores'], numerics.OTHER_LIBRARY, 'scores'
  )
