"""tools/bench_train.py: the analytic FLOPs and a run on the tiny model."""

import functools
import importlib.util
import os
from pathlib import Path
import re
import subprocess
import sys

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsbs_jax import network

# End to end: the benchmark tool in a subprocess.
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / 'tools' / 'bench_train.py'


@functools.cache  # its absl flags may be defined once per process
def _load_bench():
  spec = importlib.util.spec_from_file_location('bench_train', BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _kernel_sizes(tree) -> int:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return sum(
    leaf.size
    for path, leaf in leaves
    if jax.tree_util.keystr(path).endswith("['kernel']")
  )


def test_model_flops_count_every_kernel_once_per_token(tiny_config):
  """With equal input and target lengths every kernel of the network meets
  each token of a forward pass once: the matmul part of the estimate is
  6 x kernel parameters x tokens, per stack."""
  length, batch = 16, 3
  tokens = jnp.ones((1, length), jnp.int32)
  init = functools.partial(
    network.Transformer(tiny_config).init, enable_dropout=False
  )
  params = jax.eval_shape(init, jax.random.PRNGKey(0), tokens, tokens, tokens)[
    'params'
  ]
  params = nn.unbox(params)
  flops = _load_bench().model_flops_per_step(tiny_config, batch, length, length)
  cfg = tiny_config
  # Scores and values of one attention (decoder layers have two).
  attention = 6 * batch * 2 * length * length * cfg.num_heads * cfg.head_dim
  encoder_matmuls = flops['encoder'] - cfg.num_encoder_layers * attention
  decoder_matmuls = flops['decoder'] - 2 * cfg.num_decoder_layers * attention
  tokens = batch * length
  assert encoder_matmuls == 6 * tokens * _kernel_sizes(params['encoder'])
  assert decoder_matmuls == 6 * tokens * _kernel_sizes(params['decoder'])


def test_example_lengths_of_unpacked_and_packed_rows(tiny_config):
  bench = _load_bench()
  unpacked = {
    'encoder_input_tokens': np.array([[5, 6, 1, 0], [7, 1, 0, 0]]),
    'decoder_target_tokens': np.array([[3, 1, 0], [4, 1, 0]]),
  }
  assert bench.example_lengths(unpacked).tolist() == [[3, 2], [2, 2]]
  packed = {
    'encoder_input_tokens': np.array([[5, 1, 6, 7, 1, 0], [8, 1, 0, 0, 0, 0]]),
    'encoder_segment_ids': np.array([[1, 1, 2, 2, 2, 0], [1, 1, 0, 0, 0, 0]]),
    'decoder_target_tokens': np.array([[3, 1, 4, 4, 4, 1], [9, 1, 0, 0, 0, 0]]),
    'decoder_segment_ids': np.array([[1, 1, 2, 2, 2, 2], [1, 1, 0, 0, 0, 0]]),
  }
  lengths = bench.example_lengths(packed)
  assert lengths.tolist() == [[2, 2], [3, 4], [2, 2]]
  # Each example at its own lengths: less than the packed rows cost, whose
  # attention also spans the other example of the row.
  alone = bench.real_token_flops_per_step(tiny_config, lengths, steps=1)
  expected = sum(
    sum(bench.model_flops_per_step(tiny_config, 1, e, t).values())
    for e, t in ((2, 2), (3, 4), (2, 2))
  )
  assert alone == expected
  rows = sum(bench.model_flops_per_step(tiny_config, 2, 6, 6).values())
  assert alone < rows


def test_bench_prints_positive_measurements(tmp_path):
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
  }
  result = subprocess.run(
    [
      sys.executable,
      str(BENCH),
      '--gin_file=runs/dsbs.gin',
      '--gin_file=models/t5_1_1_tiny.gin',
      "--gin.DATASET='synthetic'",
      '--gin.BATCH_SIZE=8',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}",
      '--warmup_steps=2',
      '--steps=3',
      '--measure_peak',
      '--peak_matmul_size=256',
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  values = dict(re.findall(r'^(\w+): (\S+)', result.stdout, re.MULTILINE))
  for name in (
    'compile_seconds',
    'steps_per_second',
    'examples_per_second',
    'target_tokens_per_second',
    'model_flops_per_step',
    'xla_flops_per_step',
    'peak_tflops_per_device',
    'model_flops_utilisation',
    'xla_flops_utilisation',
    'xla_memory_bytes_per_device',
  ):
    assert float(values[name]) > 0, (name, result.stdout)
  for name in (
    'input_slots_real_fraction',
    'target_slots_real_fraction',
    'real_token_flops_share',
  ):
    assert 0 < float(values[name]) <= 1, (name, result.stdout)
  # The CPU backend reports no memory statistics; accelerators do.
  peak_memory = values['peak_memory_bytes_per_device']
  assert peak_memory == 'n/a' or float(peak_memory) > 0
  assert 'mesh data=2 model=1' in result.stdout
