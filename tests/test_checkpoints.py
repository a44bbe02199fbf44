"""Importing weights: t5x checkpoints (legacy, orbax), HuggingFace T5 folders.

References: the checkpoints the real t5x wrote (tests/testdata/t5x_tiny),
and HuggingFace transformers' own T5 run on the same weights and batch.
"""

import json
import os
import pickle
import shutil
import zipfile

from conftest import T5X_TINY_DIR
from etils import epath
from flax import linen as nn
from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numerics
import numpy as np
import pytest
import safetensors.numpy
import tensorstore as ts
import torch
import transformers

from dsbs_jax import checkpoint_import
from dsbs_jax import checkpoints
from dsbs_jax import network
from dsbs_jax import partitioning


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def test_t5x_legacy_and_orbax_checkpoints_load_the_same_tree(tiny_config):
  legacy = _flat(
    checkpoint_import.load_params(
      T5X_TINY_DIR / 'legacy_checkpoint_400', tiny_config
    )
  )
  orbax = _flat(
    checkpoint_import.load_params(
      T5X_TINY_DIR / 'orbax_checkpoint_400', tiny_config
    )
  )

  tokens = jnp.zeros((2, 5), jnp.int32)
  init = jax.eval_shape(
    lambda: network.Transformer(tiny_config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
    )
  )
  expected = {k: v.shape for k, v in _flat(nn.unbox(init['params'])).items()}

  assert {k: v.shape for k, v in legacy.items()} == expected
  assert legacy.keys() == orbax.keys()
  for key, value in legacy.items():
    assert value.dtype == np.float32 and orbax[key].dtype == np.float32
    np.testing.assert_array_equal(value, orbax[key], err_msg=str(key))


def test_misshapen_t5x_checkpoint_names_the_parameter(tiny_config):
  with pytest.raises(
    ValueError,
    match=r'encoder/layers_0/mlp/wi_0/kernel has '
    r'shape \(32, 64\), expected \(32, 48\)',
  ):
    checkpoint_import.load_params(
      T5X_TINY_DIR / 'legacy_checkpoint_400', tiny_config.replace(mlp_dim=48)
    )


def test_legacy_checkpoint_moved_with_inline_and_old_style_leaves(
  tiny_config, tmp_path
):
  """Specs are relative to wherever the checkpoint lies now; small leaves may
  be inline; tensorstore < 0.1.14 specs carry the path outside the kvstore."""
  original = T5X_TINY_DIR / 'legacy_checkpoint_400'
  expected = _flat(checkpoint_import.load_params(original))
  moved = tmp_path / 'checkpoint_400'
  shutil.copytree(original, moved)
  state = serialization.msgpack_restore((moved / 'checkpoint').read_bytes())
  target = state['optimizer']['target']
  target['encoder']['encoder_norm']['scale'] = expected[
    ('encoder', 'encoder_norm', 'scale')
  ]
  shutil.rmtree(moved / 'target.encoder.encoder_norm.scale')
  old_style = target['decoder']['relpos_bias']['rel_embedding']
  old_style['path'] = old_style['kvstore'].pop('path')
  old_style['kvstore'] = {'driver': 'gcs', 'bucket': 't5x-dummy-bucket'}
  (moved / 'checkpoint').write_bytes(serialization.msgpack_serialize(state))

  loaded = _flat(checkpoint_import.load_params(moved, tiny_config))
  assert loaded.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(loaded[key], value, err_msg=str(key))


def test_legacy_spec_under_gcs_directory_reads_from_its_bucket():
  leaf = {
    'driver': 'zarr',
    'dtype': 'float32',
    'kvstore': {'driver': 'file', 'path': 'target.a.kernel/'},
    'metadata': {'shape': [3]},
  }
  spec = checkpoint_import._absolute_spec(
    epath.Path('gs://bkt/run/checkpoint_5'), leaf
  )
  assert ts.Spec(spec).kvstore.to_json() == {
    'driver': 'gcs',
    'bucket': 'bkt',
    'path': 'run/checkpoint_5/target.a.kernel/',
  }


# --- HuggingFace --------------------------------------------------------------

