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
import pytest

from dsbs_jax import network

# End to end: the benchmark tool in a subprocess.
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / 'tools' / 'bench_train.py'


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
  # The CPU backend reports no memory statistics; accelerators do.
  peak_memory = values['peak_memory_bytes_per_device']
  assert peak_memory == 'n/a' or float(peak_memory) > 0
  assert 'mesh data=2 model=1' in result.stdout
