r"""Compiles the train step for a TPU slice on this machine: does it fit?

  python tools/aot_compile.py --topology=v5e:2x2 \
    --gin_file=runs/dsbs.gin --gin_file=models/t5_1_1_base.gin \
    --gin.BATCH_SIZE=32 --gin_file=meshes/tpu_pod_slice.gin

Takes the train binary's gin flags and `--topology` (any name
`jax.experimental.topologies.get_topology_desc` accepts: v4:2x2x1, v5e:4x4,
v5p:2x2x1, ...). It builds the model, trainer and partitioner the train
binary would, on the devices of that slice, and lowers and compiles the exact
train step for abstract inputs with the real TPU compiler (libtpu: `pip
install -e ".[aot]"`), as MaxText's train_compile.py does. Nothing is
allocated and no data, vocabulary or checkpoint is read; the vocabulary size
comes from the model's T5Config. No TPU is needed, and the CPU stays jax's
default backend. It prints one `name: value` line each (docs/scaling.md).
"""

import copy
import importlib.util
import math
import sys
import time

from absl import flags
import gin
import jax
from jax.experimental import topologies

from dsbs_jax import checkpoints
from dsbs_jax import data
from dsbs_jax import gin_utils
from dsbs_jax import network
from dsbs_jax import partitioning
from dsbs_jax import trainer as trainer_lib

_TOPOLOGY = flags.DEFINE_string(
  'topology', None, 'A TPU slice, e.g. v5e:2x2, v4:2x2x1, v5p:2x2x1.'
)
# High-bandwidth memory per chip, by jax's device_kind, from the Cloud TPU
# system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e).
HBM_BYTES = {
  'TPU v4': 32 * 2**30,
  'TPU v5 lite': 16 * 2**30,
  'TPU v5': 95 * 2**30,
  'TPU v5p': 95 * 2**30,
  'TPU v6 lite': 32 * 2**30,
}
HBM_SOURCE = 'Cloud TPU system architecture pages'
# What a plan may use of a chip's memory and still be said to fit.
FITS_FRACTION = 0.9
# The exit status when libtpu is missing (as for configuration errors).
NO_LIBTPU_STATUS = 2


def shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays."""
  return sum(
    math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
    for a in jax.tree.leaves(tree)
  )


def activation_bytes(
  cfg: network.T5Config, rows: int, inputs: int, targets: int, model: int
) -> int:
  """Activations one device keeps for the backward pass, counted tensor by
  tensor for T5's layers in the manner of Korthikanti et al. 2022 (arXiv
  2205.05198, section 4): `rows` sequences of `inputs`/`targets` tokens per
  device and microbatch, heads and MLP split over `model` chips.

  `none` keeps each block's inputs, norms, projections, attention
  probabilities (and dropout masks) and MLP activations; `minimal` keeps
  each layer's input and the projection outputs, `full` each layer's input;
  both then hold one layer's full set while it is recomputed. The logits and
  their softmax are float32. XLA may fuse or recompute on its own, so the
  compiler's figure can be lower.
  """
  act = jax.numpy.dtype(cfg.dtype).itemsize
  drop = 1 if cfg.dropout_rate > 0 else 0  # one byte per dropout mask entry
  d, heads = cfg.emb_dim, cfg.num_heads / model
  kv, f = heads * cfg.head_dim, cfg.mlp_dim / model
  n = len(cfg.mlp_activations)

  def attention(sq, sk, kept):
    projections = act * ((sq + 2 * sk) * kv + sq * d)
    if kept == 'minimal':
      return projections
    return (
      projections
      + act * sq * (2 * d + kv)  # input, its norm; context
      + (act * (1 + drop) + drop) * heads * sq * sk  # probabilities
      + drop * sq * d
    )

  def mlp(s, kept):
    projections = act * s * (n * f + d)
    if kept == 'minimal':
      return projections
    return projections + act * s * (2 * d + n * f) + drop * s * (f + d)

  def layers(kept):
    encoder = attention(inputs, inputs, kept) + mlp(inputs, kept)
    decoder = (
      attention(targets, targets, kept)
      + attention(targets, inputs, kept)
      + mlp(targets, kept)
    )
    return encoder, decoder

  encoder, decoder = layers('none')
  enc_min, dec_min = layers('minimal')
  layer_inputs = (
    act
    * d
    * (cfg.num_encoder_layers * inputs + cfg.num_decoder_layers * targets)
  )
  recomputed = max(encoder, decoder)  # one layer's set, while recomputed
  kept_by_policy = {
    'none': cfg.num_encoder_layers * encoder + cfg.num_decoder_layers * decoder,
    'minimal': layer_inputs
    + cfg.num_encoder_layers * enc_min
    + cfg.num_decoder_layers * dec_min
    + recomputed,
    'full': layer_inputs + recomputed,
  }
  if set(kept_by_policy) != set(network.REMAT_POLICIES):
    raise ValueError(
      f'activation_bytes estimates {sorted(kept_by_policy)}, but the network '
      f'has the remat policies {sorted(network.REMAT_POLICIES)}'
    )
  if cfg.remat_policy not in kept_by_policy:
    raise ValueError(
      f'remat_policy must be one of {tuple(network.REMAT_POLICIES)}, got '
      f'{cfg.remat_policy!r}'
    )
  kept = kept_by_policy[cfg.remat_policy]
  logits = 2 * 4 * targets * cfg.vocab_size / model
  return int(rows * (kept + logits))


def compile_train_step(topology: str) -> None:
  """Prints the compiled train step's memory per chip, FLOPs and fit."""
  # v4 and v5p chips hold two cores that jax drives as one device.
  megacore = topology.startswith(('v4', 'v5p'))
  devices = topologies.get_topology_desc(
    platform='tpu',
    topology_name=topology,
    chip_config_name='megacore' if megacore else 'default',
  ).devices
  # The train binary's bindings, references unresolved: the gin files'
  # Partitioner is built below on the slice's devices instead of ours.
  bindings = gin.get_bindings('dsbs_jax.train.train', resolve_references=False)
  for name in ('model', 'train_dataset'):
    if name not in bindings:
      raise gin_utils.GinConfigError(
        f'train.train.{name} is not bound; add a run file such as '
        '--gin_file=runs/dsbs.gin.'
      )
  # Deep copies evaluate gin's references (`@model()`), as gin's own do.
  model = copy.deepcopy(bindings['model'])
  dataset = copy.deepcopy(bindings['train_dataset'])
  trainer_cls = copy.deepcopy(bindings.get('trainer_cls', trainer_lib.Trainer))
  partitioner = partitioning.Partitioner(
    **gin.get_bindings('dsbs_jax.partitioning.Partitioner'), devices=devices
  )
  trainer = trainer_cls(model=model, partitioner=partitioner)
  converter = model.FEATURE_CONVERTER_CLS(pack=dataset.pack)
  input_shapes = data.model_input_shapes(dataset, converter)
  state = checkpoints.abstract_arrays(
    *trainer.state_shapes_and_shardings(input_shapes)
  )
  batch = {
    name: jax.ShapeDtypeStruct(
      shape, jax.numpy.int32, sharding=partitioner.batch_sharding
    )
    for name, shape in input_shapes.items()
  }
  kind = devices[0].device_kind
  mesh = partitioner.mesh.shape
  print(
    f'topology: {topology}, {len(devices)} x {kind}, mesh '
    f'data={mesh["data"]} model={mesh["model"]}'
  )
  print(
    f'batch: {dataset.batch_size} sequences, lengths '
    f'{dict(dataset.task_feature_lengths)}, '
    f'{trainer.num_microbatches} microbatch(es), pack={dataset.pack}'
  )
  start = time.perf_counter()
  try:
    compiled = trainer.lower_train_step(state, batch).compile()
    refusal = None
  except jax.errors.JaxRuntimeError as error:
    # The TPU compiler refuses a program that cannot fit, naming the need.
    if 'RESOURCE_EXHAUSTED' not in str(error):
      raise
    compiled = None
    refusal = str(error).split('RESOURCE_EXHAUSTED: ', 1)[-1].splitlines()[0]
  print(f'compile_seconds: {time.perf_counter() - start:.4g}')
  print_memory(compiled, refusal, kind)

  config = model.module.config
  params = shard_bytes(state.params)
  optimizer = shard_bytes(state.opt_state)
  activations = activation_bytes(
    config,
    dataset.batch_size // (mesh['data'] * trainer.num_microbatches),
    input_shapes['encoder_input_tokens'][1],
    input_shapes['decoder_target_tokens'][1],
    mesh['model'],
  )
  print(
    f'analytic_bytes_per_device: {2 * params + optimizer + activations} '
    f'(parameters {params}, optimizer {optimizer}, gradients {params}, '
    f'activations {activations})'
  )
  if compiled is not None:
    flops = (compiled.cost_analysis() or {}).get('flops')
    # XLA's cost analysis counts a loop body once, not once per iteration.
    once = ' (each scanned stack: one layer)' if config.scan_layers else ''
    print(
      f'xla_flops_per_device: {flops:.4g}{once}' if flops else 'xla_flops: n/a'
    )


