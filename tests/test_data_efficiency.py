"""dsbs-data-efficiency: the grid, the reports, and a killed sweep resumed."""

import csv
import io
import json
import math
import os
from pathlib import Path
import signal
import subprocess
import time

from matplotlib import image
import pytest
import test_binaries
from test_binaries import _shared_compilation_cache  # noqa: F401 (autouse)

from dsbs_jax import checkpoints
from dsbs_jax import gin_utils
from dsbs_tasks import data_efficiency as de

ROWS = [
  {'method': 'dsbs', 'fraction': 0.5, 'seed': 0, 'value': 0.6},
  {'method': 'dsbs', 'fraction': 0.5, 'seed': 1, 'value': 0.7},
  {'method': 'dsbs', 'fraction': 0.5, 'seed': 2, 'value': 0.8},
  {'method': 'dsbs', 'fraction': 1.0, 'seed': 0, 'value': 0.9},
  {'method': 'finetune', 'fraction': 1.0, 'seed': 0, 'value': 0.25},
  {'method': 'finetune', 'fraction': 1.0, 'seed': 1, 'value': 0.75},
]
for _row in ROWS:
  _row.update(metric='accuracy', steps=30, wall_seconds=1.5)


def test_grid_runs_seeds_outermost_and_binds_each_cell():
  cells = de.parse_grid(['finetune', 'dsbs'], ['0.5', '1'], ['0', '1'])
  assert [(c.seed, c.fraction, c.method) for c in cells] == [
    (0, 0.5, 'finetune'),
    (0, 0.5, 'dsbs'),
    (0, 1.0, 'finetune'),
    (0, 1.0, 'dsbs'),
    (1, 0.5, 'finetune'),
    (1, 0.5, 'dsbs'),
    (1, 1.0, 'finetune'),
    (1, 1.0, 'dsbs'),
  ]
  assert cells[2].model_dir('/out') == '/out/finetune/frac1.0_seed0'
  assert cells[2].name == 'finetune frac1.0 seed0'
  assert de.cell_bindings(cells[1], '/out/d', 'test') == [
    "include 'methods/dsbs.gin'",
    'DATA_FRACTION = 0.5',
    'SEED = 0',
    "MODEL_DIR = '/out/d'",
    "train.train.final_eval_split = 'test'",
    'train.train.write_rationales = False',
  ]
  # Each method's file sets its macros; dsbs keeps the configured ALPHA.
  for method, macros in (
    ('finetune', "MODE = 'finetune'\nLABEL_SOURCE = 'gt'\nALPHA = 1.0"),
    ('dsbs', "MODE = 'dsbs'\nLABEL_SOURCE = 'llm'"),
  ):
    path = gin_utils.project_gin_dir() / de.METHODS[method]
    lines = path.read_text().splitlines()
    assert [line for line in lines if not line.startswith('#')] == (
      macros.splitlines()
    )


@pytest.mark.parametrize(
  'methods,fractions,seeds,message',
  [
    (['sft'], ['1'], ['0'], "--methods: 'sft' is not a known method"),
    (['dsbs'], ['0'], ['0'], "--fractions: '0' is not a number in (0, 1]"),
    (['dsbs'], ['1.5'], ['0'], "'1.5' is not a number in (0, 1]"),
    (['dsbs'], ['half'], ['0'], "'half' is not a number in (0, 1]"),
    (['dsbs'], ['nan'], ['0'], "'nan' is not a number in (0, 1]"),
    (['dsbs'], ['1'], ['x'], "--seeds: 'x' is not an integer"),
    ([], ['1'], ['0'], '--methods needs at least one value'),
    (['dsbs'], [], ['0'], '--fractions needs at least one value'),
    (['dsbs'], ['1'], ['0', '0'], 'no repeats'),
  ],
)
def test_bad_grid_flags_are_named(methods, fractions, seeds, message):
  with pytest.raises(gin_utils.GinConfigError) as error:
    de.parse_grid(methods, fractions, seeds)
  assert message in str(error.value)


def test_the_metric_is_the_evaluated_tasks():
  assert de.metric_value({'t': {'accuracy': 0.5, 'n': 3}}, 'accuracy') == 0.5
  with pytest.raises(gin_utils.GinConfigError, match=r"are \['accuracy'\]"):
    de.metric_value({'t': {'accuracy': 0.5}}, 'f1')


def test_summaries_are_mean_and_sample_std_over_seeds():
  summaries = de.summarize(ROWS)
  assert set(summaries) == {('dsbs', 0.5), ('dsbs', 1.0), ('finetune', 1.0)}
  # By hand: mean 0.7; squared deviations 0.01 + 0 + 0.01 over n - 1 = 2.
  three = summaries['dsbs', 0.5]
  assert three.n == 3
  assert math.isclose(three.mean, 0.7)
  assert math.isclose(three.std, 0.1)
  # mean 0.5; (0.0625 + 0.0625) / 1.
  two = summaries['finetune', 1.0]
  assert (two.n, two.mean) == (2, 0.5)
  assert math.isclose(two.std, math.sqrt(0.125))
  assert summaries['dsbs', 1.0] == de.Summary(0.9, None, 1)


def test_markdown_table():
  table = de.markdown_table(
    de.summarize(ROWS), ['finetune', 'dsbs'], [0.5, 1.0], 'accuracy'
  )
  assert table == (
    '| accuracy (mean ± std (seeds)) | fraction 0.5 | fraction 1 |\n'
    '| --- | ---: | ---: |\n'
    '| finetune |  | 0.5000 ± 0.3536 (2) |\n'
    '| dsbs | 0.7000 ± 0.1000 (3) | 0.9000 ± – (1) |\n'
  )


