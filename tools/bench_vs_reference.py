r"""Our train step beside the reference's PyTorch step, on the same data.

  python tools/bench_vs_reference.py --shape=tiny --rounds=2 \
    --data_dir=../shared/data/datasets \
    --reference_dir=../shared/bench/reference_hf

Both systems train distilling step-by-step on the cqa train split with the
teacher's labels and rationales, byte tokens, the same model shape and the
same pairs (label example + rationale example) per step:

- ours: `tools/bench_train.py` with runs/dsbs.gin and the tiny model's gin
  file, its T5Config set to the shape, BATCH_SIZE = 2 × pairs (one row per
  example; `--pack` packs them) and the given TASK_FEATURE_LENGTHS;
- the reference: `bench_cqa.py` of the harness in `--reference_dir` (the
  original release's step re-created with HuggingFace transformers: two
  passes per step, each padded to its own longest sequence).

They run one after the other, `--rounds` times (A B A B: both see the same
machine load), each in its own process. Prints each run's pairs/s and real
target tokens/s, then the medians and our/reference ratio, one
`name: value` line each (docs/benchmark.md).
"""

from collections.abc import Sequence
import json
import os
import re
import statistics
import subprocess
import sys

from absl import app
from absl import flags

# The two model shapes of the comparison (HuggingFace T5Config names).
SHAPES = {
  'tiny': dict(
    vocab_size=384,
    d_model=32,
    num_heads=4,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
  ),
  'small': dict(  # T5.1.1-small's layers with the byte vocabulary
    vocab_size=384,
    d_model=512,
    num_heads=6,
    d_kv=64,
    d_ff=1024,
    num_layers=8,
    num_decoder_layers=8,
  ),
}
# HuggingFace T5Config names -> our T5Config names.
_OUR_NAMES = {
  'vocab_size': 'vocab_size',
  'd_model': 'emb_dim',
  'num_heads': 'num_heads',
  'd_kv': 'head_dim',
  'd_ff': 'mlp_dim',
  'num_layers': 'num_encoder_layers',
  'num_decoder_layers': 'num_decoder_layers',
}
_TOOLS = os.path.dirname(os.path.abspath(__file__))

_SHAPE = flags.DEFINE_enum('shape', 'tiny', list(SHAPES), 'Model shape.')
_PAIRS = flags.DEFINE_integer('pairs', 16, 'Pairs per step.', lower_bound=1)
_INPUT_LENGTH = flags.DEFINE_integer('input_length', 512, 'Input length.')
_TARGET_LENGTH = flags.DEFINE_integer('target_length', 256, 'Target length.')
# Not `steps`: tools/bench_train.py, which this runs, has that flag.
_STEPS = flags.DEFINE_integer('steps_per_run', 30, 'Timed steps per run.')
_WARMUP = flags.DEFINE_integer('warmup_per_run', 3, 'Untimed steps per run.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Runs of each system.')
_PACK = flags.DEFINE_bool('pack', False, 'Pack our examples (PACK=True).')
_ROWS = flags.DEFINE_integer(
  'rows',
  None,
  'Our rows per step (BATCH_SIZE); default 2 × pairs, one example a row. '
  'Packed rows hold several: 2 × pairs ÷ the examples per row that '
  'dsbs-lengths prints.',
)
_OUR_LENGTHS = flags.DEFINE_list(
  'our_lengths',
  None,
  'Our input,target lengths, e.g. 1024,440 for packed rows; default '
  '--input_length,--target_length.',
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir', '../shared/data/datasets', 'The release data (cqa).'
)
_REFERENCE_DIR = flags.DEFINE_string(
  'reference_dir',
  '../shared/bench/reference_hf',
  'The folder of the reference harness (bench_cqa.py).',
)
_THREADS = flags.DEFINE_integer('threads', 2, "The reference's torch threads.")


def our_command(
  shape: dict[str, int],
  rows: int,
  lengths: tuple[int, int],
  steps: int,
  warmup: int,
  pack: bool,
  data_dir: str,
) -> list[str]:
  """tools/bench_train.py on cqa with the tiny model's gin file reshaped."""
  inputs, targets = lengths
  return [
    sys.executable,
    os.path.join(_TOOLS, 'bench_train.py'),
    '--gin_file=runs/dsbs.gin',
    '--gin_file=models/t5_1_1_tiny.gin',
    "--gin.DATASET='cqa'",
    f'--gin.DATA_DIR={os.path.abspath(data_dir)!r}',
    f'--gin.BATCH_SIZE={rows}',
    f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {inputs}, 'targets': {targets}}}",
    f'--gin.PACK={pack}',
    *(
      f'--gin.network.T5Config.{_OUR_NAMES[name]}={value}'
      for name, value in shape.items()
    ),
    f'--steps={steps}',
    f'--warmup_steps={warmup}',
  ]


