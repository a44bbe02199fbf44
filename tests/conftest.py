"""Shared test fixtures: reference paths and the t5x reference's tiny T5."""

import os
from pathlib import Path

# Tests run on the CPU, with 8 simulated devices for the sharding tests.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import pytest  # pylint: disable=g-import-not-at-top

from dsbs_jax import network  # pylint: disable=g-import-not-at-top

SHARED_DIR = Path(__file__).resolve().parents[2] / 'shared'
T5X_TINY_DIR = SHARED_DIR / 'reference' / 't5x_tiny'
DATASETS_DIR = SHARED_DIR / 'data' / 'datasets'


@pytest.fixture
def tiny_config() -> network.T5Config:
  """The configuration of ../shared/reference/t5x_tiny (its README)."""
  return network.T5Config(
    vocab_size=384,
    emb_dim=32,
    num_heads=4,
    head_dim=8,
    mlp_dim=64,
    mlp_activations=('gelu', 'linear'),
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
    logits_via_embedding=False,
  )
