"""Importing T5 weights written by others: t5x and HuggingFace checkpoints.

This module's one job is reading foreign checkpoints into our parameter tree;
`checkpoints` saves and restores our own train state.

`load_params(path)` returns the parameter tree of `dsbs_jax.network.Transformer`
(t5x's example T5 tree, float32 numpy arrays) from any of:

* a t5x legacy checkpoint directory (msgpack `checkpoint` + zarr arrays),
* a t5x orbax checkpoint directory (`state/`, OCDBT),
* a HuggingFace `T5ForConditionalGeneration` folder (`config.json` with
  safetensors or `pytorch_model.bin` weights, possibly sharded; a `.bin` is
  read by a restricted unpickler that runs no code).

Paths may be local or anything tensorstore and `etils.epath` open (`gs://`).
Only the parameters (t5x's `target`) are read, never the optimizer state.
"""

import collections
from collections.abc import Mapping
import functools
import json
import os
import pickle
from typing import Any
from typing import BinaryIO
import zipfile

from etils import epath
from flax import linen as nn
from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import safetensors
import tensorstore as ts

from dsbs_jax import errors
from dsbs_jax import network

Params = dict[str, Any]  # nested dict of float32 np.ndarray


class CheckpointError(errors.UserError, ValueError):
  """A checkpoint that is missing, unreadable or does not fit the model."""


class UnsafePickleError(CheckpointError, pickle.UnpicklingError):
  """A pickle that names a global a state dict of tensors does not need."""


def _read_bytes(path: epath.Path) -> bytes:
  try:
    return path.read_bytes()
  except OSError as error:
    raise CheckpointError(
      f'{path}: cannot be read: {error.strerror or error}'
    ) from None


def _read_json(path: epath.Path) -> dict[str, Any]:
  """A JSON object file; CheckpointError naming the file if it is not one."""
  data = _read_bytes(path)
  try:
    value = json.loads(data)
  except (ValueError, RecursionError) as error:  # JSON, UTF-8
    raise CheckpointError(f'{path}: not valid JSON: {error}') from None
  if not isinstance(value, dict):
    raise CheckpointError(
      f'{path}: expected a JSON object, got {type(value).__name__}'
    )
  return value


def _short(error: Exception) -> str:
  """An exception's message, without the spec tensorstore appends."""
  text = str(error).split(' [tensorstore_spec=', 1)[0].strip()
  return text.splitlines()[0] if text else type(error).__name__


_Key = tuple[str, ...]


def load_params(
  path: str | os.PathLike[str],
  config: network.T5Config | None = None,
  shardings: Any | None = None,
) -> Params:
  """Parameters of a t5x or HuggingFace T5 checkpoint, in t5x's tree
  (stacked as `config.scan_layers` asks).

  With `config`, the tree is checked against the network it configures
  (`check_params`). A HuggingFace folder is always checked against its own
  `config.json`, tensor by tensor, so an error names the HuggingFace tensor.

  Without `shardings` the parameters are float32 numpy arrays. With
  `shardings` (a tree of `jax.sharding.Sharding`s like the parameters') they
  are float32 jax Arrays in those shardings, and t5x checkpoints are read
  shard by shard: each process reads only the slices its devices hold, so no
  host needs memory for the whole model. A HuggingFace folder (one file) is
  read whole and then placed.
  """
  if config is not None and config.scan_layers:
    # Checkpoints hold t5x's per-layer tree: read it so, then stack.
    params = load_params(
      path,
      config.replace(scan_layers=False),
      None if shardings is None else network.unstack_layers(shardings, config),
    )
    if shardings is None:
      return network.stack_layers(params, config)
    stack = functools.partial(
      network.stack_layers, config=config, stack_fn=jnp.stack
    )
    return jax.jit(stack, out_shardings=shardings)(params)
  directory = epath.Path(path)
  if (directory / 'checkpoint').exists():
    params = _load_t5x_legacy(directory, config, shardings)
  elif (directory / 'state').is_dir():
    params = _load_t5x_orbax(directory / 'state', config, shardings)
  elif (directory / 'config.json').exists():
    params = _load_hf(directory)
    if shardings is not None:
      params = jax.device_put(params, shardings)
  else:
    raise CheckpointError(
      f'{directory} is not a t5x checkpoint (no `checkpoint` file, no '
      '`state/` folder) nor a HuggingFace folder (no `config.json`).'
    )
  if config is not None:
    try:
      check_params(params, config)
    except CheckpointError as error:
      raise CheckpointError(f'{directory}: {error}') from None
  return params