def reference_command(
  reference_dir: str,
  shape: dict[str, int],
  pairs: int,
  lengths: tuple[int, int],
  steps: int,
  warmup: int,
  threads: int,
  data_dir: str,
) -> list[str]:
  """The harness's bench_cqa.py with the same shape, data and lengths."""
  return [
    sys.executable,
    os.path.join(reference_dir, 'bench_cqa.py'),
    *(f'--{name.replace("_", "-")}={value}' for name, value in shape.items()),
    f'--batch-size={pairs}',
    f'--input-len={lengths[0]}',
    f'--target-len={lengths[1]}',
    f'--steps={steps}',
    f'--warmup={warmup}',
    f'--threads={threads}',
    f'--data-dir={os.path.abspath(data_dir)}',
    f'--project-root={os.path.dirname(_TOOLS)}',
  ]


def our_rates(output: str) -> dict[str, float]:
  """Pairs/s and real target tokens/s from bench_train.py's lines."""
  values = dict(re.findall(r'^(\w+): (\S+)', output, re.MULTILINE))
  return {
    'pairs_per_second': float(values['examples_per_second']) / 2,
    'target_tokens_per_second': float(values['target_tokens_per_second']),
  }


def reference_rates(output: str) -> dict[str, float]:
  """Pairs/s and real target tokens/s from bench_cqa.py's JSON."""
  result = json.loads(output[output.index('{') :])
  return {
    'pairs_per_second': result['pairs_per_s'],
    'target_tokens_per_second': result['nonpad_target_tokens_per_s'],
  }


def summary(
  ours: Sequence[dict[str, float]], reference: Sequence[dict[str, float]]
) -> dict[str, float]:
  """Medians of each system's runs and the ratios ours / reference."""
  out = {}
  for name in ('pairs_per_second', 'target_tokens_per_second'):
    mine = statistics.median(run[name] for run in ours)
    theirs = statistics.median(run[name] for run in reference)
    out[f'ours_{name}'] = mine
    out[f'reference_{name}'] = theirs
    out[f'ratio_{name}'] = mine / theirs
  return out


def _run(command: list[str]) -> str:
  result = subprocess.run(
    command,
    capture_output=True,
    text=True,
    check=False,
    cwd=os.path.dirname(_TOOLS),
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
  )
  if result.returncode:
    sys.exit(f'{" ".join(command[:2])} failed:\n{result.stderr[-3000:]}')
  return result.stdout


def main(argv: Sequence[str]) -> None:
  del argv
  shape = SHAPES[_SHAPE.value]
  lengths = (_INPUT_LENGTH.value, _TARGET_LENGTH.value)
  rows = _ROWS.value or 2 * _PAIRS.value
  our_lengths = tuple(map(int, _OUR_LENGTHS.value or lengths))
  mine = our_command(
    shape,
    rows,
    our_lengths,
    _STEPS.value,
    _WARMUP.value,
    _PACK.value,
    _DATA_DIR.value,
  )
  theirs = reference_command(
    _REFERENCE_DIR.value,
    shape,
    _PAIRS.value,
    lengths,
    _STEPS.value,
    _WARMUP.value,
    _THREADS.value,
    _DATA_DIR.value,
  )
  ours, reference = [], []
  for round_ in range(1, _ROUNDS.value + 1):
    for name, command, parse, runs in (
      ('ours', mine, our_rates, ours),
      ('reference', theirs, reference_rates, reference),
    ):
      runs.append(parse(_run(command)))
      print(
        f'round {round_} {name}: '
        f'{runs[-1]["pairs_per_second"]:.3g} pairs/s, '
        f'{runs[-1]["target_tokens_per_second"]:.4g} target tokens/s',
        flush=True,
      )
  print(
    f'shape: {_SHAPE.value} {shape}; reference: {_PAIRS.value} pairs per '
    f'step, lengths {lengths}; ours: {rows} rows of {our_lengths}, '
    f'pack={_PACK.value}'
  )
  for name, value in summary(ours, reference).items():
    print(f'{name}: {value:.4g}')


if __name__ == '__main__':
  app.run(main)
