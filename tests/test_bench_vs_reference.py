"""tools/bench_vs_reference.py: the two commands describe one comparison,
and the outputs of both benchmarks are read right."""

import importlib.util
from pathlib import Path

import pytest
import test_bench

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'bench_vs_reference.py'


@pytest.fixture(scope='module')
def tool():
  # Its flags are defined next to tools/bench_train.py's, which
  # tests/test_bench.py loads into the same process.
  test_bench._load_bench()
  spec = importlib.util.spec_from_file_location('bench_vs_reference', TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _flags(command):
  return dict(arg.split('=', 1) for arg in command if arg.startswith('--'))


@pytest.mark.parametrize('shape', ['tiny', 'small'])
def test_both_systems_get_the_same_model_data_and_batch(tool, shape):
  sizes = tool.SHAPES[shape]
  ours = _flags(tool.our_command(sizes, 32, (512, 256), 30, 3, False, '/d'))
  theirs = _flags(
    tool.reference_command('/ref', sizes, 16, (512, 256), 30, 3, 2, '/d')
  )
  # Our rows are examples: a pair is two of them.
  assert ours['--gin.BATCH_SIZE'] == '32' and theirs['--batch-size'] == '16'
  assert ours['--gin.TASK_FEATURE_LENGTHS'] == "{'inputs': 512, 'targets': 256}"
  assert (theirs['--input-len'], theirs['--target-len']) == ('512', '256')
  assert ours['--gin.DATA_DIR'] == "'/d'" and theirs['--data-dir'] == '/d'
  assert ours['--gin.DATASET'] == "'cqa'"
  for hf_name, our_name in tool._OUR_NAMES.items():
    value = str(sizes[hf_name])
    assert ours[f'--gin.network.T5Config.{our_name}'] == value
    assert theirs[f'--{hf_name.replace("_", "-")}'] == value
  assert (ours['--steps'], ours['--warmup_steps']) == ('30', '3')
  assert (theirs['--steps'], theirs['--warmup']) == ('30', '3')


def test_outputs_are_read_and_summarised(tool):
  ours = tool.our_rates(
    'devices: 1 x cpu\nexamples_per_second: 40\n'
    'target_tokens_per_second: 900 (non-padding)\n'
  )
  assert ours == {'pairs_per_second': 20.0, 'target_tokens_per_second': 900.0}
  reference = tool.reference_rates(
    'warning: something\n{"pairs_per_s": 10.0,\n'
    ' "nonpad_target_tokens_per_s": 600.0, "mode": "bench_cqa"}\n'
  )
  assert reference == {
    'pairs_per_second': 10.0,
    'target_tokens_per_second': 600.0,
  }
  summary = tool.summary(
    [ours, {'pairs_per_second': 30.0, 'target_tokens_per_second': 1100.0}],
    [reference, reference],
  )
  assert summary['ours_pairs_per_second'] == 25.0
  assert summary['ratio_pairs_per_second'] == 2.5
  assert summary['ratio_target_tokens_per_second'] == pytest.approx(1000 / 600)
