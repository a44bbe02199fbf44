r"""The paper's data-efficiency comparison: methods × data fractions × seeds.

  dsbs-data-efficiency \
    --gin_file=runs/dsbs.gin --gin_file=models/t5_1_1_base.gin \
    --gin.DATASET="'cqa'" --gin.TRAIN_STEPS=10000 \
    --output_dir=/tmp/data_efficiency

Trains and evaluates one model per cell of the grid `--methods` ×
`--fractions` × `--seeds`, each with the train binary's configuration (the
same gin flags) plus the cell's bindings: the method's gin file (`METHODS`),
DATA_FRACTION, SEED and MODEL_DIR = OUTPUT_DIR/METHOD/frac<F>_seed<S>. The
cells run one after another in this process, so TensorFlow and seqio load
once, and on a pod slice every worker runs this same command, as with the
train binary. After each cell, process 0 writes to OUTPUT_DIR `results.csv`
(one row per finished cell), `results.md` (mean ± std over seeds) and
`data_efficiency.png` (the metric against the fraction, one line per method).

Rerunning the same command skips finished cells (those with `result.json`)
and resumes an unfinished one from its last checkpoint. A preemption signal
(SIGTERM, SIGINT) stops the sweep after that cell's checkpoint, with exit
status 3. docs/data_efficiency.md has the details.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import csv
import dataclasses
import io
import itertools
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

from absl import flags
import gin
import jax
from jax.experimental import multihost_utils
from matplotlib import figure
import numpy as np
import tensorflow as tf

from dsbs_jax import gin_utils
from dsbs_jax import train as train_lib

# Each method's gin file (gin/methods/): its macros MODE, LABEL_SOURCE and
# ALPHA, which runs/finetune.gin, runs/distill.gin and runs/single_task.gin
# include too. dsbs keeps ALPHA as the gin configuration gives it
# (runs/task.gin: 0.5).
METHODS = {
  method: f'methods/{method}.gin'
  for method in ('finetune', 'distill', 'dsbs', 'single_task')
}
CSV_COLUMNS = (
  'method',
  'fraction',
  'seed',
  'metric',
  'value',
  'steps',
  'wall_seconds',
)
# Exit status of a sweep stopped by a preemption signal: rerun to resume.
PREEMPTED_EXIT_STATUS = 3
# How often a running cell saves its wall time, which a killed attempt loses
# at most this much of.
_CLOCK_PERIOD_SECONDS = 10.0

_OUTPUT_DIR = flags.DEFINE_string(
  'output_dir', None, 'Where the cells and the results go (required).'
)
_METHODS = flags.DEFINE_list(
  'methods', list(METHODS), f'Methods to compare, from {", ".join(METHODS)}.'
)
_FRACTIONS = flags.DEFINE_list(
  'fractions',
  ['0.125', '0.25', '0.5', '1.0'],
  'Fractions of the training set, each in (0, 1].',
)
_SEEDS = flags.DEFINE_list(
  'seeds', ['0', '1', '2'], 'Seeds (of the data subset and the model).'
)
_EVAL_SPLIT = flags.DEFINE_string(
  'eval_split', 'test', 'The split each cell is evaluated on after training.'
)
_METRIC = flags.DEFINE_string(
  'metric', 'accuracy', 'The metric of the final evaluation to compare.'
)


class Preempted(Exception):
  """A cell's training stopped for a signal, before its final evaluation."""


@dataclasses.dataclass(frozen=True)
class Cell:
  method: str
  fraction: float
  seed: int

  @property
  def name(self) -> str:
    return f'{self.method} frac{self.fraction!r} seed{self.seed}'

  def model_dir(self, output_dir: str) -> str:
    return os.path.join(
      output_dir, self.method, f'frac{self.fraction!r}_seed{self.seed}'
    )


