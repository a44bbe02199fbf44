"""T5 encoder-decoder in Flax linen with t5x's parameter tree.

The parameter names, shapes and numerics follow `t5x.examples.t5.network`, so
t5x checkpoints (and HuggingFace T5 weights, after renaming) load unchanged:

* T5.1.1: gated GELU (`mlp_activations=('gelu', 'linear')`), untied logits.
* T5 1.0 / mT5-style ReLU: `mlp_activations=('relu',)`, `logits_via_embedding`.

Parameters are created in float32 and cast to `config.dtype` for computation
(bfloat16 on accelerators), as t5x does. Every parameter carries logical axis
names (`vocab`, `embed`, `mlp`, `heads`, `kv`, `joined_kv`, `relpos_buckets`)
that `dsbs_jax.partitioning` maps onto the device mesh; the main activations
carry logical sharding constraints, which are no-ops outside a mesh.

With `T5Config.scan_layers` each stack's layers run as one `nn.scan`, their
parameters stacked under `layers`; `stack_layers` and `unstack_layers` convert
between that tree and t5x's (`layers_0`, `layers_1`, ...), which checkpoints,
exports and the optimizer use.
"""

from collections.abc import Callable
from collections.abc import Sequence
import functools
import operator
from typing import Any

from flax import linen as nn
from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

# t5x's attention mask value; rows with every key masked become uniform.
_MASKED = -1e10


@struct.dataclass
class T5Config:
  """Hyperparameters, with t5x's field names (gin binds them as in t5x)."""

  vocab_size: int
  dtype: Any = jnp.float32
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('relu',)
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False
  num_buckets: int = 32
  max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  # What each layer keeps for the backward pass (REMAT_POLICIES).
  remat_policy: str = 'none'
  # One `nn.scan` over each stack's layers: XLA compiles a layer once per
  # stack instead of once per layer. Parameters are then stacked on a leading
  # `layers` axis (`stack_layers`); checkpoints load in either layout.
  scan_layers: bool = False


