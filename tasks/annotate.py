r"""dsbs-annotate: a teacher LLM writes rationales for your inputs.

Distilling step-by-step starts with a teacher LLM that, prompted with a few
worked examples (few-shot chain of thought), writes a rationale and a label
for every training input. This binary does that step against any server with
an OpenAI-compatible HTTP API (vLLM, TGI, Ollama, llama.cpp, hosted APIs), or
offline with a local HuggingFace causal LM (`--hf_model`):

    python -m dsbs_tasks.annotate --dataset=cqa --split=train \
      --data_dir=data --output=annotated --prompt=cqa \
      --base_url=http://localhost:8000/v1 --model=<served model>

    python -m dsbs_tasks.annotate --input=mine.jsonl --output=mine_cot.jsonl \
      --prompt=my_template.txt --shots=my_shots.jsonl --parser=cqa ...

Every input is annotated exactly once, even across a kill and a rerun: each
answered input is appended to a journal and flushed at once, and a rerun of
the same command skips what the journal holds. The final files are written
from the journal when all inputs are done (atomically). docs/annotate.md
describes the flags, the template format and the output formats.

Problems a user can fix (an unreachable server, a refused key, an unknown
model, a template without its input slot, a missing file) end the program
with one line on stderr and exit status 2.

This module is the run and the binary; the pieces are `prompting` (templates
and shots), `teachers` (the server client and the local model) and
`annotation_io` (inputs, the journal, the outputs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
import dataclasses
import os
from pathlib import Path
import sys
import time

from absl import app
from absl import flags
import tqdm

from dsbs_jax import errors
from dsbs_tasks import annotation_io
from dsbs_tasks import datasets
from dsbs_tasks import prompting
from dsbs_tasks import teachers
from dsbs_tasks.prompting import AnnotateError

OUTPUT_FORMATS = ('release', 'jsonl')
APIS = ('completions', 'chat')


@dataclasses.dataclass
class Config:
  """Everything a run needs; the flags of the same names."""

  output: str
  input: str | None = None
  dataset: str | None = None
  split: str | None = None
  data_dir: str | None = None
  output_format: str | None = None  # default: release with --dataset
  prompt: str | None = None  # default: --dataset
  shots: str | None = None
  parser: str | None = None
  system_prompt: str | None = None
  base_url: str | None = None
  model: str | None = None
  api_key_env: str = 'OPENAI_API_KEY'
  api: str = 'completions'
  temperature: float = 0.0
  n: int = 1
  max_tokens: int = 256
  stop: list[str] | None = None  # None: the template's default
  seed: int | None = None
  concurrency: int = 8
  max_retries: int = 6
  retry_delay: float = 1.0
  retry_max_delay: float = 60.0
  timeout: float = 300.0
  hf_model: str | None = None
  hf_device: str | None = None
  completions_per_file: int = 1000
  progress: bool | None = None  # None: on a terminal only


@dataclasses.dataclass
class Summary:
  """What a run did."""

  name: str
  inputs: int
  annotated_before: int
  annotated_now: int
  requests: int
  retries: int
  seconds: float  # the annotation phase only
  parser: str
  completions: int
  unparsed: int
  without_rationale: int
  without_label: int
  truncated: int
  outputs: list[str]

  def lines(self) -> list[str]:
    rate = self.annotated_now / self.seconds if self.seconds > 0 else 0.0
    lines = [
      f'{self.name}: {self.inputs} inputs; {self.annotated_now} annotated '
      f'now ({self.requests} requests, {self.retries} retries, '
      f'{self.seconds:.1f} s, {rate:.1f} inputs/s), '
      f'{self.annotated_before} before'
    ]
    if self.parser != 'none':
      lines.append(
        f'{self.parser} parser: {self.unparsed} of {self.completions} '
        f'completions unparsed ({self.without_rationale} without rationale, '
        f'{self.without_label} without label)'
      )
    if self.truncated:
      lines.append(
        f'{self.truncated} completions stopped at --max_tokens (finish '
        'reason "length")'
      )
    lines.extend(f'wrote {path}' for path in self.outputs)
    return lines


def run(
  config: Config, *, echo: Callable[[str], None] | None = print
) -> Summary:
  """Annotates every input not yet in the journal, then writes the output."""
  config = dataclasses.replace(config)
  _check_config(config)
  prompt = prompting.make_prompt(
    config.prompt,
    shots=config.shots,
    stop=config.stop,
    parser=config.parser,
    dataset=config.dataset,
    system=config.system_prompt,
  )
  items, split_file, name = _read_items(config)
  for item in items:
    prompt.template.check_input(item.slots, f'input {item.id}')
  journal_path, folder = _paths(config)
  if config.input is not None and journal_path.exists():
    if journal_path.resolve() == Path(config.input).resolve():
      raise AnnotateError('--output must not be the --input file')

  journal = annotation_io.Journal(journal_path, items)
  try:
    before = sum(journal.count(item.id) >= config.n for item in items)
    todo = [
      (item, journal.count(item.id))
      for item in items
      if journal.count(item.id) < config.n
    ]
    if echo:
      echo(
        f'{name}: {len(items)} inputs, {before} already in {journal_path}, '
        f'{len(todo)} to annotate'
      )
    requests, retries, seconds = _annotate(
      config, prompt, journal, todo, len(items), before
    )
    # Still holding the journal's lock: no other run appends meanwhile.
    journal.rewrite_sorted()
  finally:
    journal.close()

  if folder is None:
    counted, outputs = journal.records(), []
  else:
    counted = journal.first_samples()
    outputs = annotation_io.write_release(
      folder,
      split_file,
      config.split,
      [record['completion'] for record in counted],
      config.completions_per_file,
    )
  outputs.append(str(journal_path))
  summary = Summary(
    name=name,
    inputs=len(items),
    annotated_before=before,
    annotated_now=len(todo),
    requests=requests,
    retries=retries,
    seconds=seconds,
    parser=prompt.parser,
    completions=len(counted),
    unparsed=sum(
      r['rationale'] is None or r['llm_label'] is None for r in counted
    ),
    without_rationale=sum(r['rationale'] is None for r in counted),
    without_label=sum(r['llm_label'] is None for r in counted),
    truncated=sum(r.get('finish_reason') == 'length' for r in counted),
    outputs=outputs,
  )
  if echo:
    for line in summary.lines():
      echo(line)
  return summary


def _check_config(config: Config) -> None:
  if (config.input is None) == (config.dataset is None):
    raise AnnotateError('give either --input, or --dataset with --split')
  if config.dataset is not None and not config.split:
    raise AnnotateError('--dataset needs --split (train, valid or test)')
  if not config.output:
    raise AnnotateError('--output is required')
  if config.output_format is None:
    config.output_format = 'release' if config.dataset else 'jsonl'
  if config.output_format not in OUTPUT_FORMATS:
    raise AnnotateError(
      f'--output_format={config.output_format}: expected release or jsonl'
    )
  if config.output_format == 'release' and config.dataset is None:
    raise AnnotateError('--output_format=release needs --dataset and --split')
  if config.prompt is None:
    if config.dataset is None:
      raise AnnotateError('--input needs --prompt (a built-in name or a file)')
    config.prompt = config.dataset
  if config.api not in APIS:
    raise AnnotateError(f'--api={config.api}: expected completions or chat')
  if config.hf_model is not None and config.base_url is not None:
    raise AnnotateError('give --base_url or --hf_model, not both')
  if config.hf_model is None and not config.model:
    raise AnnotateError('--model is required (or --hf_model for a local model)')
  for name, value, low in (
    ('n', config.n, 1),
    ('max_tokens', config.max_tokens, 1),
    ('concurrency', config.concurrency, 1),
    ('max_retries', config.max_retries, 0),
    ('completions_per_file', config.completions_per_file, 1),
  ):
    if value < low:
      raise AnnotateError(f'--{name}={value}: must be at least {low}')
  if config.temperature < 0:
    raise AnnotateError(f'--temperature={config.temperature}: must be >= 0')


def _read_items(
  config: Config,
) -> tuple[list[annotation_io.Item], Path | None, str]:
  """(the inputs, the release's split file or None, a name for messages)."""
  if config.dataset is None:
    return annotation_io.read_jsonl_items(config.input), None, config.input
  items, split_file = annotation_io.read_release_items(
    config.data_dir, config.dataset, config.split
  )
  return items, split_file, f'{config.dataset} {config.split}'


def _paths(config: Config) -> tuple[Path, Path | None]:
  """(journal, release folder `<output>/<dataset>` or None)."""
  output = Path(config.output)
  if config.output_format == 'jsonl':
    if output.is_dir():
      raise AnnotateError(f'--output={output}: is a folder, not a file')
    return output, None
  folder = output / config.dataset
  return folder / 'llm' / f'{config.split}_annotations.jsonl', folder


def _annotate(
  config: Config,
  prompt: prompting.Prompt,
  journal: annotation_io.Journal,
  todo: Sequence[tuple[annotation_io.Item, int]],
  total: int,
  before: int,
) -> tuple[int, int, float]:
  """Asks the teacher for the samples `todo` lacks (an input and how many
  it has); returns (requests, retries, seconds)."""
  if not todo:
    return 0, 0, 0.0
  sampling = teachers.Sampling(
    api=config.api,
    temperature=config.temperature,
    max_tokens=config.max_tokens,
    stop=prompt.stop,
    seed=config.seed,
  )
  teacher = _make_teacher(config, sampling)
  bar = tqdm.tqdm(
    total=total,
    initial=before,
    unit='input',
    dynamic_ncols=True,
    disable=None if config.progress is None else not config.progress,
  )
  start = time.perf_counter()
  try:
    asyncio.run(_annotate_all(todo, teacher, prompt, journal, config, bar))
  finally:
    seconds = time.perf_counter() - start
    bar.close()
  return teacher.requests, teacher.retries, seconds


def _make_teacher(
  config: Config, sampling: teachers.Sampling
) -> teachers.Teacher:
  if config.hf_model is not None:
    return teachers.HfTeacher(config.hf_model, sampling, config.hf_device)
  api_key = os.environ.get(config.api_key_env) or 'EMPTY'
  return teachers.ApiTeacher(
    base_url=config.base_url,
    model=config.model,
    api_key=api_key,
    api_key_env=config.api_key_env,
    sampling=sampling,
    timeout=config.timeout,
    max_retries=config.max_retries,
    retry_delay=config.retry_delay,
    retry_max_delay=config.retry_max_delay,
  )


async def _annotate_all(
  todo: Sequence[tuple[annotation_io.Item, int]],
  teacher: teachers.Teacher,
  prompt: prompting.Prompt,
  journal: annotation_io.Journal,
  config: Config,
  bar: tqdm.tqdm,
) -> None:
  """`concurrency` workers take the inputs in order; each answered input
  is journaled at once."""
  work: Iterator[tuple[annotation_io.Item, int]] = iter(todo)
  chat = config.api == 'chat'

  async def worker() -> None:
    for item, have in work:
      if chat:
        request: prompting.Request = prompt.chat_messages(item.slots)
      else:
        request = prompt.completion_prompt(item.slots)
      completions = await teacher.complete(
        request, config.n - have, f'input {item.id}'
      )
      journal.append(
        annotation_io.make_records(item, completions, have, prompt, config.n)
      )
      bar.update(1)

  try:
    async with asyncio.TaskGroup() as group:
      for _ in range(min(config.concurrency, len(todo))):
        group.create_task(worker())
  except BaseExceptionGroup as group_error:
    # The first user error if any, else the first error, as itself.
    leaves = list(_leaves(group_error))
    user = [e for e in leaves if isinstance(e, errors.UserError)]
    raise (user or leaves)[0] from None
  finally:
    await teacher.close()


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
  for error in group.exceptions:
    if isinstance(error, BaseExceptionGroup):
      yield from _leaves(error)
    else:
      yield error


def define_flags() -> None:
  """The binary's flags (defined by `main`, not on import)."""
  if 'base_url' in flags.FLAGS:
    return
  d = Config(output='')
  flags.DEFINE_string(
    'input', None, 'JSON Lines file: `input` and, where known, `label`.'
  )
  flags.DEFINE_string(
    'dataset',
    None,
    'A dataset of the original release: '
    f'{", ".join(datasets.names(datasets.RELEASE))}.',
  )
  flags.DEFINE_string(
    'split', None, 'With --dataset: the file split, train, valid or test.'
  )
  flags.DEFINE_string(
    'data_dir',
    None,
    'With --dataset: the release folder (default $DSBS_DATA_DIR).',
  )
  flags.DEFINE_string(
    'output',
    None,
    'jsonl: the output file (also the journal); release: the folder that '
    'gets <dataset>/<dataset>_<split>.json and <dataset>/llm/.',
  )
  flags.DEFINE_enum(
    'output_format',
    None,
    OUTPUT_FORMATS,
    'release (default with --dataset) or jsonl (default with --input).',
  )
  flags.DEFINE_string(
    'prompt',
    None,
    f'{", ".join(prompting.BUILTIN_PROMPTS)}, or a template file (default: '
    '--dataset).',
  )
  flags.DEFINE_string(
    'shots',
    None,
    "JSON Lines of few-shot examples (default: the built-in prompt's; none "
    'for a template file).',
  )
  flags.DEFINE_enum(
    'parser',
    None,
    list(prompting.PARSERS),
    "How completions are parsed (default: the built-in prompt's, else "
    "--dataset's, else none).",
  )
  flags.DEFINE_string(
    'system_prompt', None, 'With --api=chat: a system message.'
  )
  flags.DEFINE_string(
    'base_url',
    None,
    'The server, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, '
    'else api.openai.com).',
  )
  flags.DEFINE_string('model', None, 'The model name the server knows.')
  flags.DEFINE_string(
    'api_key_env',
    d.api_key_env,
    'The environment variable holding the API key; unset means "EMPTY" '
    '(local servers need none).',
  )
  flags.DEFINE_enum(
    'api', d.api, APIS, 'completions (few-shot text) or chat (turns).'
  )
  flags.DEFINE_float(
    'temperature', d.temperature, '0 for greedy decoding.', lower_bound=0
  )
  flags.DEFINE_integer(
    'n', d.n, 'Samples per input (jsonl: one line each).', lower_bound=1
  )
  flags.DEFINE_integer(
    'max_tokens', d.max_tokens, 'Tokens per completion at most.', lower_bound=1
  )
  flags.DEFINE_multi_string(
    'stop',
    None,
    "Stop string (repeatable; default: the template's text before its "
    'first slot, e.g. "Q:"; --stop= for none).',
  )
  flags.DEFINE_integer(
    'seed', None, 'Sampling seed, where the server honours it.'
  )
  flags.DEFINE_integer(
    'concurrency', d.concurrency, 'Requests in flight at most.', lower_bound=1
  )
  flags.DEFINE_integer(
    'max_retries',
    d.max_retries,
    'Retries of a request (429, 5xx, timeouts, dropped connections).',
    lower_bound=0,
  )
  flags.DEFINE_float(
    'retry_delay',
    d.retry_delay,
    'Seconds before the first retry; doubles each time, with jitter.',
    lower_bound=0,
  )
  flags.DEFINE_float(
    'retry_max_delay', d.retry_max_delay, 'Longest wait between retries.'
  )
  flags.DEFINE_float(
    'timeout', d.timeout, 'Seconds a request may take.', lower_bound=0
  )
  flags.DEFINE_string(
    'hf_model',
    None,
    'A local HuggingFace causal LM folder, run with transformers instead '
    'of a server.',
  )
  flags.DEFINE_string(
    'hf_device', None, 'With --hf_model: torch device (default cuda if any).'
  )
  flags.DEFINE_integer(
    'completions_per_file',
    d.completions_per_file,
    'release: completions per llm/<split>_CoT_<k>.json file.',
    lower_bound=1,
  )
  flags.DEFINE_bool(
    'progress', None, 'Progress bar (default: when stderr is a terminal).'
  )


def config_from_flags() -> Config:
  values = flags.FLAGS
  fields = {f.name for f in dataclasses.fields(Config)}
  # An unset --stop is None (the template's default); --stop= gives [''].
  return Config(**{name: values[name].value for name in fields})


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  run(config_from_flags(), echo=lambda line: print(line, flush=True))


def main(argv: Sequence[str] | None = None) -> None:
  """The `dsbs-annotate` console script."""
  define_flags()
  try:
    app.run(_main, argv=argv)
  except errors.UserError as error:
    print(teachers.one_line(error, limit=2000), file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
