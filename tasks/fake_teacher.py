"""A fake teacher LLM behind an OpenAI-compatible HTTP API, on 127.0.0.1.

For tests and benchmarks of `dsbs_tasks.annotate`: it speaks enough of the
OpenAI protocol (POST `/v1/completions` and `/v1/chat/completions`, GET
`/v1/models`) for the `openai` client, answers deterministically with a
function of the request, and can be told to misbehave:

- `failures[key]`: what the first attempts of the request for `key` get, one
  entry per attempt: `'429'`, `'500'`, `'503'` (an error response) or
  `'drop'` (the connection is closed without a response);
- `hold_after = K`: after K answered requests, further requests get no answer
  until the server is closed (a teacher that stalls, for kill tests);
- `latency`: seconds every answer waits (benchmarks);
- `api_key`: requests without `Authorization: Bearer <api_key>` get 401;
- `models`: requests for another model get 404;
- `max_choices`: at most this many choices per answer, whatever `n` asks
  (as servers that ignore `n`).

A request's `key` is the last match of `key_pattern`'s first group in the
prompt (completions) or in the last message (chat), so a test can give each
input an id such as `[id 7]` and count per input what the server saw:
`attempts[key]` (every request) and `answered[key]` (answered with 200);
`max_in_flight` is the most requests it was answering at once.

It listens on 127.0.0.1 only, on a free port, in daemon threads:

    with FakeTeacher(respond) as teacher:
      ... base_url=teacher.base_url ...
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import http.server
import json
import re
import threading
import time
from typing import Any

# respond(key, prompt, sample) -> the completion text (before stop strings).
Respond = Callable[[str | None, str, int], str]


def echo(key: str | None, prompt: str, sample: int) -> str:
  """The default answer: names the key and the sample."""
  del prompt
  return f'Answer for {key}, sample {sample}.'


class FakeTeacher:
  """An OpenAI-compatible HTTP server on 127.0.0.1 with a scripted teacher."""

  def __init__(
    self,
    respond: Respond = echo,
    *,
    key_pattern: str = r'\[id (\d+)\]',
    latency: float = 0.0,
    api_key: str | None = None,
    models: set[str] | None = None,
    retry_after_ms: int | None = None,
    max_choices: int | None = None,
  ):
    self.respond = respond
    self.key_pattern = re.compile(key_pattern)
    self.latency = latency
    self.api_key = api_key
    self.models = models
    self.retry_after_ms = retry_after_ms
    self.max_choices = max_choices
    self.failures: dict[str, list[str]] = {}
    self.hold_after: int | None = None
    self.attempts: collections.Counter[str | None] = collections.Counter()
    self.answered: collections.Counter[str | None] = collections.Counter()
    self.held = 0
    self.in_flight = 0
    self.max_in_flight = 0
    self._answered_total = 0
    self._lock = threading.Lock()
    self._closing = threading.Event()
    self._server: http.server.ThreadingHTTPServer | None = None
    self._thread: threading.Thread | None = None

  # ------------------------------------------------------------------------
  # Life cycle.

  @property
  def port(self) -> int:
    assert self._server is not None, 'not started'
    return self._server.server_address[1]

  @property
  def base_url(self) -> str:
    return f'http://127.0.0.1:{self.port}/v1'

  def start(self) -> FakeTeacher:
    teacher = self

    class Handler(_Handler):
      pass

    Handler.teacher = teacher
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.daemon_threads = True
    self._server = server
    self._thread = threading.Thread(
      target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True
    )
    self._thread.start()
    return self

  def close(self) -> None:
    self._closing.set()  # held requests end without an answer
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
      self._server = None

  def __enter__(self) -> FakeTeacher:
    return self.start()

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  # ------------------------------------------------------------------------
  # What the handler asks.

  def key_of(self, text: str) -> str | None:
    matches = self.key_pattern.findall(text)
    return matches[-1] if matches else None

  def next_step(self, key: str | None) -> str:
    """'answer', 'hold' or a failure kind, for the next attempt at `key`."""
    with self._lock:
      attempt = self.attempts[key]
      self.attempts[key] += 1
      plan = self.failures.get(key, ())
      if attempt < len(plan):
        return plan[attempt]
      if (
        self.hold_after is not None and self._answered_total >= self.hold_after
      ):
        self.held += 1
        return 'hold'
      self._answered_total += 1
      self.in_flight += 1
      self.max_in_flight = max(self.max_in_flight, self.in_flight)
      return 'answer'

  def count_answer(self, key: str | None) -> None:
    with self._lock:
      self.answered[key] += 1
      self.in_flight -= 1

  def wait_closing(self) -> None:
    self._closing.wait()


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'
  # Headers and body go out in two writes: without TCP_NODELAY, Nagle's
  # algorithm and delayed ACKs would hold the body back ~40 ms.
  disable_nagle_algorithm = True
  teacher: FakeTeacher

  def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
    del format, args  # quiet

  def _send_json(
    self, status: int, payload: Any, headers: dict[str, str] | None = None
  ) -> None:
    data = json.dumps(payload).encode('utf-8')
    self.send_response(status)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    for name, value in (headers or {}).items():
      self.send_header(name, value)
    self.end_headers()
    self.wfile.write(data)
    self.wfile.flush()

  def _error(
    self, status: int, message: str, headers: dict[str, str] | None = None
  ) -> None:
    self._send_json(
      status,
      {'error': {'message': message, 'type': 'fake_error', 'code': status}},
      headers,
    )

  def do_GET(self) -> None:  # noqa: N802
    if self.path.rstrip('/').endswith('/models'):
      models = sorted(self.teacher.models or {'fake-teacher'})
      self._send_json(
        200,
        {
          'object': 'list',
          'data': [
            {'id': m, 'object': 'model', 'owned_by': 'fake'} for m in models
          ],
        },
      )
    else:
      self._error(404, f'no route {self.path}')

  def do_POST(self) -> None:  # noqa: N802
    teacher = self.teacher
    length = int(self.headers.get('Content-Length') or 0)
    try:
      body = json.loads(self.rfile.read(length) or b'{}')
    except json.JSONDecodeError:
      self._error(400, 'body is not JSON')
      return
    if teacher.api_key is not None:
      if self.headers.get('Authorization') != f'Bearer {teacher.api_key}':
        self._error(401, 'Incorrect API key provided.')
        return
    path = self.path.rstrip('/')
    if path.endswith('/chat/completions'):
      chat = True
      messages = body.get('messages') or [{}]
      text = str(messages[-1].get('content', ''))
    elif path.endswith('/completions'):
      chat = False
      text = str(body.get('prompt', ''))
    else:
      self._error(404, f'no route {self.path}')
      return
    model = body.get('model')
    if teacher.models is not None and model not in teacher.models:
      self._error(404, f'The model `{model}` does not exist.')
      return

    key = teacher.key_of(text)
    step = teacher.next_step(key)
    if step == 'drop':
      self.close_connection = True
      return
    if step == 'hold':
      teacher.wait_closing()
      self.close_connection = True
      return
    if step != 'answer':
      headers = {}
      if teacher.retry_after_ms is not None:
        headers['retry-after-ms'] = str(teacher.retry_after_ms)
      self._error(int(step), f'fake failure {step}', headers)
      return
    if teacher.latency:
      time.sleep(teacher.latency)

    stops = body.get('stop') or []
    if isinstance(stops, str):
      stops = [stops]
    choices = []
    n = int(body.get('n') or 1)
    if teacher.max_choices is not None:
      n = min(n, teacher.max_choices)
    for index in range(n):
      completion = teacher.respond(key, text, index)
      finish_reason = 'stop'
      cut = [completion.find(s) for s in stops if s and s in completion]
      if cut:
        completion = completion[: min(cut)]
      if chat:
        choices.append(
          {
            'index': index,
            'message': {'role': 'assistant', 'content': completion},
            'finish_reason': finish_reason,
          }
        )
      else:
        choices.append(
          {
            'index': index,
            'text': completion,
            'finish_reason': finish_reason,
            'logprobs': None,
          }
        )
    teacher.count_answer(key)
    self._send_json(
      200,
      {
        'id': f'fake-{key}',
        'object': 'chat.completion' if chat else 'text_completion',
        'created': 0,
        'model': model,
        'choices': choices,
        'usage': {
          'prompt_tokens': 1,
          'completion_tokens': 1,
          'total_tokens': 2,
        },
      },
    )


def _svamp_answer(key: str | None, prompt: str, sample: int) -> str:
  del prompt, sample
  return f'Item {key} gets one more. The answer is ({key} + 1).'


def main(argv: list[str] | None = None) -> None:
  """Serves until killed or stdin closes; prints the base URL first.

  Run by path (`python tasks/fake_teacher.py`), it imports nothing of the
  project, so it starts in well under a second. Answers in svamp's format.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('--latency_ms', type=float, default=0.0)
  args = parser.parse_args(argv)
  with FakeTeacher(_svamp_answer, latency=args.latency_ms / 1000) as teacher:
    print(teacher.base_url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin


if __name__ == '__main__':
  main()