# T5.1.1 (gated GELU, separate lm_head, more decoder than encoder layers) and
# T5 1.0 (ReLU, tied embedding, num_heads * d_kv != d_model, few buckets).
_HF_CONFIGS = {
  't5_1_1': dict(
    vocab_size=100,
    d_model=32,
    num_heads=4,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=3,
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
  ),
  't5_1_0': dict(
    vocab_size=100,
    d_model=32,
    num_heads=4,
    d_kv=16,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    feed_forward_proj='relu',
    tie_word_embeddings=True,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
  ),
}


def _hf_model(variant: str) -> transformers.T5ForConditionalGeneration:
  torch.manual_seed(0)
  config = transformers.T5Config(dropout_rate=0.0, **_HF_CONFIGS[variant])
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    # Norm scales start at 1; make them distinct so a swap would show.
    for name, param in model.named_parameters():
      if 'layer_norm' in name:
        param.uniform_(0.5, 1.5)
  if not _HF_CONFIGS[variant]['tie_word_embeddings']:
    # transformers 5 ties lm_head to `shared` regardless: untie by hand.
    model.lm_head.weight = torch.nn.Parameter(
      torch.randn_like(model.shared.weight)
    )
  return model


@pytest.fixture(scope='module', params=sorted(_HF_CONFIGS))
def hf_model(request, tmp_path_factory):
  """(model, folder with model.safetensors, folder with pytorch_model.bin)."""
  model = _hf_model(request.param)
  safe_dir = tmp_path_factory.mktemp(f'{request.param}_safetensors')
  model.save_pretrained(safe_dir)
  assert (safe_dir / 'model.safetensors').exists()
  bin_dir = tmp_path_factory.mktemp(f'{request.param}_bin')
  model.config.save_pretrained(bin_dir)
  torch.save(model.state_dict(), bin_dir / 'pytorch_model.bin')
  return model, safe_dir, bin_dir


def _batch(vocab_size: int) -> dict[str, np.ndarray]:
  """Padded batch of mixed lengths; decoder inputs are targets shifted right."""
  rng = np.random.default_rng(0)
  enc = np.zeros((3, 12), np.int32)
  tgt = np.zeros((3, 8), np.int32)
  for row, (n_in, n_out) in enumerate([(9, 5), (4, 8), (12, 2)]):
    enc[row, :n_in] = rng.integers(2, vocab_size, n_in)
    tgt[row, :n_out] = rng.integers(2, vocab_size, n_out)
  dec = np.zeros_like(tgt)
  dec[:, 1:] = tgt[:, :-1]  # decoder start token 0
  return {
    'encoder_input_tokens': enc,
    'decoder_input_tokens': dec,
    'decoder_target_tokens': tgt,
  }


@pytest.mark.parametrize('weights', ['safetensors', 'bin'])
def test_hf_weights_give_hf_logits(hf_model, weights):
  model, safe_dir, bin_dir = hf_model
  folder = safe_dir if weights == 'safetensors' else bin_dir
  config = checkpoint_import.config_from_hf(folder)
  params = checkpoint_import.load_params(folder, config)
  assert ('logits_dense' in params['decoder']) == (
    not config.logits_via_embedding
  )

  batch = _batch(config.vocab_size)
  ours = network.Transformer(config).apply(
    {'params': params}, **batch, enable_dropout=False
  )
  enc = torch.from_numpy(batch['encoder_input_tokens']).long()
  with torch.no_grad():
    theirs = model(
      input_ids=enc,
      attention_mask=(enc != 0).long(),
      decoder_input_ids=torch.from_numpy(batch['decoder_input_tokens']).long(),
    ).logits.numpy()
  real = batch['decoder_target_tokens'] != 0  # padding positions differ
  numerics.assert_close(
    np.asarray(ours)[real], theirs[real], numerics.OTHER_LIBRARY, 'logits'
  )


def _edited_copy(folder, destination, edit):
  """A copy of a safetensors folder with `edit` applied to its tensors."""
  shutil.copytree(folder, destination)
  tensors = safetensors.numpy.load_file(destination / 'model.safetensors')
  edit(tensors)
  safetensors.numpy.save_file(tensors, destination / 'model.safetensors')
  return destination