def param_shapes(config: network.T5Config) -> dict[_Key, tuple[int, ...]]:
  """Flattened parameter shapes of `Transformer(config)`, without allocating.

  Remembered per config (tracing the network takes a while; a HuggingFace
  import needs the shapes twice).
  """
  try:
    hash(config)
  except TypeError:  # e.g. a list of activations: nothing to remember by
    return _param_shapes.__wrapped__(config)
  return dict(_param_shapes(config))


@functools.lru_cache(maxsize=16)
def _param_shapes(config: network.T5Config) -> dict[_Key, tuple[int, ...]]:
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = jax.eval_shape(
    lambda: network.Transformer(config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
    )
  )
  flat = traverse_util.flatten_dict(nn.unbox(variables['params']))
  return {key: tuple(leaf.shape) for key, leaf in flat.items()}


def check_params(params: Params, config: network.T5Config) -> None:
  """Raises naming each missing, unexpected or misshapen parameter."""
  expected = param_shapes(config)
  actual = traverse_util.flatten_dict(params)
  problems = [
    f'missing {"/".join(k)} {expected[k]}' for k in expected if k not in actual
  ]
  problems += [
    f'unexpected {"/".join(k)} {np.shape(actual[k])}'
    for k in actual
    if k not in expected
  ]
  problems += [
    f'{"/".join(k)} has shape {np.shape(actual[k])}, expected {expected[k]}'
    for k in expected
    if k in actual and np.shape(actual[k]) != expected[k]
  ]
  if problems:
    raise CheckpointError(
      'Parameters do not match the T5 config: ' + '; '.join(problems)
    )


def config_from_hf(path: str | os.PathLike[str]) -> network.T5Config:
  """The `T5Config` of a HuggingFace T5 folder (its `config.json`)."""
  hf = _hf_config(epath.Path(path))
  if hf.get('model_type', 't5') not in ('t5', 'mt5'):
    raise CheckpointError(
      f'{path}: model_type {hf["model_type"]!r} is not T5/mT5.'
    )
  proj = hf['feed_forward_proj']
  gated, _, act = proj.rpartition('-')
  if gated not in ('', 'gated'):
    raise CheckpointError(f'{path}: unknown feed_forward_proj {proj!r}.')
  if proj == 'gated-gelu':
    act = 'gelu_new'  # HuggingFace's alias: the tanh-approximate GELU.
  if act not in FLAX_ACTIVATIONS:
    raise CheckpointError(
      f"{path}: activation {act!r} has no t5x equivalent (flax's gelu is "
      f'the tanh approximation); supported: {sorted(FLAX_ACTIVATIONS)}.'
    )
  activation = FLAX_ACTIVATIONS[act]
  return network.T5Config(
    vocab_size=hf['vocab_size'],
    emb_dim=hf['d_model'],
    num_heads=hf['num_heads'],
    num_encoder_layers=hf['num_layers'],
    num_decoder_layers=hf['num_decoder_layers'] or hf['num_layers'],
    head_dim=hf['d_kv'],
    mlp_dim=hf['d_ff'],
    mlp_activations=(activation, 'linear') if gated else (activation,),
    dropout_rate=hf['dropout_rate'],
    logits_via_embedding=_logits_via_embedding(hf),
    num_buckets=hf['relative_attention_num_buckets'],
    max_distance=hf['relative_attention_max_distance'],
    layer_norm_epsilon=hf['layer_norm_epsilon'],
  )


# --- t5x legacy: msgpack tree whose large leaves are tensorstore specs -------


