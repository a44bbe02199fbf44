r"""Requests per second of dsbs-annotate against a teacher of fixed latency.

    python tools/bench_annotate.py --latency_ms=20 --requests=400 \
      --concurrency=1 --concurrency=16

Starts the fake OpenAI-compatible teacher of `dsbs_tasks.fake_teacher` on
127.0.0.1 in a process of its own (so the two do not share a GIL), which answers
every request after `--latency_ms`, and annotates `--requests` inputs with
`dsbs_tasks.annotate.run` (built-in svamp prompt, completions API, a fresh
journal each time) at each `--concurrency`. Prints one line per concurrency:
requests per second, that figure as a fraction of the ideal
`concurrency / latency`, and the CPU time per request of the client (its
whole process: prompt building, the HTTP client, parsing, the journal) and
of the server (a fresh process per concurrency). While the client's CPU per
request is well under `latency / concurrency`, the client is not the
bottleneck; 1 / (its CPU per request) is its ceiling on one core.
"""

from collections.abc import Iterator
from collections.abc import Sequence
import contextlib
import json
from pathlib import Path
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from dsbs_tasks import annotate
from dsbs_tasks import fake_teacher

_LATENCY_MS = flags.DEFINE_float(
  'latency_ms', 20.0, 'Server-side latency of every answer.', lower_bound=0
)
_REQUESTS = flags.DEFINE_integer(
  'requests', 400, 'Inputs annotated per concurrency.', lower_bound=1
)
_CONCURRENCY = flags.DEFINE_multi_integer(
  'concurrency', [1, 16], 'Requests in flight (repeatable).'
)


@contextlib.contextmanager
def fake_server(latency_ms: float) -> Iterator[str]:
  """The fake teacher in a child process; yields its base URL."""
  process = subprocess.Popen(
    [sys.executable, fake_teacher.__file__, f'--latency_ms={latency_ms}'],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    yield process.stdout.readline().strip()
  finally:
    process.stdin.close()
    process.wait(timeout=30)


def benchmark(
  base_url: str, concurrency: int, requests: int, folder: Path
) -> tuple[float, float]:
  """(requests per second, client CPU seconds per request) of one run."""
  inputs = folder / f'inputs_{concurrency}.jsonl'
  with open(inputs, 'w', encoding='utf-8') as file:
    for i in range(requests):
      record = {'input': f'[id {i}] Item {i} gets one more. How many now?'}
      file.write(json.dumps(record) + '\n')
  output = folder / f'out_{concurrency}.jsonl'
  output.unlink(missing_ok=True)  # a fresh journal: annotate everything
  cpu = time.process_time()
  summary = annotate.run(
    annotate.Config(
      input=str(inputs),
      output=str(output),
      prompt='svamp',
      base_url=base_url,
      model='fake',
      concurrency=concurrency,
      progress=False,
    ),
    echo=None,
  )
  cpu = time.process_time() - cpu
  assert summary.annotated_now == requests and summary.unparsed == 0, summary
  return summary.requests / summary.seconds, cpu / summary.requests


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str]) -> None:
  del argv
  latency_ms = _LATENCY_MS.value
  requests = _REQUESTS.value
  with tempfile.TemporaryDirectory() as folder:
    for concurrency in _CONCURRENCY.value:
      server_cpu = _children_cpu()
      with fake_server(latency_ms) as base_url:
        rate, cpu = benchmark(base_url, concurrency, requests, Path(folder))
      server_cpu = (_children_cpu() - server_cpu) / requests
      ideal = concurrency * 1000 / latency_ms if latency_ms else float('inf')
      print(
        f'concurrency {concurrency}: {rate:.1f} requests/s '
        f'({rate / ideal:.0%} of the ideal {ideal:.0f}/s at '
        f'{latency_ms:g} ms latency); CPU per request: client '
        f'{cpu * 1000:.2f} ms, server {server_cpu * 1000:.2f} ms',
        flush=True,
      )


if __name__ == '__main__':
  app.run(main)