def parse_grid(
  methods: Sequence[str], fractions: Sequence[str], seeds: Sequence[str]
) -> list[Cell]:
  """The cells, seeds outermost, so that one seed of every method and
  fraction finishes first; raises `GinConfigError` on bad flag values."""

  def check(name, values, parse, valid, requirement):
    parsed = []
    for value in values:
      try:
        parsed.append(parse(value))
      except ValueError:
        parsed.append(None)
      if not valid(parsed[-1]):
        raise gin_utils.GinConfigError(
          f'--{name}: {value!r} is not {requirement}.'
        )
    if not parsed or len(set(parsed)) < len(parsed):
      raise gin_utils.GinConfigError(
        f'--{name} needs at least one value and no repeats, got {values}.'
      )
    return parsed

  methods = check(
    'methods',
    methods,
    str,
    METHODS.__contains__,
    f'a known method ({", ".join(METHODS)})',
  )
  fractions = check(
    'fractions',
    fractions,
    float,
    lambda f: f is not None and 0 < f <= 1,
    'a number in (0, 1]',
  )
  seeds = check('seeds', seeds, int, lambda s: s is not None, 'an integer')
  return [
    Cell(method, fraction, seed)
    for seed, fraction, method in itertools.product(seeds, fractions, methods)
  ]


def cell_bindings(cell: Cell, model_dir: str, eval_split: str) -> list[str]:
  """The gin bindings of one cell, parsed after the user's so they win."""
  macros = {
    'DATA_FRACTION': cell.fraction,
    'SEED': cell.seed,
    'MODEL_DIR': model_dir,
  }
  return [
    f'include {METHODS[cell.method]!r}',
    *(f'{name} = {value!r}' for name, value in macros.items()),
    f'train.train.final_eval_split = {eval_split!r}',
    'train.train.write_rationales = False',
  ]


def metric_value(metrics: Mapping[str, Any], metric: str) -> float:
  """`metric` from a metrics.json's `metrics` ({task: {name: value}})."""
  values = [m[metric] for m in metrics.values() if metric in m]
  if len(values) != 1:
    available = sorted({name for m in metrics.values() for name in m})
    raise gin_utils.GinConfigError(
      f'--metric={metric}: the evaluation has {len(values)} values of it '
      f'(one expected); its metrics are {available}.'
    )
  return float(values[0])


def csv_text(results: Sequence[Mapping[str, Any]]) -> str:
  """results.csv: one row per finished cell."""
  out = io.StringIO()
  writer = csv.DictWriter(
    out, CSV_COLUMNS, extrasaction='ignore', lineterminator='\n'
  )
  writer.writeheader()
  writer.writerows(results)
  return out.getvalue()


@dataclasses.dataclass(frozen=True)
class Summary:
  """The metric of one method at one fraction over its finished seeds; `std`
  is the sample standard deviation (n - 1), None for one seed."""

  mean: float
  std: float | None
  n: int


def summarize(
  results: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, float], Summary]:
  """{(method, fraction): Summary} of the results' values."""
  values = {}
  for result in results:
    key = (result['method'], result['fraction'])
    values.setdefault(key, []).append(result['value'])
  return {
    key: Summary(
      statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None, len(v)
    )
    for key, v in values.items()
  }


def markdown_table(
  summaries: Mapping[tuple[str, float], Summary],
  methods: Sequence[str],
  fractions: Sequence[float],
  metric: str,
) -> str:
  """Rows are methods, columns fractions; cells `mean ± std (n)`, `±–` for
  one seed, blank where no seed has finished."""

  def cell(summary: Summary | None) -> str:
    if summary is None:
      return ''
    std = '–' if summary.std is None else f'{summary.std:.4f}'
    return f'{summary.mean:.4f} ± {std} ({summary.n})'

  header = [f'{metric} (mean ± std (seeds))'] + [
    f'fraction {f:g}' for f in fractions
  ]
  rows = [
    [method] + [cell(summaries.get((method, f))) for f in fractions]
    for method in methods
  ]
  lines = [header, ['---'] + ['---:'] * len(fractions), *rows]
  return '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines) + '\n'