def _load_t5x_legacy(
  directory: epath.Path,
  config: network.T5Config | None,
  shardings: Any | None,
) -> Params:
  """Reads `target` of a t5x msgpack checkpoint; zarr arrays concurrently,
  or, with `shardings`, each device's slice of them (after checking the
  stored shapes against `config`, before any array is read)."""
  path = directory / 'checkpoint'
  data = _read_bytes(path)
  try:
    state = serialization.msgpack_restore(data)
  except Exception as error:  # pylint: disable=broad-except
    # msgpack and flax raise many types for damaged bytes; none is ours.
    raise CheckpointError(
      f'{path}: not a t5x msgpack checkpoint ({type(error).__name__}: '
      f'{_short(error)})'
    ) from None
  optimizer = state.get('optimizer') if isinstance(state, dict) else None
  if not isinstance(optimizer, dict) or not isinstance(
    optimizer.get('target'), dict
  ):
    raise CheckpointError(f'{path}: no optimizer/target tree of parameters.')
  target = traverse_util.flatten_dict(
    optimizer['target'],
    is_leaf=lambda _, value: isinstance(value, dict) and 'driver' in value,
  )
  # Damaged specs and arrays fail in tensorstore with ValueError or TypeError.
  flat, opened, reads, key = {}, {}, {}, ()
  try:
    for key, leaf in target.items():
      if isinstance(leaf, dict):
        opened[key] = ts.open(_absolute_spec(directory, leaf))
      elif isinstance(leaf, np.ndarray | np.generic | int | float):
        flat[key] = np.asarray(leaf, np.float32)  # small leaves are inline
      else:
        raise TypeError(f'{type(leaf).__name__} is not an array')
    opened = {key: store.result() for key, store in opened.items()}
    if shardings is not None:
      if config is not None:
        stored = {
          **flat,
          **{
            k: jax.ShapeDtypeStruct(s.shape, s.dtype.numpy_dtype)
            for k, s in opened.items()
          },
        }
        try:
          check_params(traverse_util.unflatten_dict(stored), config)
        except CheckpointError as error:
          raise CheckpointError(f'{directory}: {error}') from None
      placements = traverse_util.flatten_dict(shardings)
      for key, value in flat.items():
        flat[key] = jax.device_put(value, placements[key])
      for key, store in opened.items():
        flat[key] = _read_sharded(store, placements[key])
      return traverse_util.unflatten_dict(flat)
    for key, store in opened.items():
      reads[key] = store.read()
    for key, read in reads.items():
      flat[key] = np.asarray(read.result(), np.float32)
  except (ValueError, TypeError) as error:
    raise CheckpointError(
      f'{directory}: parameter {"/".join(map(str, key))}: {_short(error)}'
    ) from None
  return traverse_util.unflatten_dict(flat)


def _read_sharded(store: ts.TensorStore, sharding: Any) -> jax.Array:
  """A float32 jax Array of `store`, each addressable device's slice read
  on its own (replicas of a slice are read once)."""
  slices = {}

  def read(index: tuple[slice, ...]) -> np.ndarray:
    where = tuple((s.start, s.stop) for s in index)
    if where not in slices:
      slices[where] = np.asarray(store[index].read().result(), np.float32)
    return slices[where]

  return jax.make_array_from_callback(store.shape, sharding, read)


def _absolute_spec(directory: epath.Path, spec: dict[str, Any]) -> dict:
  """A leaf's spec with its path, stored relative, under `directory`.

  Like t5x, the stored kvstore driver and bucket are ignored (a checkpoint
  copied between GCS and local disk stays readable); the directory decides.
  Specs written with tensorstore < 0.1.14 keep the path at the top level.
  """
  spec = dict(spec)
  kvstore = spec.get('kvstore')
  relative = (kvstore.get('path') if isinstance(kvstore, dict) else None) or (
    spec.pop('path', None)
  )
  if not isinstance(relative, str):
    raise ValueError(f'its spec has no path: {spec!r:.200}')
  location = os.path.join(os.fspath(directory), relative)
  # tensorstore parses URLs (gs://bucket/..., s3://...) as kvstore specs.
  spec['kvstore'] = (
    location
    if '://' in location
    else {'driver': 'file', 'path': os.path.abspath(location)}
  )
  return spec


