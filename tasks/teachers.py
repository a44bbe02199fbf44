"""dsbs-annotate's teachers: the LLMs that answer the prompts.

Two kinds behind one small interface (`Teacher`): `ApiTeacher`, a server
with an OpenAI-compatible HTTP API, with the retry policy and the one-line
errors for what a user can fix (an unreachable URL, a refused key, an
unknown model); and `HfTeacher`, a local HuggingFace causal LM for when
there is no server. docs/annotate.md says why the `openai` client carries
the protocol and a loop of ours the retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
import random
import socket
from typing import Any
from typing import Protocol

import openai

from dsbs_tasks import prompting
from dsbs_tasks.prompting import AnnotateError

# HTTP statuses worth another try (as the openai client's own policy).
TRANSIENT_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER = 600.0

Completion = tuple[str, str | None]  # (text, finish reason)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """What every request asks for."""

  api: str = 'completions'
  temperature: float = 0.0
  max_tokens: int = 256
  stop: tuple[str, ...] = ()
  seed: int | None = None


class Teacher(Protocol):
  """What a run needs of a teacher: completions, and counts for its summary."""

  requests: int
  retries: int

  async def complete(
    self, request: prompting.Request, n: int, what: str
  ) -> list[Completion]:
    """`n` completions of `request`; `what` names it in errors."""

  async def close(self) -> None: ...


def one_line(text: Any, limit: int = 300) -> str:
  """`text` with its white space collapsed, cut to `limit` characters."""
  text = ' '.join(str(text).split())
  return text if len(text) <= limit else text[: limit - 1] + '…'


def _server_message(error: openai.APIStatusError) -> str:
  body = error.body
  if isinstance(body, dict):
    inner = body.get('error', body)
    if isinstance(inner, dict) and isinstance(inner.get('message'), str):
      return one_line(inner['message'])
    if isinstance(inner, str):
      return one_line(inner)
    if isinstance(body.get('message'), str):
      return one_line(body['message'])
  return one_line(error.message)


def _cannot_connect(error: BaseException) -> str | None:
  """Why a connection could not be made (refused, unknown host), or None
  for other failures (a dropped connection, a timeout)."""
  seen = set()
  cause: BaseException | None = error
  found = None
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, (ConnectionRefusedError, socket.gaierror)):
      return one_line(cause)
    if type(cause).__name__ == 'ConnectError':
      found = one_line(cause) or 'cannot connect'
    cause = cause.__cause__ or cause.__context__
  return found


def _retry_after(headers: Any) -> float | None:
  """Seconds from `retry-after-ms` or `retry-after`, if the server says."""
  if headers is None:
    return None
  for name, scale in (('retry-after-ms', 1e-3), ('retry-after', 1.0)):
    value = headers.get(name)
    if value is not None:
      try:
        seconds = float(value) * scale
      except ValueError:
        continue
      if 0 <= seconds <= MAX_RETRY_AFTER:
        return seconds
  return None


def _by_index(choices: list[Any] | None) -> list[Any]:
  return sorted(choices or [], key=lambda c: c.index or 0)


class ApiTeacher:
  """A teacher behind an OpenAI-compatible HTTP API.

  The `openai` client speaks the protocol; its own retries are off and this
  class retries instead (so the delays are flags): 408, 409, 429 and 5xx
  answers, timeouts and dropped connections wait `retry_delay` seconds,
  doubling up to `retry_max_delay`, with jitter, or what the server's
  `Retry-After` says; after `max_retries` retries the run stops. A server
  that cannot be connected to at all stops the run at once unless it has
  answered before in this run. Other errors (401, 403, 404, 400) stop it.
  """

  def __init__(
    self,
    *,
    base_url: str | None,
    model: str,
    api_key: str,
    api_key_env: str,
    sampling: Sampling,
    timeout: float,
    max_retries: int,
    retry_delay: float,
    retry_max_delay: float,
  ):
    # The HTTP client logs every request at INFO, which absl would print.
    for name in ('httpx', 'httpx2', 'httpcore', 'httpcore2', 'openai'):
      logging.getLogger(name).setLevel(logging.WARNING)
    self.client = openai.AsyncOpenAI(
      base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout
    )
    self.url = str(self.client.base_url).rstrip('/')
    self.model = model
    self.api_key_env = api_key_env
    self.sampling = sampling
    self.max_retries = max_retries
    self.retry_delay = retry_delay
    self.retry_max_delay = retry_max_delay
    self.requests = 0
    self.retries = 0
    self._answered = False

  async def complete(
    self, request: prompting.Request, n: int, what: str
  ) -> list[Completion]:
    """`n` completions; asks again for the rest if a server returns fewer
    choices than `n` (some ignore `n`). Each answer has at least one."""
    completions: list[Completion] = []
    while len(completions) < n:
      completions += await self._with_retries(
        request, n - len(completions), what
      )
    return completions[:n]

  async def _request(
    self, request: prompting.Request, n: int
  ) -> list[Completion]:
    s = self.sampling
    common: dict[str, Any] = dict(
      model=self.model, max_tokens=s.max_tokens, temperature=s.temperature
    )
    if s.stop:
      common['stop'] = list(s.stop)
    if n != 1:
      common['n'] = n
    if s.seed is not None:
      common['seed'] = s.seed
    self.requests += 1
    if isinstance(request, str):
      response = await self.client.completions.create(prompt=request, **common)
      return [
        (c.text or '', c.finish_reason) for c in _by_index(response.choices)
      ]
    response = await self.client.chat.completions.create(
      messages=request, **common
    )
    return [
      (c.message.content or '', c.finish_reason)
      for c in _by_index(response.choices)
    ]

  async def _with_retries(
    self, request: prompting.Request, n: int, what: str
  ) -> list[Completion]:
    delay = self.retry_delay
    for attempt in range(self.max_retries + 1):
      wait = None
      try:
        completions = await self._request(request, n)
        if not completions:
          raise AnnotateError(
            f'the teacher at {self.url} returned no choices for {what}'
          )
        self._answered = True
        return completions
      except openai.APIStatusError as error:
        if error.status_code not in TRANSIENT_STATUSES:
          raise self._fatal(error, what) from None
        wait = _retry_after(error.response.headers)
        problem = f'{error.status_code} {_server_message(error)}'
      except openai.APIConnectionError as error:  # timeouts included
        reason = _cannot_connect(error)
        if reason is not None and not self._answered:
          raise AnnotateError(
            f'cannot reach the teacher at {self.url}: {reason} '
            '(is the server running? check --base_url)'
          ) from None
        problem = one_line(reason or error.__cause__ or error)
      except openai.OpenAIError as error:
        raise AnnotateError(
          f'the teacher at {self.url} gave an unusable answer for {what}: '
          f'{one_line(error)}'
        ) from None
      if attempt < self.max_retries:
        self.retries += 1
        if wait is None:
          wait = delay * random.uniform(0.5, 1.0)
          delay = min(2 * delay, self.retry_max_delay)
        await asyncio.sleep(wait)
    raise AnnotateError(
      f'the teacher at {self.url} failed on {what} after '
      f'{self.max_retries + 1} tries: {problem}; rerun the same command to '
      'resume'
    )

  def _fatal(self, error: openai.APIStatusError, what: str) -> AnnotateError:
    status = error.status_code
    message = _server_message(error)
    if status in (401, 403):
      return AnnotateError(
        f'the teacher at {self.url} refused the API key ({status}: '
        f'{message}); set ${self.api_key_env} (see --api_key_env)'
      )
    if status == 404:
      return AnnotateError(
        f'the teacher at {self.url} answered 404 ({message}): check '
        f'--model={self.model}, that --base_url is the API root (often '
        f'ending in /v1) and that the server offers the {self.sampling.api} '
        'API (--api)'
      )
    return AnnotateError(
      f'the teacher at {self.url} rejected the request for {what} '
      f'({status}: {message})'
    )

  async def close(self) -> None:
    await self.client.close()


class HfTeacher:
  """A local HuggingFace causal LM (`transformers`), one request at a time.

  Temperature 0 decodes greedily (n > 1 then repeats the one completion);
  otherwise it samples at that temperature. Generation stops at a stop
  string (cut off, as servers do), at the end-of-sequence token or after
  `max_tokens` new tokens.
  """

  def __init__(self, path: str, sampling: Sampling, device: str | None):
    if not Path(path).is_dir():
      raise AnnotateError(f'--hf_model={path}: no such folder')
    try:
      import torch  # pylint: disable=g-import-not-at-top
      import transformers  # pylint: disable=g-import-not-at-top
    except ImportError as error:
      raise AnnotateError(
        f'--hf_model needs transformers and torch ({error}): '
        'pip install transformers torch'
      ) from None
    transformers.logging.set_verbosity_error()
    try:
      self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
      self.model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype='auto'
      )
    except (OSError, ValueError, KeyError) as error:
      raise AnnotateError(
        f'--hf_model={path}: cannot load: {one_line(error)}'
      ) from None
    if device is None:
      device = 'cuda' if torch.cuda.is_available() else 'cpu'
    self.device = device
    self.model.to(device).eval()
    self.torch = torch
    self.sampling = sampling
    self.url = f'--hf_model={path}'
    self.requests = 0
    self.retries = 0
    if sampling.seed is not None:
      torch.manual_seed(sampling.seed)
    self._lock: asyncio.Lock | None = None

  async def complete(
    self, request: prompting.Request, n: int, what: str
  ) -> list[Completion]:
    del what
    if self._lock is None:
      self._lock = asyncio.Lock()
    async with self._lock:
      return await asyncio.to_thread(self._generate, request, n)

  def _generate(self, request: prompting.Request, n: int) -> list[Completion]:
    tokenizer, s = self.tokenizer, self.sampling
    self.requests += 1
    if isinstance(request, str):
      inputs = tokenizer(request, return_tensors='pt')
    else:
      if not getattr(tokenizer, 'chat_template', None):
        raise AnnotateError(
          f'{self.url}: its tokenizer has no chat template; use '
          '--api=completions'
        )
      inputs = tokenizer.apply_chat_template(
        request,
        add_generation_prompt=True,
        return_tensors='pt',
        return_dict=True,
      )
    inputs = {k: v.to(self.device) for k, v in inputs.items()}
    sample = s.temperature > 0
    kwargs: dict[str, Any] = dict(
      max_new_tokens=s.max_tokens,
      do_sample=sample,
      num_return_sequences=n if sample else 1,
      pad_token_id=(
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id
      ),
    )
    if sample:
      kwargs['temperature'] = s.temperature
    if s.stop:
      kwargs.update(stop_strings=list(s.stop), tokenizer=tokenizer)
    with self.torch.no_grad():
      output = self.model.generate(**inputs, **kwargs)
    new_tokens = output[:, inputs['input_ids'].shape[1] :]
    completions = []
    for tokens in new_tokens:
      text = tokenizer.decode(tokens, skip_special_tokens=True)
      cuts = [text.find(stop) for stop in s.stop if stop in text]
      if cuts:
        completions.append((text[: min(cuts)], 'stop'))
      else:
        ended = tokenizer.eos_token_id is not None and bool(
          (tokens == tokenizer.eos_token_id).any()
        )
        full = len(tokens) >= s.max_tokens
        completions.append((text, 'length' if full and not ended else 'stop'))
    return (completions * n)[:n]

  async def close(self) -> None:
    pass