def test_csv_has_one_row_per_result():
  rows = list(csv.reader(io.StringIO(de.csv_text(ROWS))))
  assert rows[0] == list(de.CSV_COLUMNS)
  assert rows[1] == ['dsbs', '0.5', '0', 'accuracy', '0.6', '30', '1.5']
  assert len(rows) == 1 + len(ROWS)


def test_plot_is_a_png():
  png = de.plot_png(
    de.summarize(ROWS), ['finetune', 'dsbs'], [0.5, 1.0], 'accuracy', 'cqa'
  )
  pixels = image.imread(io.BytesIO(png), format='png')
  assert pixels.shape == (480, 640, 4)


def test_durations_read_easily():
  assert de.format_duration(62.4) == '62 s'
  assert de.format_duration(44 * 60) == '44 min'
  assert de.format_duration(3 * 3600) == '3.0 h'


def test_cell_clock_sums_the_attempts(tmp_path, monkeypatch):
  monkeypatch.setattr(de, '_CLOCK_PERIOD_SECONDS', 0.05)
  progress = tmp_path / 'progress.json'
  with de._CellClock(str(tmp_path)):
    time.sleep(0.3)
    # Saved while it runs: a killed attempt's time counts too.
    assert json.loads(progress.read_text())['wall_seconds'] > 0.1
  first = json.loads(progress.read_text())['wall_seconds']
  with de._CellClock(str(tmp_path)) as clock:
    time.sleep(0.2)
  assert first >= 0.3
  assert math.isclose(
    clock.seconds() - first, clock.this_attempt(), abs_tol=0.01
  )
  assert json.loads(progress.read_text())['wall_seconds'] >= first + 0.2


def _command(output_dir: Path, *extra: str) -> list[str]:
  return [
    'dsbs-data-efficiency',
    '--gin_file=runs/dsbs.gin',
    '--gin_file=models/t5_1_1_tiny.gin',
    "--gin.DATASET='synthetic'",
    '--gin.BATCH_SIZE=8',
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 48}",
    '--gin.TRAIN_STEPS=30',
    '--gin.CHECKPOINT_PERIOD=5',
    '--gin.EVAL_PERIOD=None',
    '--gin.LEARNING_RATE=0.01',
    # A short final evaluation.
    '--gin.synthetic_splits.num_test=16',
    f'--output_dir={output_dir}',
    *extra,
  ]


@pytest.mark.parametrize(
  'flag,message',
  [
    ('--fractions=0.5,2', "--fractions: '2' is not a number in (0, 1]"),
    ('--methods=dsbs,sft', "--methods: 'sft' is not a known method"),
  ],
)
def test_bad_flags_exit_with_status_2_before_training(tmp_path, flag, message):
  result = subprocess.run(
    _command(tmp_path, flag),
    capture_output=True,
    text=True,
    env=test_binaries.binary_env(),
    timeout=300,
    check=False,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert message in result.stderr.splitlines()[-1]
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_writes_the_reports(tmp_path):
  output_dir = tmp_path / 'sweep'
  command = _command(
    output_dir, '--methods=finetune,dsbs', '--fractions=0.5,1.0', '--seeds=0'
  )
  first_cell = output_dir / 'finetune' / 'frac0.5_seed0'
  second_cell = output_dir / 'dsbs' / 'frac0.5_seed0'
  with open(tmp_path / 'killed.log', 'w') as log:
    process = subprocess.Popen(
      command, env=test_binaries.binary_env(), stdout=log, stderr=log
    )
    # Kill it once the second cell has a checkpoint but no result.
    deadline = time.time() + 300
    while not checkpoints.finished_steps(second_cell):
      assert process.poll() is None, (tmp_path / 'killed.log').read_text()
      assert time.time() < deadline
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert not (second_cell / 'result.json').exists()
  first_result = (first_cell / 'result.json').read_text()
  first_mtime = (first_cell / 'result.json').stat().st_mtime_ns
  saved = checkpoints.finished_steps(second_cell)[-1]
  assert saved < 30

  start = time.time()
  result = subprocess.run(
    command,
    capture_output=True,
    text=True,
    env=test_binaries.binary_env(),
    timeout=600,
    check=False,
  )
  print(f'rerun: {time.time() - start:.0f} s\n{result.stdout}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '[1/4] finetune frac0.5 seed0: finished earlier' in result.stdout
  assert '[2/4] dsbs frac0.5 seed0: accuracy' in result.stdout
  assert '[4/4] dsbs frac1.0 seed0: accuracy' in result.stdout
  assert 'ETA' in result.stdout
  assert f'Resuming from step {saved}.' in result.stderr
  assert result.stderr.count('Resuming from step') == 1
  assert (first_cell / 'result.json').read_text() == first_result
  assert (first_cell / 'result.json').stat().st_mtime_ns == first_mtime

  second = json.loads((second_cell / 'result.json').read_text())
  assert second['steps'] == 30
  with open(output_dir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['method'], r['fraction'], r['seed']) for r in rows] == [
    ('finetune', '0.5', '0'),
    ('dsbs', '0.5', '0'),
    ('finetune', '1.0', '0'),
    ('dsbs', '1.0', '0'),
  ]
  assert list(rows[0]) == list(de.CSV_COLUMNS)
  for row in rows:
    assert row['metric'] == 'accuracy' and row['steps'] == '30'
    assert 0 <= float(row['value']) <= 1 and float(row['wall_seconds']) > 0
  table = (output_dir / 'results.md').read_text().splitlines()
  assert 'fraction 0.5 | fraction 1 |' in table[0]
  assert [line.split(' | ')[0] for line in table[2:]] == [
    '| finetune',
    '| dsbs',
  ]
  assert all(line.count('± – (1)') == 2 for line in table[2:])
  pixels = image.imread(output_dir / 'data_efficiency.png')
  assert pixels.shape == (480, 640, 4)