# --- t5x orbax: a PyTreeCheckpointHandler item {target, state} --------------


def _load_t5x_orbax(
  state_dir: epath.Path,
  config: network.T5Config | None,
  shardings: Any | None,
) -> Params:
  """Restores only `target` from a t5x orbax item: as numpy arrays, or
  with `shardings` as jax Arrays, each process reading its devices' slices
  (after checking the stored shapes against `config`)."""
  state_dir = state_dir.absolute()  # orbax's OCDBT reader insists.
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree
    if not isinstance(tree, dict) or not isinstance(tree.get('target'), dict):
      raise CheckpointError(f'{state_dir}: no `target` tree of parameters.')
    if shardings is None:
      as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree['target']
      )
      restored = restore_orbax_subtree(
        state_dir, 'target', tree['target'], as_numpy
      )
      return jax.tree.map(lambda x: np.asarray(x, np.float32), restored)
    if config is not None:
      try:
        check_params(tree['target'], config)
      except CheckpointError as error:
        raise CheckpointError(f'{state_dir}: {error}') from None
    sharded = jax.tree.map(
      lambda metadata, sharding: ocp.ArrayRestoreArgs(
        sharding=sharding, global_shape=metadata.shape, dtype=np.float32
      ),
      tree['target'],
      shardings,
    )
    return restore_orbax_subtree(state_dir, 'target', tree['target'], sharded)
  except CheckpointError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    # orbax and tensorstore raise many types for damaged files.
    raise CheckpointError(
      f'{state_dir}: not a readable t5x orbax checkpoint '
      f'({type(error).__name__}: {_short(error)})'
    ) from None


def restore_orbax_subtree(
  directory: epath.Path, key: str, item: Any, restore_args: Any
) -> Any:
  """Reads only `key` of an orbax PyTree item (t5x's `target`, our `params`).

  `item` and `restore_args` describe the subtree; nothing else is read.
  """
  restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
    directory,
    args=ocp.args.PyTreeRestore(
      item={key: item}, restore_args={key: restore_args}, partial_restore=True
    ),
  )
  return restored[key]


# --- HuggingFace T5ForConditionalGeneration ---------------------------------

# HuggingFace activation name -> flax.linen function name (both tanh GELU).
FLAX_ACTIVATIONS = {'relu': 'relu', 'gelu_new': 'gelu', 'silu': 'silu'}

# transformers' T5Config defaults: config.json may omit keys at their default.
HF_DEFAULTS = {
  'vocab_size': 32128,
  'd_model': 512,
  'd_kv': 64,
  'd_ff': 2048,
  'num_layers': 6,
  'num_decoder_layers': None,
  'num_heads': 8,
  'relative_attention_num_buckets': 32,
  'relative_attention_max_distance': 128,
  'dropout_rate': 0.1,
  'layer_norm_epsilon': 1e-6,
  'feed_forward_proj': 'relu',
  'tie_word_embeddings': True,
}

# Names of t5x layer submodules in HuggingFace's `{stack}.block.{i}`.
_HF_LAYER = {
  'encoder': {
    'attention': 'layer.0.SelfAttention',
    'pre_attention_layer_norm': 'layer.0.layer_norm',
    'mlp': 'layer.1.DenseReluDense',
    'pre_mlp_layer_norm': 'layer.1.layer_norm',
  },
  'decoder': {
    'self_attention': 'layer.0.SelfAttention',
    'pre_self_attention_layer_norm': 'layer.0.layer_norm',
    'encoder_decoder_attention': 'layer.1.EncDecAttention',
    'pre_cross_attention_layer_norm': 'layer.1.layer_norm',
    'mlp': 'layer.2.DenseReluDense',
    'pre_mlp_layer_norm': 'layer.2.layer_norm',
  },
}
_HF_PROJECTION = {'query': 'q', 'key': 'k', 'value': 'v', 'out': 'o'}

