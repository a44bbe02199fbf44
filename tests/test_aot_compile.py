"""tools/aot_compile.py: the train step compiled for a TPU slice, here."""

import importlib.util
from pathlib import Path
import re
import subprocess
import sys

import pytest
import test_binaries

from dsbs_jax import network

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'aot_compile.py'


def _aot_compile(*flags: str) -> dict[str, str]:
  """The tool's `name: value` lines for the main job's model on v5e:2x2."""
  result = subprocess.run(
    [
      sys.executable,
      str(TOOL),
      '--topology=v5e:2x2',
      '--gin_file=runs/main.gin',
      '--gin_file=meshes/params_2d.gin',
      *flags,
    ],
    capture_output=True,
    text=True,
    env=test_binaries.binary_env(),
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(re.findall(r'^(\w+): (.+)$', result.stdout, re.MULTILINE))


@pytest.mark.parametrize('scan_layers', [False, True])
def test_tiny_model_compiles_for_a_v5e_slice_and_fits(scan_layers):
  values = _aot_compile(f'--gin.network.T5Config.scan_layers={scan_layers}')
  assert values['topology'].startswith('v5e:2x2, 4 x TPU v5 lite, mesh data=4')
  used = re.match(
    r'(\d+) \(arguments (\d+), outputs (\d+), aliased (\d+)',
    (values['per_device_memory_bytes']),
  )
  total, arguments, outputs, aliased = map(int, used.groups())
  # The donated train state is aliased: arguments and outputs counted once.
  assert 0 < aliased <= min(arguments, outputs) and total >= arguments
  assert values['device_memory_bytes'].startswith(str(16 * 2**30))
  assert values['fits'].startswith('yes')
  assert float(values['compile_seconds']) > 0
  assert float(values['xla_flops_per_device'].split()[0]) > 0
  # The analytic count of the train state's shards is held in XLA's
  # arguments (with the batch, and padding of small arrays to TPU tiles).
  estimate = re.match(
    r'(\d+) \(parameters (\d+), optimizer (\d+), gradients (\d+), '
    r'activations (\d+)\)',
    values['analytic_bytes_per_device'],
  )
  _, params, optimizer, gradients, activations = map(int, estimate.groups())
  assert params == gradients and activations > 0
  assert 0 < params + optimizer <= arguments


def test_a_plan_too_large_for_the_chip_is_answered_no():
  """The TPU compiler refuses what exceeds HBM; the tool reports the
  refusal as the answer (`fits: no`), with the analytic estimate beside."""
  values = _aot_compile('--gin.BATCH_SIZE=262144')
  assert values['per_device_memory_bytes'].startswith('n/a (the TPU compiler')
  assert 'HBM' in values['per_device_memory_bytes']
  assert values['fits'].startswith('no')
  estimate = int(values['analytic_bytes_per_device'].split()[0])
  assert estimate > 16 * 2**30


@pytest.fixture(scope='module')
def tool():
  """The tool as a module (loaded once: it defines absl flags)."""
  spec = importlib.util.spec_from_file_location('aot_compile', TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_estimate_knows_every_remat_policy_and_no_other(tool):
  """One estimate per policy of the network's table, in the order of what
  they keep; an unknown policy is an error, not another policy's figure."""
  config = network.T5Config(
    vocab_size=32128,
    emb_dim=768,
    num_heads=12,
    head_dim=64,
    mlp_dim=2048,
    num_encoder_layers=12,
    num_decoder_layers=12,
  )
  kept = {
    policy: tool.activation_bytes(
      config.replace(remat_policy=policy), 8, 1024, 256, 2
    )
    for policy in network.REMAT_POLICIES
  }
  assert kept['none'] > kept['minimal'] > kept['full'] > 0
  with pytest.raises(ValueError, match="remat_policy must be one of .*'fulll'"):
    tool.activation_bytes(config.replace(remat_policy='fulll'), 8, 1024, 256, 2)


def test_without_libtpu_it_says_so_and_exits_2(tool, monkeypatch, capsys):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    'find_spec',
    lambda name, *a: None if name == 'libtpu' else find_spec(name, *a),
  )
  with pytest.raises(SystemExit) as exit_info:
    tool.main()
  assert exit_info.value.code == 2
  [line] = capsys.readouterr().err.strip().splitlines()
  assert 'libtpu' in line and '.[aot]' in line
