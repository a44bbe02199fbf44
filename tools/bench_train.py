r"""Measures training speed and FLOPs utilisation of a gin configuration.

  python tools/bench_train.py \
    --gin_file=runs/dsbs.gin --gin_file=models/t5_1_1_base.gin \
    --gin.DATASET="'cqa'" --gin.BATCH_SIZE=64 \
    --warmup_steps=3 --steps=20 --peak_tflops=275

Takes the train binary's flags (`--gin_file`, `--gin.NAME=value`,
`--gin_search_paths`) and builds the model, trainer, partitioner and input
pipeline that `dsbs_jax.train` would. Parameters are initialised randomly: no
checkpoint is read (INITIAL_CHECKPOINT_PATH is ignored) and none is written, so
MODEL_DIR is not needed. XLA compiles and analyses the train step; then it
runs `--warmup_steps` untimed steps and times `--steps` steps end to end
(input pipeline included, waiting for the last step to finish). Process 0
prints one `name: value` line per measurement; docs/benchmark.md explains
them.
"""

import dataclasses
import time
from typing import Any

from absl import flags
import gin
import jax
import jax.numpy as jnp
import numpy as np

from dsbs_jax import data
from dsbs_jax import gin_utils
from dsbs_jax import network
from dsbs_jax import partitioning
from dsbs_jax import trainer as trainer_lib

_WARMUP_STEPS = flags.DEFINE_integer(
  'warmup_steps',
  2,
  'Untimed steps between compiling and timing.',
  lower_bound=0,
)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.', lower_bound=1)
_PEAK_TFLOPS = flags.DEFINE_float(
  'peak_tflops',
  None,
  "Peak TFLOP/s of one device (the chip's datasheet figure for the "
  "model's dtype), the denominator of the utilisations.",
)
_MEASURE_PEAK = flags.DEFINE_bool(
  'measure_peak',
  False,
  "Measure the peak instead: TFLOP/s of a square matmul in the model's "
  'dtype on one device.',
)
_PEAK_MATMUL_SIZE = flags.DEFINE_integer(
  'peak_matmul_size',
  8192,
  'Side of the matmul that --measure_peak times.',
  lower_bound=1,
)
_PROFILE_DIR = flags.DEFINE_string(
  'profile_dir',
  None,
  'Trace the timed steps with jax.profiler into this folder, for '
  'TensorBoard or Perfetto (docs/benchmark.md); slows them a little.',
)


def model_flops_per_step(
  config: network.T5Config,
  batch_size: int,
  inputs_length: int,
  targets_length: int,
) -> dict[str, float]:
  """Model FLOPs of one training step, for the encoder and the decoder.

  Forward and backward cost 3 forward passes of 2 FLOPs per multiply-add. A
  forward pass multiplies every token by the matrices it meets (attention
  projections, MLP, logits; the cross-attention keys and values are the
  encoder's tokens) and adds attention's score and value products. Lengths are
  the padded ones, which is what the hardware computes; norms, softmax and
  the optimizer are left out, as model-FLOPs utilisation conventionally does.
  """
  d = config.emb_dim
  inner = config.num_heads * config.head_dim
  mlp = (len(config.mlp_activations) + 1) * d * config.mlp_dim
  e, t = inputs_length, targets_length
  encoder_layer = e * (4 * d * inner + mlp) + 2 * e * e * inner
  decoder_layer = (
    t * (6 * d * inner + mlp)
    + e * 2 * d * inner
    + 2 * t * t * inner
    + 2 * t * e * inner
  )
  encoder = config.num_encoder_layers * encoder_layer
  decoder = (
    config.num_decoder_layers * decoder_layer + t * d * config.vocab_size
  )
  return {
    'encoder': 6.0 * batch_size * encoder,
    'decoder': 6.0 * batch_size * decoder,
  }


def real_token_flops_per_step(
  config: network.T5Config, lengths: np.ndarray, steps: int
) -> float:
  """Model FLOPs per step of the examples alone: each at its own input and
  target lengths, without padding or the other examples packed in its row
  (lengths: this host's [examples, 2] over `steps` steps)."""
  pairs, counts = np.unique(lengths, axis=0, return_counts=True)
  total = sum(
    count * sum(model_flops_per_step(config, 1, int(e), int(t)).values())
    for (e, t), count in zip(pairs, counts)
  )
  return total * jax.process_count() / steps