# Activation rematerialisation of each encoder and decoder layer in training,
# as t5x's and MaxText's T5 offer: `none` keeps every activation; `full`
# keeps only each layer's inputs and recomputes the rest in the backward
# pass; `minimal` also keeps the matmul outputs that have no batch dimension
# (jax's dots_with_no_batch_dims_saveable). Values are unchanged; memory
# falls and step time rises in that order.
REMAT_POLICIES = {
  'none': None,
  'full': jax.checkpoint_policies.nothing_saveable,
  'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _layer_class(cls: type[nn.Module], cfg: T5Config, decode: bool):
  """`cls`, rematerialised by `cfg.remat_policy` when training.

  Its trailing arguments (deterministic, and decode for the decoder) are
  Python booleans, static for jax.checkpoint. Decoding (which writes the
  cache) never differentiates, so it runs the plain layer.
  """
  if cfg.remat_policy not in REMAT_POLICIES:
    raise ValueError(
      f'remat_policy must be one of {tuple(REMAT_POLICIES)}, got '
      f'{cfg.remat_policy!r}'
    )
  if cfg.remat_policy == 'none' or decode:
    return cls
  # Argument 0 is the module: EncoderLayer's `deterministic` is 4,
  # DecoderLayer's `deterministic` and `decode` are 6 and 7.
  static = (4,) if cls is EncoderLayer else (6, 7)
  return nn.remat(
    cls,
    policy=REMAT_POLICIES[cfg.remat_policy],
    static_argnums=static,
    # A scan already keeps XLA from merging the recomputation away.
    prevent_cse=not cfg.scan_layers,
  )


def _apply_layers(
  layer: type[nn.Module], cfg: T5Config, num_layers: int, x: Array, *args
) -> Array:
  """`x` through `num_layers` layers, each also given `args`.

  Unscanned, the layers are modules `layers_0`, `layers_1`, ... as in t5x.
  Scanned, one module `layers` holds every parameter (and decoding cache)
  with a leading axis of `num_layers`, named `layers` for partitioning (no
  rule maps it, so it is never split). Dropout masks then come from a
  per-layer split of the rng: the same distribution as unscanned, other
  draws.
  """
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = layer(cfg, name=f'layers_{i}')(x, *args)
    return x
  scan = nn.scan(
    lambda module, carry, *rest: (module(carry, *rest), None),
    variable_axes={'params': 0, 'cache': 0},
    split_rngs={'params': True, 'dropout': True},
    in_axes=(nn.broadcast,) * len(args),
    length=num_layers,
    metadata_params={nn.PARTITION_NAME: 'layers'},
  )
  x, _ = scan(layer(cfg, name='layers'), x, *args)
  return x


def _layer_count(config: T5Config, stack: str) -> int:
  return (
    config.num_encoder_layers
    if stack == 'encoder'
    else config.num_decoder_layers
  )


def _slice_layer(leaf: Any, i: int) -> Any:
  """Layer `i` of a stacked leaf: an array, its shape, or its sharding."""
  if isinstance(leaf, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(
      leaf.mesh, jax.sharding.PartitionSpec(*leaf.spec[1:])
    )
  if isinstance(leaf, jax.sharding.Sharding):  # e.g. one device's
    return leaf
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding and _slice_layer(leaf.sharding, i)
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)
  return leaf[i]


def unstack_layers(tree: Any, config: T5Config) -> Any:
  """t5x's per-layer tree (`layers_0`, ...) of a tree in the scanned layout.

  `tree` is shaped like the parameters: arrays, `jax.ShapeDtypeStruct`s or
  `NamedSharding`s. Trees already per layer are returned as they are.
  """
  out = dict(tree)
  for stack in ('encoder', 'decoder'):
    if 'layers' not in tree.get(stack, {}):
      continue
    out[stack] = {k: v for k, v in tree[stack].items() if k != 'layers'}
    for i in range(_layer_count(config, stack)):
      out[stack][f'layers_{i}'] = jax.tree.map(
        lambda leaf, i=i: _slice_layer(leaf, i), tree[stack]['layers']
      )
  return out


def stack_layers(
  tree: Any, config: T5Config, stack_fn: Callable[..., Any] = np.stack
) -> Any:
  """The scanned layout of t5x's per-layer tree, layers stacked by
  `stack_fn` (`jnp.stack` under jit). Trees already stacked, and trees for
  unscanned configs, are returned as they are."""
  if not config.scan_layers:
    return tree
  out = dict(tree)
  for stack in ('encoder', 'decoder'):
    if 'layers_0' not in tree.get(stack, {}):
      continue
    n = _layer_count(config, stack)
    layers = [tree[stack][f'layers_{i}'] for i in range(n)]
    rest = {k: v for k, v in tree[stack].items() if not k.startswith('layers_')}
    out[stack] = {
      **rest,
      'layers': jax.tree.map(lambda *leaves: stack_fn(leaves), *layers),
    }
  return out


def _param(module: nn.Module, name: str, init: Initializer, shape, axes):
  """A float32 parameter annotated with logical axis names."""
  return module.param(
    name, nn.with_logical_partitioning(init, axes), shape, jnp.float32
  )


def _constrain(x: Array, axes: tuple[str, ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


class Dense(nn.Module):
  """Bias-free linear map over the trailing `in_shape` axes.

  The kernel is stored flattened to 2-D, (prod(in_shape), prod(out_shape)), as
  in t5x checkpoints, and reshaped for the contraction.
  """

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_axes: tuple[str, str]
  dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0, 'fan_in', 'truncated_normal'
  )

  @nn.compact
  def __call__(self, x: Array) -> Array:
    flat_shape = (int(np.prod(self.in_shape)), int(np.prod(self.out_shape)))
    kernel = _param(
      self, 'kernel', self.kernel_init, flat_shape, self.kernel_axes
    )
    kernel = jnp.asarray(kernel, self.dtype).reshape(
      self.in_shape + self.out_shape
    )
    n_in = len(self.in_shape)
    contract_x = tuple(range(x.ndim - n_in, x.ndim))
    return lax.dot_general(
      jnp.asarray(x, self.dtype),
      kernel,
      ((contract_x, tuple(range(n_in))), ((), ())),
    )


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, computed in float32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = _param(
      self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',)
    )
    return y * jnp.asarray(scale, self.dtype)


def relative_position_buckets(
  qlen: int, klen: int, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Bucket of (memory - query) position for every (q, k) pair, as in T5.

  Half the buckets are exact small distances, the rest log-spaced up to
  `max_distance`; bidirectional attention spends half on each direction.
  """
  relative = np.arange(klen)[None, :] - np.arange(qlen)[:, None]
  n = -relative
  bucket = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  with np.errstate(divide='ignore'):
    large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
      / np.log(max_distance / max_exact)
      * (num_buckets - max_exact)
    ).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return bucket + np.where(n < max_exact, n, large)


class RelativePositionBias(nn.Module):
  """Learned per-head bias on attention logits, shared by a stack's layers."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool) -> Array:
    buckets = relative_position_buckets(
      qlen, klen, bidirectional, self.num_buckets, self.max_distance
    )
    table = _param(
      self,
      'rel_embedding',
      nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
      (self.num_heads, self.num_buckets),
      ('heads', 'relpos_buckets'),
    )
    # A one-hot contraction rather than a gather: its gradient is a matmul,
    # where a gather's is a scatter-add (very slow on CPU, awkward to shard).
    one_hot = buckets[None] == np.arange(self.num_buckets)[:, None, None]
    values = jnp.einsum(
      'hb,bqk->hqk',
      jnp.asarray(table, self.dtype),
      jnp.asarray(one_hot, self.dtype),
    )
    return values[None]  # (1, heads, qlen, klen)


def attention_mask(
  query_valid: Array,
  key_valid: Array,
  pairwise: Callable[[Array, Array], Array] = jnp.logical_and,
) -> Array:
  """[batch, 1, q, k] boolean mask from per-position query/key features."""
  return pairwise(query_valid[:, :, None], key_valid[:, None, :])[:, None]


def decoder_self_attention_mask(
  decoder_target_tokens: Array, decoder_segment_ids: Array | None
) -> Array:
  """Causal, padding and (for packed data) same-segment mask."""
  positions = jnp.broadcast_to(
    jnp.arange(decoder_target_tokens.shape[-1]), decoder_target_tokens.shape
  )
  valid = decoder_target_tokens > 0
  mask = attention_mask(positions, positions, jnp.greater_equal)
  mask &= attention_mask(valid, valid)
  if decoder_segment_ids is not None:
    mask &= attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal)
  return mask


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with an optional decoding cache.

  As in T5, logits are not divided by sqrt(head_dim): the scaling is folded
  into the query initialiser. In decode mode the first call (during `init`)
  allocates the key/value cache; later calls take one position at a time.
  """

  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  float32_logits: bool = False

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    *,
    decode: bool = False,
    deterministic: bool = True,
  ) -> Array:
    emb_dim = inputs_q.shape[-1]
    kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    depth_scaling = jnp.sqrt(self.head_dim).astype(self.dtype)
    heads = (self.num_heads, self.head_dim)
    project = functools.partial(
      Dense,
      in_shape=(emb_dim,),
      out_shape=heads,
      kernel_axes=('embed', 'joined_kv'),
      dtype=self.dtype,
    )
    query = project(
      kernel_init=lambda *a: kernel_init(*a) / depth_scaling, name='query'
    )(inputs_q)
    key = project(kernel_init=kernel_init, name='key')(inputs_kv)
    value = project(kernel_init=kernel_init, name='value')(inputs_kv)
    query, key, value = (
      _constrain(t, ('batch', 'length', 'heads', 'kv'))
      for t in (query, key, value)
    )

    if decode:
      initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable(
        'cache', 'cached_key', jnp.zeros, key.shape, key.dtype
      )
      cached_value = self.variable(
        'cache', 'cached_value', jnp.zeros, value.shape, value.dtype
      )
      cache_index = self.variable(
        'cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32)
      )
      if initialized:
        batch, length = cached_key.value.shape[:2]
        if query.shape[1] != 1:
          raise ValueError(
            'Cached decoding takes one position per call, got '
            f'query of shape {query.shape}.'
          )
        index = cache_index.value
        key = lax.dynamic_update_slice_in_dim(cached_key.value, key, index, 1)
        value = lax.dynamic_update_slice_in_dim(
          cached_value.value, value, index, 1
        )
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        # Attend only to positions already written.
        written = jnp.broadcast_to(
          jnp.arange(length) <= index, (batch, 1, 1, length)
        )
        mask = written if mask is None else mask & written
        if bias is not None:
          bias = lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)

    attn_bias = None
    if mask is not None:
      attn_bias = jnp.where(mask, 0.0, _MASKED).astype(self.dtype)
    if bias is not None:
      attn_bias = bias if attn_bias is None else attn_bias + bias

    if self.float32_logits:
      query, key = query.astype(jnp.float32), key.astype(jnp.float32)
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)
    if attn_bias is not None:
      logits = logits + attn_bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0.0:
      keep_prob = 1.0 - self.dropout_rate
      # Dropout mask broadcast over query positions, as in T5.
      keep_shape = weights.shape[:-2] + (1, weights.shape[-1])
      keep = jax.random.bernoulli(
        self.make_rng('dropout'), keep_prob, keep_shape
      )
      weights = weights * (
        keep.astype(self.dtype) / jnp.asarray(keep_prob, self.dtype)
      )
    x = jnp.einsum('bhqk,bkhd->bqhd', weights, value)
    return Dense(
      in_shape=heads,
      out_shape=(emb_dim,),
      kernel_axes=('joined_kv', 'embed'),
      dtype=self.dtype,
      kernel_init=kernel_init,
      name='out',
    )(x)


def _activation(name: str) -> Callable[[Array], Array]:
  return (lambda x: x) if name == 'linear' else getattr(nn, name)


class MlpBlock(nn.Module):
  """Feed-forward block; activations multiply (gated GELU = gelu * linear)."""

  intermediate_dim: int
  activations: Sequence[str]
  dropout_rate: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    emb_dim = x.shape[-1]
    dense = functools.partial(Dense, dtype=self.dtype)
    hidden = []
    for i, name in enumerate(self.activations):
      wi = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      h = dense(
        in_shape=(emb_dim,),
        out_shape=(self.intermediate_dim,),
        kernel_axes=('embed', 'mlp'),
        name=wi,
      )(x)
      hidden.append(_activation(name)(h))
    h = functools.reduce(operator.mul, hidden)
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
      h, deterministic=deterministic
    )
    h = _constrain(h, ('batch', 'length', 'mlp'))
    return dense(
      in_shape=(self.intermediate_dim,),
      out_shape=(emb_dim,),
      kernel_axes=('mlp', 'embed'),
      name='wo',
    )(h)


class _Sublayers(nn.Module):
  """Shared pieces of encoder and decoder layers (pre-norm residual blocks)."""

  config: T5Config

  def norm(self, name: str) -> RMSNorm:
    return RMSNorm(self.config.layer_norm_epsilon, self.config.dtype, name=name)

  def attention(self, name: str) -> MultiHeadAttention:
    cfg = self.config
    return MultiHeadAttention(
      cfg.num_heads,
      cfg.head_dim,
      cfg.dtype,
      cfg.dropout_rate,
      cfg.float32_attention_logits,
      name=name,
    )

  def mlp(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    return MlpBlock(
      cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, name='mlp'
    )(x, deterministic)

  def dropout(self, x: Array, deterministic: bool) -> Array:
    return nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))(
      x, deterministic=deterministic
    )


class EncoderLayer(_Sublayers):
  """Self-attention then MLP, each pre-normalised and residual."""

  @nn.compact
  def __call__(
    self, x: Array, mask: Array, bias: Array, deterministic: bool
  ) -> Array:
    y = self.norm('pre_attention_layer_norm')(x)
    y = self.attention('attention')(
      y, y, mask, bias, deterministic=deterministic
    )
    x = x + self.dropout(y, deterministic)
    y = self.norm('pre_mlp_layer_norm')(x)
    x = x + self.dropout(self.mlp(y, deterministic), deterministic)
    return _constrain(x, ('batch', 'length', 'embed'))


class DecoderLayer(_Sublayers):
  """Causal self-attention, cross-attention to the encoder, then MLP."""

  @nn.compact
  def __call__(
    self,
    x: Array,
    encoded: Array,
    self_mask: Array | None,
    cross_mask: Array,
    bias: Array,
    deterministic: bool,
    decode: bool,
  ) -> Array:
    y = self.norm('pre_self_attention_layer_norm')(x)
    y = self.attention('self_attention')(
      y, y, self_mask, bias, decode=decode, deterministic=deterministic
    )
    x = x + self.dropout(y, deterministic)
    y = self.norm('pre_cross_attention_layer_norm')(x)
    y = self.attention('encoder_decoder_attention')(
      y, encoded, cross_mask, deterministic=deterministic
    )
    x = x + self.dropout(y, deterministic)
    y = self.norm('pre_mlp_layer_norm')(x)
    x = x + self.dropout(self.mlp(y, deterministic), deterministic)
    return _constrain(x, ('batch', 'length', 'embed'))


class Embed(nn.Module):
  """Token embedding; `attend` gives logits against it for tied outputs."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = _param(
      self,
      'embedding',
      nn.initializers.normal(stddev=1.0),
      (self.num_embeddings, self.features),
      ('vocab', 'embed'),
    )

  def __call__(self, tokens: Array) -> Array:
    x = jnp.take(jnp.asarray(self.embedding, self.dtype), tokens, axis=0)
    return _constrain(x, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    # float32 for the logits, as t5x does for stability.
    return jnp.dot(query, jnp.asarray(self.embedding, jnp.float32).T)


def _relpos_bias(cfg: T5Config) -> RelativePositionBias:
  return RelativePositionBias(
    cfg.num_buckets,
    cfg.max_distance,
    cfg.num_heads,
    cfg.dtype,
    name='relpos_bias',
  )


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: Embed

  @nn.compact
  def __call__(self, tokens: Array, mask: Array, deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[-1]
    bias = _relpos_bias(cfg)(length, length, True)
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = dropout(
      self.shared_embedding(tokens.astype(jnp.int32)),
      deterministic=deterministic,
    ).astype(cfg.dtype)
    layer = _layer_class(EncoderLayer, cfg, decode=False)
    x = _apply_layers(
      layer, cfg, cfg.num_encoder_layers, x, mask, bias, deterministic
    )
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name='encoder_norm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: Embed

  @nn.compact
  def __call__(
    self,
    encoded: Array,
    decoder_input_tokens: Array,
    self_mask: Array | None,
    cross_mask: Array,
    deterministic: bool,
    decode: bool,
    max_decode_length: int | None,
  ) -> Array:
    cfg = self.config
    length = (
      max_decode_length
      if decode and max_decode_length
      else decoder_input_tokens.shape[-1]
    )
    bias = _relpos_bias(cfg)(length, length, False)
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = dropout(
      self.shared_embedding(decoder_input_tokens.astype(jnp.int32)),
      deterministic=deterministic,
    ).astype(cfg.dtype)
    layer = _layer_class(DecoderLayer, cfg, decode)
    y = _apply_layers(
      layer,
      cfg,
      cfg.num_decoder_layers,
      y,
      encoded,
      self_mask,
      cross_mask,
      bias,
      deterministic,
      decode,
    )
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name='decoder_norm')(y)
    y = dropout(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1])
    else:
      logits = Dense(
        in_shape=(cfg.emb_dim,),
        out_shape=(cfg.vocab_size,),
        kernel_axes=('embed', 'vocab'),
        dtype=jnp.float32,
        name='logits_dense',
      )(y)
    return _constrain(logits, ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """Encoder-decoder T5, called like t5x's `network.Transformer`."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.shared_embedding = Embed(
      cfg.vocab_size, cfg.emb_dim, cfg.dtype, name='token_embedder'
    )
    self.encoder = Encoder(cfg, self.shared_embedding)
    self.decoder = Decoder(cfg, self.shared_embedding)

  def encode(
    self,
    encoder_input_tokens: Array,
    encoder_segment_ids: Array | None = None,
    enable_dropout: bool = True,
  ) -> Array:
    valid = encoder_input_tokens > 0
    mask = attention_mask(valid, valid)
    if encoder_segment_ids is not None:
      mask &= attention_mask(
        encoder_segment_ids, encoder_segment_ids, jnp.equal
      )
    return self.encoder(encoder_input_tokens, mask, not enable_dropout)

  def decode(
    self,
    encoded: Array,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    decoder_positions: Array | None = None,
    enable_dropout: bool = True,
    decode: bool = False,
    max_decode_length: int | None = None,
  ) -> Array:
    """Decoder logits; with `decode=True`, one cached step at a time.

    `decoder_positions` is accepted for t5x's interface; relative attention
    only needs position differences, which packing preserves within a segment.
    """
    del decoder_positions
    encoder_valid = encoder_input_tokens > 0
    if decode:
      if encoder_segment_ids is not None:
        raise ValueError('Packed inputs cannot be decoded incrementally.')
      self_mask = None
      cross_mask = attention_mask(
        jnp.ones_like(decoder_target_tokens, dtype=bool), encoder_valid
      )
    else:
      self_mask = decoder_self_attention_mask(
        decoder_target_tokens, decoder_segment_ids
      )
      cross_mask = attention_mask(decoder_target_tokens > 0, encoder_valid)
      if encoder_segment_ids is not None:
        cross_mask &= attention_mask(
          decoder_segment_ids, encoder_segment_ids, jnp.equal
        )
    return self.decoder(
      encoded,
      decoder_input_tokens,
      self_mask,
      cross_mask,
      not enable_dropout,
      decode,
      max_decode_length,
    )

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    encoder_positions: Array | None = None,
    decoder_positions: Array | None = None,
    *,
    enable_dropout: bool = True,
    decode: bool = False,
  ) -> Array:
    del encoder_positions  # See `decode`: relative attention needs none.
    encoded = self.encode(
      encoder_input_tokens, encoder_segment_ids, enable_dropout
    )
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      enable_dropout,
      decode,
    )