def print_memory(compiled, refusal: str | None, kind: str) -> None:
  """The per-chip memory lines: XLA's analysis, or the compiler's refusal
  of a program larger than HBM; the chip's HBM; whether it fits."""
  hbm = HBM_BYTES.get(kind)
  if compiled is None:
    print(f'per_device_memory_bytes: n/a (the TPU compiler: {refusal})')
  else:
    memory = compiled.memory_analysis()
    used = (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      - memory.alias_size_in_bytes
      + memory.temp_size_in_bytes
    )
    print(
      f'per_device_memory_bytes: {used} (arguments '
      f'{memory.argument_size_in_bytes}, outputs '
      f'{memory.output_size_in_bytes}, aliased {memory.alias_size_in_bytes}'
      f', temporaries {memory.temp_size_in_bytes})'
    )
  if hbm is None:
    print(f'device_memory_bytes: n/a (no figure for {kind!r})')
    print('fits: no (more than HBM)' if compiled is None else 'fits: n/a')
    return
  print(f'device_memory_bytes: {hbm} ({kind}, {HBM_SOURCE})')
  if compiled is None:
    print('fits: no (more than HBM)')
    return
  share = used / hbm
  print(
    f'fits: {"yes" if share <= FITS_FRACTION else "no"} '
    f'({share:.1%} of HBM; the bound is {FITS_FRACTION:.0%})'
  )


def main() -> None:
  if importlib.util.find_spec('libtpu') is None:
    print(
      'aot_compile needs libtpu, the TPU compiler: pip install -e ".[aot]"',
      file=sys.stderr,
    )
    sys.exit(NO_LIBTPU_STATUS)

  def run() -> None:
    if not _TOPOLOGY.value:
      raise gin_utils.GinConfigError('--topology is required (e.g. v5e:2x2).')
    compile_train_step(_TOPOLOGY.value)

  # Compiling for a slice here is not running on it: no multi-host runtime,
  # even with a mesh file that starts one (meshes/tpu_pod_slice.gin).
  sys.argv.append(
    '--gin_bindings='
    'dsbs_jax.partitioning.initialize_distributed.enabled = False'
  )
  gin_utils.run(run)


if __name__ == '__main__':
  main()