# Tensors HuggingFace writes but never reads as parameters of their own:
# copies of `shared.weight`, and a cross-attention bias old T5 files carry.
_HF_REDUNDANT = {
  'encoder.embed_tokens.weight',
  'decoder.embed_tokens.weight',
  'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight',
}


# Integer keys of config.json: (least, greatest) value. The bounds only keep
# absurd values (a damaged file) from building a network of them.
_HF_INT_KEYS = {
  'vocab_size': (1, 2**31 - 1),
  'd_model': (1, 2**31 - 1),
  'd_kv': (1, 2**31 - 1),
  'd_ff': (1, 2**31 - 1),
  'num_layers': (1, 1000),
  'num_decoder_layers': (1, 1000),
  'num_heads': (1, 2**16),
  'relative_attention_num_buckets': (1, 2**20),
  'relative_attention_max_distance': (1, 2**31 - 1),
}


def _hf_config(directory: epath.Path) -> dict[str, Any]:
  """config.json over transformers' defaults, each value checked."""
  path = directory / 'config.json'
  hf = HF_DEFAULTS | _read_json(path)

  def bad(key: str, expected: str) -> CheckpointError:
    return CheckpointError(
      f'{path}: {key} is {hf[key]!r:.80}; expected {expected}.'
    )

  for key, (least, greatest) in _HF_INT_KEYS.items():
    value = hf[key]
    if key == 'num_decoder_layers' and value is None:
      continue
    if (
      not isinstance(value, int)
      or isinstance(value, bool)
      or not least <= value <= greatest
    ):
      raise bad(key, f'an integer from {least} to {greatest}')
  for key in ('dropout_rate', 'layer_norm_epsilon'):
    value = hf[key]
    if (
      not isinstance(value, int | float)
      or isinstance(value, bool)
      or not 0 <= value < 1
    ):
      raise bad(key, 'a number in [0, 1)')
  for key in ('tie_word_embeddings', 'scale_decoder_outputs'):
    if hf.get(key) is not None and not isinstance(hf[key], bool):
      raise bad(key, 'true or false')
  for key in ('feed_forward_proj', 'model_type'):
    if key in hf and not isinstance(hf[key], str):
      raise bad(key, 'a string')
  return hf


def _logits_via_embedding(hf: Mapping[str, Any]) -> bool:
  """Whether logits are the scaled embedding (T5 1.0) or `lm_head` (T5.1.1).

  transformers < 5 writes `tie_word_embeddings: false` for T5.1.1;
  transformers 5 always writes true and records the difference as
  `scale_decoder_outputs: false` instead.
  """
  return hf.get('scale_decoder_outputs', hf['tie_word_embeddings'])


def hf_name(key: _Key) -> str:
  """HuggingFace name of the t5x parameter `key`."""
  match key:
    case ('token_embedder', 'embedding'):
      return 'shared.weight'
    case ('decoder', 'logits_dense', 'kernel'):
      return 'lm_head.weight'
    case (stack, 'relpos_bias', 'rel_embedding'):
      return (
        f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'
      )
    case (stack, 'encoder_norm' | 'decoder_norm', 'scale'):
      return f'{stack}.final_layer_norm.weight'
    case (stack, layer, norm, 'scale') if layer.startswith('layers_'):
      return f'{stack}.block.{layer[7:]}.{_HF_LAYER[stack][norm]}.weight'
    case (stack, layer, module, projection, 'kernel') if layer.startswith(
      'layers_'
    ):
      return (
        f'{stack}.block.{layer[7:]}.{_HF_LAYER[stack][module]}.'
        f'{_HF_PROJECTION.get(projection, projection)}.weight'
      )
  raise CheckpointError(
    f'No HuggingFace name for t5x parameter {"/".join(key)}.'
  )


def hf_transposed(key: _Key) -> bool:
  """Whether HuggingFace stores the t5x parameter `key` transposed.

  Linear weights are (out, in) in HuggingFace and kernels (in, out) in t5x;
  the relative attention bias is (buckets, heads) there, (heads, buckets) here.
  """
  return key[-1] in ('kernel', 'rel_embedding')