def test_hf_missing_tensor_is_named(hf_model, tmp_path):
  name = 'decoder.block.1.layer.2.DenseReluDense.wo.weight'
  folder = _edited_copy(hf_model[1], tmp_path / 'm', lambda t: t.pop(name))
  with pytest.raises(
    ValueError,
    match=rf'missing tensor {name} \(t5x '
    r'decoder/layers_1/mlp/wo/kernel',
  ):
    checkpoint_import.load_params(folder)


def test_hf_misshapen_tensor_is_named(hf_model, tmp_path):
  name = 'encoder.block.1.layer.0.SelfAttention.k.weight'
  inner = hf_model[0].config.num_heads * hf_model[0].config.d_kv

  def shrink(tensors):
    tensors[name] = tensors[name][:-1]

  folder = _edited_copy(hf_model[1], tmp_path / 'm', shrink)
  with pytest.raises(
    ValueError,
    match=(
      rf'tensor {name} \(t5x encoder/layers_1/attention/key/kernel\) has '
      rf'shape \({inner - 1}, 32\); config.json implies \({inner}, 32\)'
    ),
  ):
    checkpoint_import.load_params(folder)


def test_hf_unknown_tensor_is_named(hf_model, tmp_path):
  name = 'encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight'

  def add(tensors):
    tensors[name] = tensors[
      'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'
    ]

  folder = _edited_copy(hf_model[1], tmp_path / 'm', add)
  with pytest.raises(ValueError, match=rf'not in a T5 of this config: {name}'):
    checkpoint_import.load_params(folder)


def test_torch_state_dict_views_and_dtypes_match_torch(tmp_path):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = {
    'matrix': base,
    'transposed': base.t(),  # shares the storage, other strides
    'row': base[2],  # storage offset
    'strided': base[1:, ::2],
    'half': torch.randn(3, 5).half(),
    'bf16': torch.randn(7).bfloat16(),
    'scalar': torch.tensor(3.5),
    'empty': torch.zeros(0, 4),
  }
  torch.save(state, tmp_path / 'w.bin')
  loaded = checkpoint_import.load_torch_state_dict(tmp_path / 'w.bin')
  assert loaded.keys() == state.keys()
  for name, tensor in state.items():
    expected = tensor.float().numpy()
    assert loaded[name].shape == expected.shape, name
    np.testing.assert_array_equal(
      loaded[name].astype(np.float32), expected, err_msg=name
    )


class _RunsShell:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def test_bin_with_foreign_global_is_refused_unexecuted(hf_model, tmp_path):
  marker = tmp_path / 'pwned'
  folder = tmp_path / 'evil'
  folder.mkdir()
  shutil.copy(hf_model[2] / 'config.json', folder)
  with zipfile.ZipFile(folder / 'pytorch_model.bin', 'w') as archive:
    archive.writestr(
      'archive/data.pkl',
      pickle.dumps({'shared.weight': _RunsShell(marker)}, protocol=2),
    )
  with pytest.raises(
    pickle.UnpicklingError,
    match=r'refusing to load '
    rf'{os.system.__module__}\.system',
  ):
    checkpoint_import.load_params(folder)
  assert not marker.exists()


def test_hf_config_json_maps_to_t5_config(hf_model):
  model, safe_dir, _ = hf_model
  hf = model.config
  with open(safe_dir / 'config.json') as f:
    written = json.load(f)
  config = checkpoint_import.config_from_hf(safe_dir)
  assert (
    config.vocab_size,
    config.emb_dim,
    config.num_heads,
    config.head_dim,
    config.mlp_dim,
    config.num_encoder_layers,
    config.num_decoder_layers,
    config.num_buckets,
    config.max_distance,
    config.layer_norm_epsilon,
    config.dropout_rate,
  ) == (
    hf.vocab_size,
    hf.d_model,
    hf.num_heads,
    hf.d_kv,
    hf.d_ff,
    hf.num_layers,
    hf.num_decoder_layers,
    hf.relative_attention_num_buckets,
    hf.relative_attention_max_distance,
    hf.layer_norm_epsilon,
    hf.dropout_rate,
  )
  gated = written['feed_forward_proj'] == 'gated-gelu'
  assert config.mlp_activations == (('gelu', 'linear') if gated else ('relu',))
  assert config.logits_via_embedding == hf.scale_decoder_outputs