def measure_peak_tflops(dtype: Any, size: int, repeats: int = 10) -> float:
  """TFLOP/s of one device on a `size`² matmul: a practical peak."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  b = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()  # compile
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a, b)
  out.block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_memory_bytes() -> int | None:
  """The largest peak in use on this host's devices, if the backend says."""
  peaks = [
    (device.memory_stats() or {}).get('peak_bytes_in_use')
    for device in jax.local_devices()
  ]
  peaks = [peak for peak in peaks if peak is not None]
  return max(peaks) if peaks else None


def _line(name: str, value: float | None, note: str = '') -> None:
  text = 'n/a' if value is None else f'{value:.4g}'
  print(f'{name}: {text}' + (f' ({note})' if note else ''))


@dataclasses.dataclass
class Timing:
  """What one benchmark run measured."""

  compiled: jax.stages.Compiled  # the train step, for XLA's analyses
  compile_seconds: float
  seconds: float  # of the timed steps
  examples: int  # in the timed steps, on all hosts
  target_tokens: int  # non-padding, in the timed steps, on all hosts
  # (input tokens, target tokens) of each example in this host's timed steps.
  example_lengths: np.ndarray
  # Input and target slots (tokens and padding) of this host's timed steps.
  input_slots: int
  target_slots: int


def example_lengths(local_batch: dict[str, np.ndarray]) -> np.ndarray:
  """[examples, 2]: the input and target tokens of each example of a host's
  batch; a packed row holds several (its segments)."""
  inputs = local_batch['encoder_input_tokens'] > 0
  targets = local_batch['decoder_target_tokens'] > 0
  if 'encoder_segment_ids' not in local_batch:
    lengths = np.stack([inputs.sum(axis=1), targets.sum(axis=1)], axis=1)
  else:
    segments = [
      local_batch['encoder_segment_ids'],
      local_batch['decoder_segment_ids'],
    ]
    width = max(int(s.max()) for s in segments) + 1
    offsets = np.arange(len(segments[0]))[:, None] * width
    lengths = np.stack(
      [
        np.bincount((s + offsets).ravel(), minlength=offsets.size * width)
        .reshape(-1, width)[:, 1:]
        .ravel()
        for s in segments
      ],
      axis=1,
    )
  return lengths[lengths.sum(axis=1) > 0]


def time_train_steps(
  trainer: trainer_lib.Trainer, train_dataset: data.DatasetConfig
) -> Timing:
  """Compiles the train step, warms up, then times `--steps` steps."""
  model, partitioner = trainer.model, trainer.partitioner
  converter = model.FEATURE_CONVERTER_CLS(pack=train_dataset.pack)
  state = trainer.init_state(data.model_input_shapes(train_dataset, converter))
  batches = data.get_batches(train_dataset, converter)
  next_batch = lambda: partitioner.global_batch(next(batches))

  start = time.perf_counter()
  compiled = trainer.lower_train_step(state, next_batch()).compile()
  compile_seconds = time.perf_counter() - start

  for _ in range(_WARMUP_STEPS.value):
    state, _ = trainer.train_step(state, next_batch())
  jax.block_until_ready(state)

  local_batches = []  # measured after the timing
  examples = tokens = 0
  if _PROFILE_DIR.value:
    jax.profiler.start_trace(_PROFILE_DIR.value)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    local_batch = next(batches)
    local_batches.append(local_batch)
    batch_examples, batch_tokens = data.batch_statistics(local_batch)
    examples, tokens = examples + batch_examples, tokens + batch_tokens
    state, metrics = trainer.train_step(
      state, partitioner.global_batch(local_batch)
    )
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  if _PROFILE_DIR.value:
    jax.profiler.stop_trace()
  return Timing(
    compiled,
    compile_seconds,
    seconds,
    examples * jax.process_count(),
    tokens * jax.process_count(),
    np.concatenate([example_lengths(b) for b in local_batches]),
    sum(b['encoder_input_tokens'].size for b in local_batches),
    sum(b['decoder_target_tokens'].size for b in local_batches),
  )