def _load_hf(directory: epath.Path) -> Params:
  """Maps HuggingFace tensors onto the tree its config.json implies.

  Linear weights and the relative attention bias are transposed to t5x's
  layout (`hf_transposed`).
  """
  hf = _hf_config(directory)
  tensors = _read_hf_tensors(directory)
  tied = _logits_via_embedding(hf)
  if (
    tied
    and 'lm_head.weight' in tensors
    and not np.array_equal(tensors['lm_head.weight'], tensors['shared.weight'])
  ):
    raise CheckpointError(
      f'{directory}: lm_head.weight differs from shared.weight although the '
      'config ties them (logits via the scaled embedding); t5x has no '
      'scaled separate head.'
    )
  flat, used = {}, set(_HF_REDUNDANT) | {'lm_head.weight'}
  for key, shape in param_shapes(config_from_hf(directory)).items():
    name = hf_name(key)
    if (
      name == 'lm_head.weight'
      and name not in tensors
      and hf['tie_word_embeddings']
    ):
      name = 'shared.weight'  # transformers 5: an unscaled head tied to it.
    if name not in tensors:
      raise CheckpointError(
        f'{directory}: missing tensor {name} (t5x '
        f'{"/".join(key)}, shape {shape}).'
      )
    transposed = hf_transposed(key)
    value = tensors[name].T if transposed else tensors[name]
    if value.shape != shape:
      raise CheckpointError(
        f'{directory}: tensor {name} (t5x {"/".join(key)}) has shape '
        f'{tensors[name].shape}; config.json implies '
        f'{shape[::-1] if transposed else shape}.'
      )
    flat[key] = np.ascontiguousarray(value, np.float32)
    used.add(name)
  unexpected = sorted(set(tensors) - used)
  if unexpected:
    raise CheckpointError(
      f'{directory}: tensors not in a T5 of this config: '
      f'{", ".join(unexpected)}.'
    )
  return traverse_util.unflatten_dict(flat)


def _read_hf_tensors(directory: epath.Path) -> dict[str, np.ndarray]:
  """All tensors of the folder's weights: safetensors preferred, then .bin."""
  for weights, read in (
    ('model.safetensors', _read_safetensors),
    ('pytorch_model.bin', load_torch_state_dict),
  ):
    if (directory / weights).exists():
      return read(directory / weights)
    index = directory / f'{weights}.index.json'
    if index.exists():
      weight_map = _read_json(index).get('weight_map')
      if not isinstance(weight_map, dict):
        raise CheckpointError(f'{index}: no weight_map object.')
      for shard in weight_map.values():
        # Shards lie in the folder: a plain file name, nothing else.
        if (
          not isinstance(shard, str)
          or shard in ('', '.', '..')
          or '/' in shard
          or '\\' in shard
        ):
          raise CheckpointError(
            f'{index}: weight_map names {shard!r}, not a file in {directory}.'
          )
      return {
        name: value
        for shard in sorted(set(weight_map.values()))
        for name, value in read(directory / shard).items()
      }
  raise CheckpointError(
    f'{directory}: no model.safetensors or pytorch_model.bin (or their '
    '.index.json).'
  )


_SAFETENSORS_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
}


def _read_safetensors(path: epath.Path) -> dict[str, np.ndarray]:
  """safetensors' own parser; the dtype map adds bfloat16, which numpy lacks."""
  tensors = {}
  try:
    deserialized = safetensors.deserialize(_read_bytes(path))
  except safetensors.SafetensorError as error:
    raise CheckpointError(f'{path}: not a safetensors file: {error}') from None
  for name, tensor in deserialized:
    if tensor['dtype'] not in _SAFETENSORS_DTYPES:
      raise CheckpointError(
        f'{path}: tensor {name} has dtype {tensor["dtype"]}, not a float.'
      )
    tensors[name] = np.frombuffer(
      tensor['data'], _SAFETENSORS_DTYPES[tensor['dtype']]
    ).reshape(tensor['shape'])
  return tensors


# --- torch.save zip archives, read without torch and without running code --

_TORCH_STORAGES = {
  'DoubleStorage': np.float64,
  'FloatStorage': np.float32,
  'HalfStorage': np.float16,
  'BFloat16Storage': ml_dtypes.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
}