def plot_png(
  summaries: Mapping[tuple[str, float], Summary],
  methods: Sequence[str],
  fractions: Sequence[float],
  metric: str,
  title: str,
) -> bytes:
  """The metric against the fraction (log2 axis), one line per method with
  its std over seeds as error bars."""
  fig = figure.Figure(figsize=(6.4, 4.8), dpi=100)
  ax = fig.add_subplot()
  for method in methods:
    points = sorted(
      (f, summaries[method, f]) for f in fractions if (method, f) in summaries
    )
    if points:
      ax.errorbar(
        [f for f, _ in points],
        [s.mean for _, s in points],
        yerr=[s.std or 0.0 for _, s in points],
        marker='o',
        capsize=3,
        label=method,
      )
  ax.set_xscale('log', base=2)
  ax.set_xticks(sorted(fractions), [f'{f:g}' for f in sorted(fractions)])
  ax.minorticks_off()
  ax.set_xlabel('fraction of the training set')
  ax.set_ylabel(metric)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend()
  out = io.BytesIO()
  fig.savefig(out, format='png')
  return out.getvalue()


def format_duration(seconds: float) -> str:
  """Seconds as a person reads them in a progress line: `62 s`, `44 min`."""
  if seconds < 120:
    return f'{seconds:.0f} s'
  if seconds < 2 * 3600:
    return f'{seconds / 60:.0f} min'
  return f'{seconds / 3600:.1f} h'


def _read_json(path: str) -> dict[str, Any] | None:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _write_atomically(path: str, content: str | bytes) -> None:
  """Writes a temporary file and renames it: readers (and a rerun after a
  kill) see the old file or the new one, never a part."""
  temporary = f'{path}.tmp'
  with tf.io.gfile.GFile(
    temporary, 'wb' if isinstance(content, bytes) else 'w'
  ) as f:
    f.write(content)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def _process_zeros(value: np.ndarray) -> np.ndarray:
  """Process 0's `value` on every process: only process 0 reads the cells'
  files, and all processes must run the same cells."""
  if jax.process_count() == 1:
    return value
  return np.asarray(multihost_utils.broadcast_one_to_all(value))


class _CellClock:
  """The wall time of a cell summed over its attempts (reruns after a kill
  or preemption): process 0 saves it to `progress.json` every few seconds."""

  def __init__(self, model_dir: str):
    self._path = os.path.join(model_dir, 'progress.json')
    self._earlier = 0.0
    self._start = time.time()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._save_periodically, daemon=True)

  def seconds(self) -> float:
    return self._earlier + time.time() - self._start

  def this_attempt(self) -> float:
    return time.time() - self._start

  def __enter__(self) -> '_CellClock':
    if jax.process_index() == 0:
      self._earlier = (_read_json(self._path) or {}).get('wall_seconds', 0.0)
      self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    if jax.process_index() == 0:
      self._done.set()
      self._thread.join()
      self._save()

  def _save_periodically(self) -> None:
    while not self._done.wait(_CLOCK_PERIOD_SECONDS):
      self._save()

  def _save(self) -> None:
    tf.io.gfile.makedirs(os.path.dirname(self._path))
    _write_atomically(self._path, json.dumps({'wall_seconds': self.seconds()}))


def _train_cell(cell: Cell, model_dir: str) -> tuple[dict[str, Any], float]:
  """Trains (or resumes) and evaluates one cell; returns its result (on
  process 0; {} elsewhere) and the seconds this attempt took."""
  gin.clear_config()
  gin_utils.parse_gin_flags(
    extra_bindings=cell_bindings(cell, model_dir, _EVAL_SPLIT.value)
  )
  with _CellClock(model_dir) as clock:
    state = train_lib.train()
  result = {}
  if jax.process_index() == 0:
    evaluation = _read_json(
      os.path.join(model_dir, f'eval_{_EVAL_SPLIT.value}', 'metrics.json')
    )
    if evaluation and evaluation['step'] == int(state.step):
      result = {
        'method': cell.method,
        'fraction': cell.fraction,
        'seed': cell.seed,
        'metric': _METRIC.value,
        'value': metric_value(evaluation['metrics'], _METRIC.value),
        'steps': evaluation['step'],
        'wall_seconds': round(clock.seconds(), 1),
        'eval_split': _EVAL_SPLIT.value,
      }
      _write_atomically(
        os.path.join(model_dir, 'result.json'), json.dumps(result, indent=2)
      )
  if not _process_zeros(np.array(bool(result))):
    raise Preempted(
      f'{cell.name} stopped before its final evaluation (a preemption '
      f'signal?); its checkpoint is in {model_dir}. Rerun the same command '
      'to resume the sweep.'
    )
  return result, clock.this_attempt()