def report(
  timing: Timing,
  trainer: trainer_lib.Trainer,
  train_dataset: data.DatasetConfig,
) -> None:
  """Prints the measurements, one `name: value (note)` line each."""
  config = trainer.model.module.config
  lengths = train_dataset.task_feature_lengths
  model_flops = model_flops_per_step(
    config, train_dataset.batch_size, lengths['inputs'], lengths['targets']
  )
  model_total = model_flops['encoder'] + model_flops['decoder']
  # Per device: the partitioned program is the same on every device.
  xla_flops = (timing.compiled.cost_analysis() or {}).get('flops')
  xla_note = 'XLA cost analysis, all devices'
  if config.scan_layers:
    # XLA's cost analysis counts a loop body once, not once per iteration.
    xla_flops, xla_note = None, 'scanned layers: XLA counts one per stack'
  if xla_flops is not None:
    xla_flops *= jax.device_count()
  if _MEASURE_PEAK.value:
    peak = measure_peak_tflops(config.dtype, _PEAK_MATMUL_SIZE.value)
    peak_note = (
      f'measured: {jnp.dtype(config.dtype).name} '
      f'{_PEAK_MATMUL_SIZE.value}² matmul on one device'
    )
  else:
    peak = _PEAK_TFLOPS.value
    peak_note = (
      'given'
      if peak
      else 'give --peak_tflops or --measure_peak for utilisations'
    )
  total_peak = peak * 1e12 * jax.device_count() if peak else None
  rates = trainer_lib.throughput(
    _STEPS.value, timing.seconds, timing.examples, timing.target_tokens
  )

  mesh = trainer.partitioner.mesh.shape
  print(
    f'devices: {jax.device_count()} x {jax.devices()[0].platform} in '
    f'{jax.process_count()} process(es), mesh data={mesh["data"]} '
    f'model={mesh["model"]}'
  )
  print(
    f'batch: {train_dataset.batch_size} sequences, lengths '
    f'{dict(train_dataset.task_feature_lengths)}, '
    f'{trainer.num_microbatches} microbatch(es); '
    f'{_WARMUP_STEPS.value} warm-up and {_STEPS.value} timed steps'
  )
  _line('compile_seconds', timing.compile_seconds)
  _line('steps_per_second', rates['steps_per_second'])
  _line('examples_per_second', rates['examples_per_second'])
  _line(
    'target_tokens_per_second', rates['target_tokens_per_second'], 'non-padding'
  )
  _line(
    'model_flops_per_step',
    model_total,
    f'analytic: encoder {model_flops["encoder"]:.4g}, '
    f'decoder {model_flops["decoder"]:.4g}',
  )
  _line('xla_flops_per_step', xla_flops, xla_note)
  real_tokens = timing.example_lengths.sum(axis=0)
  _line(
    'input_slots_real_fraction',
    real_tokens[0] / timing.input_slots,
    'input tokens ÷ input slots, this host',
  )
  _line(
    'target_slots_real_fraction',
    real_tokens[1] / timing.target_slots,
    'target tokens ÷ target slots, this host',
  )
  real_flops = real_token_flops_per_step(
    config, timing.example_lengths, _STEPS.value
  )
  _line(
    'real_token_flops_share',
    real_flops / xla_flops if xla_flops else None,
    'analytic FLOPs of each example at its own lengths ÷ XLA FLOPs',
  )
  _line('peak_tflops_per_device', peak, peak_note)
  for name, flops in (
    ('model_flops_utilisation', model_total),
    ('xla_flops_utilisation', xla_flops),
  ):
    _line(
      name,
      flops * rates['steps_per_second'] / total_peak
      if flops and total_peak
      else None,
    )
  memory = timing.compiled.memory_analysis()
  used = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  _line(
    'xla_memory_bytes_per_device',
    used,
    f'arguments {memory.argument_size_in_bytes}, outputs '
    f'{memory.output_size_in_bytes}, aliased {memory.alias_size_in_bytes},'
    f' temporaries {memory.temp_size_in_bytes}',
  )
  peak_memory = peak_memory_bytes()
  _line(
    'peak_memory_bytes_per_device',
    peak_memory,
    'largest on this host'
    if peak_memory is not None
    else f'not reported by the {jax.devices()[0].platform} backend',
  )


def bench() -> None:
  """Times the train step the train binary's gin bindings configure."""
  # The gin files import dsbs_jax.train; its bindings, references resolved.
  bindings = gin.get_bindings('dsbs_jax.train.train')
  for name in ('model', 'train_dataset'):
    if name not in bindings:
      raise gin_utils.GinConfigError(
        f'train.train.{name} is not bound; add a run file such as '
        '--gin_file=runs/dsbs.gin.'
      )
  trainer_cls = bindings.get('trainer_cls', trainer_lib.Trainer)
  trainer = trainer_cls(
    model=bindings['model'],
    partitioner=bindings.get('partitioner') or partitioning.Partitioner(),
  )
  timing = time_train_steps(trainer, bindings['train_dataset'])
  if jax.process_index() == 0:
    report(timing, trainer, bindings['train_dataset'])


if __name__ == '__main__':
  gin_utils.run(bench)