def load_torch_state_dict(
  path: str | os.PathLike[str],
) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict as numpy arrays, without importing torch.

  The pickle may only name torch's tensor rebuild function, its storage
  types and `collections.OrderedDict`; anything else (which could run
  arbitrary code on load) is refused before it is called.
  """
  path = epath.Path(path)
  try:
    with path.open('rb') as f:
      if not zipfile.is_zipfile(f):
        raise CheckpointError(
          f'{path}: not a zip archive; torch < 1.6 formats are '
          'not supported (convert the weights to safetensors).'
        )
      with zipfile.ZipFile(f) as archive:
        state = _read_torch_archive(archive, path)
  except CheckpointError:
    raise
  except OSError as error:
    raise CheckpointError(
      f'{path}: cannot be read: {error.strerror or error}'
    ) from None
  except Exception as error:  # pylint: disable=broad-except
    # A damaged archive or pickle fails in zipfile, zlib or pickle in many
    # ways; the restricted unpickler runs no code, so none is ours.
    raise CheckpointError(
      f'{path}: not a readable torch.save archive ({type(error).__name__}: '
      f'{_short(error)})'
    ) from None
  if not isinstance(state, dict) or not all(
    isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
  ):
    raise CheckpointError(f'{path}: does not hold a state dict of tensors.')
  return dict(state)


def _read_torch_archive(archive: zipfile.ZipFile, path: epath.Path) -> Any:
  """The object a torch.save zip archive pickled, each storage read once."""
  pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
  if len(pickles) != 1:
    raise CheckpointError(
      f'{path}: not a torch.save archive (no single data.pkl).'
    )
  prefix = pickles[0][: -len('data.pkl')]
  big_endian = (
    f'{prefix}byteorder' in archive.namelist()
    and archive.read(f'{prefix}byteorder') == b'big'
  )
  with archive.open(pickles[0]) as data:
    return _TorchUnpickler(data, archive, prefix, big_endian, path).load()


class _TorchUnpickler(pickle.Unpickler):
  """Rebuilds tensors as numpy arrays from the archive's raw storages."""

  def __init__(
    self,
    data: BinaryIO,
    archive: zipfile.ZipFile,
    prefix: str,
    big_endian: bool,
    path: epath.Path,
  ):
    super().__init__(data)
    self._archive = archive
    self._prefix = prefix
    self._byteorder = '>' if big_endian else '<'
    self._path = path
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == 'torch' and name in _TORCH_STORAGES:
      return np.dtype(_TORCH_STORAGES[name])
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    raise UnsafePickleError(
      f'{self._path}: refusing to load {module}.{name}: a state dict of '
      'tensors only needs torch storages, torch._utils._rebuild_tensor_v2 '
      'and collections.OrderedDict.'
    )

  def persistent_load(self, pid: Any) -> np.ndarray:
    match pid:
      case ('storage', np.dtype() as dtype, str() as key, _, _):
        if key not in self._storages:
          raw = self._archive.read(f'{self._prefix}data/{key}')
          self._storages[key] = np.frombuffer(
            raw, dtype.newbyteorder(self._byteorder)
          )
        return self._storages[key]
    raise pickle.UnpicklingError(f'{self._path}: unknown persistent id {pid}.')


def _rebuild_tensor(
  storage: np.ndarray,
  offset: int,
  size: tuple[int, ...],
  stride: tuple[int, ...],
  *unused: Any,
) -> np.ndarray:
  """A copy of the strided view torch describes, bounds-checked first."""
  del unused  # requires_grad, backward hooks, metadata.
  if not isinstance(storage, np.ndarray):
    raise pickle.UnpicklingError('tensor without a storage')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if (
    len(size) != len(stride)
    or offset < 0
    or min(stride, default=0) < 0
    or last >= storage.size
  ):
    raise pickle.UnpicklingError('tensor reaches outside its storage')
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], size, [s * storage.itemsize for s in stride]
  )
  return view.astype(view.dtype.newbyteorder('='))