def _finished(cells: Sequence[Cell], output_dir: str) -> list[dict[str, Any]]:
  """The result of each cell that has one, {} for the others (and on every
  process but 0); raises `GinConfigError` for one of another metric or split."""
  results = [{} for _ in cells]
  if jax.process_index() == 0:
    for i, cell in enumerate(cells):
      path = os.path.join(cell.model_dir(output_dir), 'result.json')
      result = _read_json(path) or {}
      if result and (result['metric'], result['eval_split']) != (
        _METRIC.value,
        _EVAL_SPLIT.value,
      ):
        raise gin_utils.GinConfigError(
          f'{path} has {result["metric"]} on {result["eval_split"]}, not '
          f'--metric={_METRIC.value} on --eval_split={_EVAL_SPLIT.value}: '
          'delete it to evaluate that cell again, or use another --output_dir.'
        )
      results[i] = result
  return results


def _dataset_name() -> str:
  """The DATASET macro of the gin flags, for the plot's title."""
  try:
    return str(gin.query_parameter('%DATASET'))
  except ValueError:
    return 'the configured task'


def _write_reports(
  output_dir: str,
  cells: Sequence[Cell],
  results: Sequence[Mapping[str, Any]],
  title: str,
) -> None:
  finished = [r for r in results if r]
  summaries = summarize(finished)
  methods = list(dict.fromkeys(cell.method for cell in cells))
  fractions = list(dict.fromkeys(cell.fraction for cell in cells))
  metric = _METRIC.value
  _write_atomically(os.path.join(output_dir, 'results.csv'), csv_text(finished))
  _write_atomically(
    os.path.join(output_dir, 'results.md'),
    markdown_table(summaries, methods, fractions, metric),
  )
  _write_atomically(
    os.path.join(output_dir, 'data_efficiency.png'),
    plot_png(summaries, methods, fractions, metric, title),
  )


def sweep() -> None:
  """Runs the cells not finished yet, in order, writing the reports."""
  if not _OUTPUT_DIR.value:
    raise gin_utils.GinConfigError('--output_dir is required.')
  cells = parse_grid(_METHODS.value, _FRACTIONS.value, _SEEDS.value)
  output_dir = _OUTPUT_DIR.value
  if '://' not in output_dir:
    output_dir = os.path.abspath(output_dir)
  title = f'Data efficiency on {_dataset_name()} ({_EVAL_SPLIT.value} split)'
  results = _finished(cells, output_dir)
  done = _process_zeros(np.array([bool(r) for r in results])).tolist()
  main_process = jax.process_index() == 0
  if main_process:
    print(
      f'{len(cells)} cells, {sum(done)} finished earlier; results in '
      f'{output_dir}',
      flush=True,
    )
  spent = []
  for i, cell in enumerate(cells):
    progress = f'[{i + 1}/{len(cells)}] {cell.name}'
    if done[i]:
      if main_process:
        value = results[i]['value']
        print(
          f'{progress}: finished earlier ({_METRIC.value} {value:.4f}); '
          'skipped',
          flush=True,
        )
      continue
    results[i], seconds = _train_cell(cell, cell.model_dir(output_dir))
    done[i] = True
    spent.append(seconds)
    if main_process:
      left = done.count(False)
      eta = statistics.mean(spent) * left
      print(
        f'{progress}: {_METRIC.value} {results[i]["value"]:.4f} '
        f'({format_duration(seconds)})'
        + (f'; ETA {format_duration(eta)}' if left else ''),
        flush=True,
      )
      _write_reports(output_dir, cells, results, title)
  if main_process:
    _write_reports(output_dir, cells, results, title)
    print(
      f'Wrote results.csv, results.md and data_efficiency.png to {output_dir}.',
      flush=True,
    )


def main() -> None:
  try:
    gin_utils.run(sweep)
  except Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_STATUS)