def _param_shardings(config, mesh_shape):
  partitioner = partitioning.Partitioner(mesh_shape=mesh_shape)
  tokens = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(
    lambda: network.Transformer(config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
    )
  )['params']
  return partitioner.params_shardings(boxed)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_t5x_checkpoints_restore_shard_by_shard(
  tiny_config, scan_layers, monkeypatch
):
  """Onto 8 devices (data 2 x model 4), each device's slice of a t5x legacy
  checkpoint is read on its own: a parameter split over `model` is never
  read whole, and each slice is read once for its replicas. Both formats
  give the values of a whole read, in the requested shardings; with scanned
  layers, stacked on the devices."""
  tiny_config = tiny_config.replace(scan_layers=scan_layers)
  shardings = _param_shardings(tiny_config, (2, 4))
  reads = []  # per array read: (its shape, the slices read for devices)
  make_array = jax.make_array_from_callback

  def recording(shape, sharding, callback, *args, **kwargs):
    slices = []
    reads.append((tuple(shape), slices))

    def read(index):
      slices.append(callback(index))
      return slices[-1]

    return make_array(shape, sharding, read, *args, **kwargs)

  monkeypatch.setattr(jax, 'make_array_from_callback', recording)
  for name in ('legacy_checkpoint_400', 'orbax_checkpoint_400'):
    path = T5X_TINY_DIR / name
    whole = checkpoint_import.load_params(path, tiny_config)
    reads.clear()
    sharded = checkpoint_import.load_params(path, tiny_config, shardings)
    flat_whole = traverse_util.flatten_dict(whole)
    flat_sharded = traverse_util.flatten_dict(sharded)
    flat_shardings = traverse_util.flatten_dict(shardings)
    assert flat_sharded.keys() == flat_whole.keys()
    for key, value in flat_sharded.items():
      np.testing.assert_array_equal(np.asarray(value), flat_whole[key])
      assert value.sharding.is_equivalent_to(flat_shardings[key], value.ndim)
    if name.startswith('legacy'):
      legacy_reads = list(reads)

  # Each array once, in its devices' slices; replicas share one read.
  assert legacy_reads
  for shape, slices in legacy_reads:
    distinct = {id(value): value for value in slices}.values()
    assert sum(value.size for value in distinct) == np.prod(shape)
  mlp = (tiny_config.emb_dim, tiny_config.mlp_dim)
  mlp_slices = [
    value.shape
    for shape, slices in legacy_reads
    if shape == mlp
    for value in slices
  ]
  assert mlp_slices and set(mlp_slices) == {
    (tiny_config.emb_dim, tiny_config.mlp_dim // 4)
  }


@pytest.mark.parametrize('saved_scanned', [False, True])
def test_own_checkpoints_restore_into_either_layout(
  tiny_config, saved_scanned, tmp_path
):
  """A run's checkpoint, saved with scanned layers or t5x's per-layer
  modules, restores (for evaluation, inference, export) into a model of the
  other layout: the same values, in the model's shardings."""
  saved_config = tiny_config.replace(scan_layers=saved_scanned)
  config = tiny_config.replace(scan_layers=not saved_scanned)
  reference = checkpoint_import.load_params(
    T5X_TINY_DIR / 'legacy_checkpoint_400', saved_config
  )
  checkpointer = checkpoints.TrainCheckpointer(str(tmp_path), period=1)
  checkpointer.save(7, {'params': reference, 'step': 7}, force=True)
  checkpointer.wait()

  shardings = _param_shardings(config, (2, 4))
  shapes = traverse_util.unflatten_dict(
    {
      k: jax.ShapeDtypeStruct(s, np.float32)
      for k, s in checkpoint_import.param_shapes(config).items()
    }
  )
  params, step = checkpoints.restore_params(
    str(tmp_path), shapes, shardings, config
  )
  assert step == 7
  expected = (
    network.unstack_layers(reference, saved_config)
    if saved_scanned
    else network.stack_layers(reference, config)
  )
  flat, flat_expected = _flat(params), _flat(expected)
  assert flat.keys() == flat_expected.keys()
  flat_shardings = _flat(shardings)
  for key, value in flat.items():
    np.testing.assert_array_equal(np.asarray(value), flat_expected[key])
    assert value.sharding.is_equivalent_to(flat_shardings[key], value.ndim)
