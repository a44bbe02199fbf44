"""Network behaviour without a checkpoint: packing, padding, logical axes."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numerics
import numpy as np
import pytest

from dsbs_jax import network


def _init(config, batch):
  module = network.Transformer(config)
  variables = module.init(
    jax.random.PRNGKey(0),
    batch['encoder_input_tokens'],
    batch['decoder_input_tokens'],
    batch['decoder_target_tokens'],
    enable_dropout=False,
  )
  return module, nn.unbox(variables['params'])


def _example(rng, in_len, out_len, vocab):
  inputs = rng.integers(3, vocab, in_len)
  targets = rng.integers(3, vocab, out_len)
  return inputs, targets


def _batch(examples, in_width, out_width):
  """Padded, unpacked batch; decoder inputs are targets shifted right."""
  n = len(examples)
  enc = np.zeros((n, in_width), np.int32)
  tgt = np.zeros((n, out_width), np.int32)
  for i, (inputs, targets) in enumerate(examples):
    enc[i, : len(inputs)] = inputs
    tgt[i, : len(targets)] = targets
  dec = np.zeros_like(tgt)
  dec[:, 1:] = tgt[:, :-1]
  return {
    'encoder_input_tokens': enc,
    'decoder_target_tokens': tgt,
    'decoder_input_tokens': dec,
  }


@pytest.mark.parametrize(
  'activations,tied', [(('gelu', 'linear'), False), (('relu',), True)]
)
def test_packed_equals_unpacked(tiny_config, activations, tied):
  config = tiny_config.replace(
    mlp_activations=activations, logits_via_embedding=tied
  )
  rng = np.random.default_rng(0)
  examples = [
    _example(rng, 5, 3, 384),
    _example(rng, 7, 6, 384),
    _example(rng, 3, 4, 384),
  ]
  unpacked = _batch(examples, 8, 8)
  module, params = _init(config, unpacked)
  reference = module.apply({'params': params}, **unpacked, enable_dropout=False)

  # All three examples packed into one row (seqio's packed layout: the
  # decoder input of each segment starts from 0, not the previous eos).
  enc, tgt, dec, enc_seg, dec_seg = ([] for _ in range(5))
  for i, (inputs, targets) in enumerate(examples, start=1):
    enc += list(inputs)
    enc_seg += [i] * len(inputs)
    tgt += list(targets)
    dec += [0] + list(targets[:-1])
    dec_seg += [i] * len(targets)
  width = 20
  pad = lambda xs: np.array([xs + [0] * (width - len(xs))], np.int32)
  packed_logits = module.apply(
    {'params': params},
    pad(enc),
    pad(dec),
    pad(tgt),
    encoder_segment_ids=pad(enc_seg),
    decoder_segment_ids=pad(dec_seg),
    enable_dropout=False,
  )[0]

  offset = 0
  for i, (_, targets) in enumerate(examples):
    got = packed_logits[offset : offset + len(targets)]
    numerics.assert_close(got, reference[i, : len(targets)], what='logits')
    offset += len(targets)


@pytest.mark.slow  # One compile per example length.
def test_mixed_lengths_match_single_examples(tiny_config):
  rng = np.random.default_rng(1)
  examples = [
    _example(rng, 2, 5, 384),
    _example(rng, 9, 2, 384),
    _example(rng, 6, 7, 384),
  ]
  batch = _batch(examples, 12, 10)
  module, params = _init(tiny_config, batch)
  batched = module.apply({'params': params}, **batch, enable_dropout=False)
  for i, (inputs, targets) in enumerate(examples):
    alone = _batch([(inputs, targets)], len(inputs), len(targets))
    single = module.apply({'params': params}, **alone, enable_dropout=False)
    numerics.assert_close(batched[i, : len(targets)], single[0], what='logits')


def test_dropout_is_random_only_when_enabled(tiny_config):
  config = tiny_config.replace(dropout_rate=0.3)
  rng = np.random.default_rng(2)
  batch = _batch([_example(rng, 6, 6, 384)], 6, 6)
  module, params = _init(config, batch)
  apply = functools.partial(module.apply, {'params': params}, **batch)
  a = apply(enable_dropout=True, rngs={'dropout': jax.random.PRNGKey(1)})
  b = apply(enable_dropout=True, rngs={'dropout': jax.random.PRNGKey(2)})
  c = apply(enable_dropout=False)
  d = apply(enable_dropout=False)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(c, d)


def test_every_parameter_has_logical_axes(tiny_config):
  batch = _batch([([5, 6], [7, 8])], 4, 4)
  module = network.Transformer(tiny_config)
  variables = jax.eval_shape(
    functools.partial(module.init, enable_dropout=False),
    jax.random.PRNGKey(0),
    batch['encoder_input_tokens'],
    batch['decoder_input_tokens'],
    batch['decoder_target_tokens'],
  )
  specs = nn.get_partition_spec(variables['params'])
  flat = jax.tree_util.tree_flatten_with_path(
    specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )[0]
  known = {
    'vocab',
    'embed',
    'mlp',
    'heads',
    'kv',
    'joined_kv',
    'relpos_buckets',
  }
  for path, spec in flat:
    name = jax.tree_util.keystr(path)
    assert len(spec) in (1, 2) and set(spec) <= known, (name, spec)
  by_name = {jax.tree_util.keystr(p): tuple(s) for p, s in flat}
  assert by_name["['token_embedder']['embedding']"] == ('vocab', 'embed')
  assert by_name["['encoder']['layers_0']['attention']['query']['kernel']"] == (
    'embed',
    'joined_kv',
  )
  assert by_name["['decoder']['logits_dense']['kernel']"] == ('embed', 'vocab')


def test_bfloat16_computation_keeps_float32_params(tiny_config):
  config = tiny_config.replace(dtype=jnp.bfloat16)
  rng = np.random.default_rng(3)
  batch = _batch([_example(rng, 5, 5, 384)], 5, 5)
  module, params = _init(config, batch)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits_bf16 = module.apply({'params': params}, **batch, enable_dropout=False)
  logits_f32 = network.Transformer(tiny_config).apply(
    {'params': params}, **batch, enable_dropout=False
  )
  # Output projection stays in float32, as in t5x; values agree roughly.
  assert logits_bf16.dtype == jnp.float32
  numerics.assert_close(logits_bf16, logits_f32, numerics.BFLOAT16, 'logits')


@pytest.mark.parametrize(
  'activations,tied', [(('gelu', 'linear'), False), (('relu',), True)]
)
@pytest.mark.slow  # Eight compiles of a forward and backward pass.
@pytest.mark.parametrize('policy', ['full', 'minimal'])
def test_remat_policies_change_no_value(tiny_config, activations, tied, policy):
  """Rematerialisation recomputes what it does not keep: logits, loss and
  gradients (so every update) equal the plain network's, for T5.1.1 and
  T5 1.0 shapes, with dropout on (the same random masks) and off."""
  config = tiny_config.replace(
    mlp_activations=activations, logits_via_embedding=tied, dropout_rate=0.1
  )
  rng = np.random.default_rng(3)
  batch = _batch([_example(rng, 7, 5, 384), _example(rng, 4, 6, 384)], 8, 6)
  _, params = _init(config, batch)

  def loss_and_logits(config, params, enable_dropout):
    logits = network.Transformer(config).apply(
      {'params': params},
      **batch,
      enable_dropout=enable_dropout,
      rngs={'dropout': jax.random.PRNGKey(5)},
    )
    targets = jax.nn.one_hot(batch['decoder_target_tokens'], 384)
    loss = -jnp.sum(targets * jax.nn.log_softmax(logits))
    return loss, logits

  for enable_dropout in False, True:
    results = [
      jax.jit(
        jax.value_and_grad(
          functools.partial(loss_and_logits, c, enable_dropout=enable_dropout),
          has_aux=True,
        )
      )(params)
      for c in (config, config.replace(remat_policy=policy))
    ]
    (plain_loss, plain_logits), plain_grads = results[0]
    (loss, logits), grads = results[1]
    numerics.assert_close(loss, plain_loss, what='loss')
    numerics.assert_close(logits, plain_logits, what='logits')
    numerics.assert_trees_close(grads, plain_grads, what='gradients')


@pytest.mark.slow  # Two compiles of a forward and backward pass.
@pytest.mark.parametrize(
  'activations,tied,policy',
  [(('gelu', 'linear'), False, 'none'), (('relu',), True, 'full')],
)
def test_scanned_layers_equal_t5x_layers(
  tiny_config, activations, tied, policy
):
  """One `nn.scan` over each stack (with or without remat) computes what
  t5x's per-layer modules compute, from the same parameters stacked: logits,
  loss and every gradient, for T5.1.1 and T5 1.0 shapes. The stacked tree has
  one `layers` entry per stack, its leaves led by the layer count."""
  config = tiny_config.replace(
    mlp_activations=activations,
    logits_via_embedding=tied,
    num_encoder_layers=3,
  )
  scanned = config.replace(scan_layers=True, remat_policy=policy)
  rng = np.random.default_rng(5)
  batch = _batch([_example(rng, 7, 5, 384), _example(rng, 4, 6, 384)], 8, 6)
  _, params = _init(config, batch)
  stacked = network.stack_layers(params, scanned)
  _, initialised = _init(scanned, batch)
  assert jax.tree.map(np.shape, initialised) == jax.tree.map(np.shape, stacked)
  wi = stacked['encoder']['layers']['mlp']['wo']['kernel']
  assert wi.shape == (3, config.mlp_dim, config.emb_dim)
  assert 'layers_0' not in stacked['decoder']

  def loss_and_logits(config, params):
    logits = network.Transformer(config).apply(
      {'params': params}, **batch, enable_dropout=False
    )
    # The token mean of the cross-entropy, as training uses.
    targets = jax.nn.one_hot(batch['decoder_target_tokens'], 384)
    real = batch['decoder_target_tokens'] > 0
    nll = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    return jnp.sum(nll * real) / jnp.sum(real), logits

  def run(config, params):
    return jax.jit(
      jax.value_and_grad(
        functools.partial(loss_and_logits, config), has_aux=True
      )
    )(params)

  (plain_loss, plain_logits), plain_grads = run(config, params)
  (loss, logits), grads = run(scanned, stacked)
  numerics.assert_close(loss, plain_loss, what='loss')
  numerics.assert_close(logits, plain_logits, what='logits')
  grads = network.unstack_layers(grads, scanned)
  numerics.assert_trees_close(grads, plain_grads, what='gradients')


def test_unknown_remat_policy_is_named(tiny_config):
  rng = np.random.default_rng(4)
  batch = _batch([_example(rng, 3, 3, 384)], 3, 3)
  with pytest.raises(ValueError, match="remat_policy must be one of .*'x'"):
    _init(tiny_config.replace(remat_policy='x'), batch)
