"""dsbs-annotate against a fake OpenAI-compatible teacher on 127.0.0.1.

The fake teacher (`dsbs_tasks.fake_teacher`) runs in a thread of the test,
on a free loopback port, answers in each dataset's format, and fails on
demand (429, 5xx, dropped connections, a stall). In-process tests call
`annotate.run`; the kill-and-rerun test and the one-line errors run the
binary as a user does (`python -m dsbs_tasks.annotate`, a subprocess, about
15 s of start-up each on a busy 2-core machine: the `slow` marker).
"""

from collections.abc import Iterator
import contextlib
import json
import os
from pathlib import Path
import re
import signal
import socket
import subprocess
import sys
import time

from conftest import SAMPLE_DATA_DIR
import pytest

from dsbs_tasks import annotate
from dsbs_tasks import annotation_io
from dsbs_tasks import fake_teacher
from dsbs_tasks import parsing
from dsbs_tasks import prompting
from dsbs_tasks import sources

REPO = Path(__file__).resolve().parent.parent


def write_inputs(path: Path, count: int) -> list[str]:
  """`count` svamp-like inputs tagged `[id i]`; returns their labels."""
  labels = []
  with open(path, 'w', encoding='utf-8') as file:
    for i in range(count):
      label = f'( {i}.0 + 1.0 )'
      record = {
        'input': f'[id {i}] Tom has {i} apples, gets one more.',
        'label': label,
      }
      file.write(json.dumps(record) + '\n')
      labels.append(label)
  return labels


def svamp_answer(key: str | None, prompt: str, sample: int) -> str:
  """A rationale and the known label, running on into a next shot."""
  del prompt
  return (
    f'Tom had {key} apples and got one more, sample {sample}. '
    f'The answer is ( {key}.0 + 1.0 ).\n\nQ: Anna has 2 pears.'
  )


@pytest.fixture
def teacher() -> Iterator[fake_teacher.FakeTeacher]:
  with fake_teacher.FakeTeacher(svamp_answer) as server:
    yield server


def config(
  teacher: fake_teacher.FakeTeacher, tmp_path: Path, **overrides
) -> annotate.Config:
  values = dict(
    input=str(tmp_path / 'inputs.jsonl'),
    output=str(tmp_path / 'out.jsonl'),
    prompt='svamp',
    base_url=teacher.base_url,
    model='fake-teacher',
    concurrency=4,
    retry_delay=0.001,
    retry_max_delay=0.01,
    progress=False,
  )
  values.update(overrides)
  return annotate.Config(**values)


def read_lines(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------
# Prompts.


@pytest.mark.parametrize('dataset', prompting.BUILTIN_PROMPTS)
def test_builtin_shots_parse_as_the_tasks_parse(dataset):
  """A completion in a built-in template's format (each shot's rationale
  and answer) parses with the dataset's parser to the shot's label."""
  prompt = prompting.make_prompt(dataset)
  assert len(prompt.shots) >= 6 and prompt.parser == dataset
  for shot in prompt.shots:
    completion = prompting.Template.fill(prompt.template.answer_part, shot)
    run_on = f'\n\n{prompt.stop[0]} next example'  # as the release's run on
    parsed = prompting.PARSERS[dataset](completion + run_on)
    assert parsed.rationale == shot['rationale']
    expected = shot['label']
    if dataset == 'cqa':  # "(c) cow" -> "cow"
      expected = re.sub(r'^\(.\) ', '', expected)
    assert parsed.label == expected


def test_builtin_prompts_match_the_release_format():
  """The query ends where the released completions begin, and the default
  stop is where the next shot would begin."""
  cqa = prompting.make_prompt('cqa')
  text = cqa.completion_prompt({'input': 'Why?\nAnswer Choices:\n(a) x'})
  assert text.endswith('\n\nQ: Why?\nAnswer Choices:\n(a) x\nA:')
  assert 'only cows produce milk. So the answer is (c) cow.\n\nQ: ' in text
  assert cqa.stop == ('Q:',)
  svamp = prompting.make_prompt('svamp')
  assert 'The answer is (71 - 20).\n\nQ: ' in svamp.completion_prompt(
    {'input': 'x'}
  )
  slots = prompting.slots_for(
    'A man sleeps.' + parsing.NLI_SEPARATOR + 'He rests.'
  )
  esnli = prompting.make_prompt('esnli').completion_prompt(slots)
  assert esnli.endswith(
    '\nAnswer: contradiction\n\nPremise: A man sleeps.\nHypothesis: He rests.'
    '\nReasonings:'
  )
  anli1 = prompting.make_prompt('anli1')
  assert anli1.completion_prompt(slots).endswith(
    '\n\nPremise: A man sleeps.\nHypothesis: He rests.\nAnswer:'
  )
  assert anli1.stop == ('Premise:',)
  chat = prompting.make_prompt('svamp').chat_messages({'input': 'x'})
  assert [m['role'] for m in chat[:2]] == ['user', 'assistant']
  assert chat[0]['content'].startswith('Q: ') and chat[0]['content'].endswith(
    'A:'
  )
  assert chat[1]['content'].endswith('The answer is (71 - 20).')
  assert chat[-1] == {'role': 'user', 'content': 'Q: x\nA:'}


def test_user_template_and_shots(tmp_path):
  template = tmp_path / 'template.txt'
  template.write_text(
    'Question: {input}\nThoughts: {rationale}\nAnswer: {label}\n'
  )
  shots = tmp_path / 'shots.jsonl'
  shots.write_text(
    '# my shots\n{"input": "1+1?", "rationale": "One and one.", "label": "2"}\n'
  )
  prompt = prompting.make_prompt(
    str(template), shots=str(shots), parser='esnli'
  )
  assert prompt.stop == ('Question:',)
  assert prompt.completion_prompt({'input': '2+2? {x}'}) == (
    'Question: 1+1?\nThoughts: One and one.\nAnswer: 2\n\n'
    'Question: 2+2? {x}\nThoughts:'
  )
  # A template with its examples written in, and no {rationale}.
  inline = tmp_path / 'inline.txt'
  inline.write_text('Q: 1+1?\nA: Two.\n\nQ: {input}\nA:')
  prompt = prompting.make_prompt(str(inline))
  assert prompt.completion_prompt({'input': '3?'}).endswith('Q: 3?\nA:')
  assert prompt.parser == 'none'
  with pytest.raises(prompting.AnnotateError, match='cannot show the shots'):
    prompting.make_prompt(str(inline), shots=str(shots))


@pytest.mark.parametrize(
  'text, problem',
  [
    ('Q: hello\nA: {rationale}', 'no {input} slot'),
    ('Q: {premise}\nA: {rationale}', 'no {input} slot'),
    ('A: {rationale}\nQ: {input}', 'no {input} slot'),
    ('Q: {input} {label}\nA: {rationale}', 'must come after'),
  ],
)
def test_bad_templates(tmp_path, text, problem):
  path = tmp_path / 'template.txt'
  path.write_text(text)
  with pytest.raises(prompting.AnnotateError, match=re.escape(problem)):
    prompting.make_prompt(str(path))


# --------------------------------------------------------------------------
# Requests, retries, outputs.


@pytest.mark.parametrize('api', ['completions', 'chat'])
def test_failures_are_retried_and_each_input_annotated_once(
  teacher, tmp_path, api
):
  labels = write_inputs(tmp_path / 'inputs.jsonl', 30)
  teacher.failures = {
    '1': ['429', '429'],
    '2': ['500'],
    '3': ['drop'],
    '4': ['503', 'drop', '429'],
    '17': ['drop', 'drop'],
  }
  summary = annotate.run(config(teacher, tmp_path, api=api), echo=None)
  failures = sum(len(plan) for plan in teacher.failures.values())
  assert summary.retries == failures
  assert summary.requests == 30 + failures
  assert summary.unparsed == 0 and summary.annotated_now == 30
  assert teacher.answered == {str(i): 1 for i in range(30)}
  for key, plan in teacher.failures.items():
    assert teacher.attempts[key] == len(plan) + 1
  records = read_lines(tmp_path / 'out.jsonl')
  assert [r['id'] for r in records] == list(range(30))
  for record, label in zip(records, labels):
    assert record['label'] == record['llm_label'] == label
    assert record['rationale'].startswith(f'Tom had {record["id"]} apples')
    # Cut at the stop string `Q:` by the server, then stripped.
    assert record['completion'].endswith(f'The answer is {label}.')
    assert record['finish_reason'] == 'stop'


def test_retry_after_header_is_honoured(tmp_path):
  write_inputs(tmp_path / 'inputs.jsonl', 3)
  with fake_teacher.FakeTeacher(svamp_answer, retry_after_ms=5) as server:
    server.failures = {'0': ['429', '503']}
    start = time.perf_counter()
    # Without the header the two retries would wait 60 s or more.
    annotate.run(
      config(server, tmp_path, retry_delay=60, retry_max_delay=60), echo=None
    )
    assert time.perf_counter() - start < 30
    assert server.answered == {'0': 1, '1': 1, '2': 1}


def test_concurrency_is_bounded(tmp_path):
  write_inputs(tmp_path / 'inputs.jsonl', 24)
  with fake_teacher.FakeTeacher(svamp_answer, latency=0.05) as server:
    annotate.run(config(server, tmp_path, concurrency=3), echo=None)
    assert server.max_in_flight == 3
    assert sum(server.answered.values()) == 24


def test_a_stop_after_retries_keeps_the_journal_and_a_rerun_resumes(
  teacher, tmp_path
):
  write_inputs(tmp_path / 'inputs.jsonl', 10)
  teacher.failures = {'5': ['500'] * 10}
  with pytest.raises(prompting.AnnotateError, match='input 5 after 3 tries'):
    annotate.run(
      config(teacher, tmp_path, concurrency=1, max_retries=2), echo=None
    )
  assert [r['id'] for r in read_lines(tmp_path / 'out.jsonl')] == [
    0,
    1,
    2,
    3,
    4,
  ]
  teacher.failures = {}
  summary = annotate.run(config(teacher, tmp_path), echo=None)
  assert summary.annotated_before == 5 and summary.annotated_now == 5
  assert teacher.answered == {str(i): 1 for i in range(10)}
  assert [r['id'] for r in read_lines(tmp_path / 'out.jsonl')] == list(
    range(10)
  )


def test_torn_journal_line_is_dropped_and_redone(teacher, tmp_path):
  write_inputs(tmp_path / 'inputs.jsonl', 8)
  annotate.run(config(teacher, tmp_path), echo=None)
  out = tmp_path / 'out.jsonl'
  lines = out.read_text().splitlines(keepends=True)
  # A kill in the middle of writing input 6; input 7 never written.
  out.write_text(''.join(lines[:6]) + lines[6][:25])
  summary = annotate.run(config(teacher, tmp_path), echo=None)
  assert summary.annotated_before == 6 and summary.annotated_now == 2
  assert teacher.answered == {
    **{str(i): 1 for i in range(6)},
    '6': 2,
    '7': 2,
  }
  assert out.read_text() == ''.join(lines)


def test_journal_of_other_inputs_is_refused(teacher, tmp_path):
  write_inputs(tmp_path / 'inputs.jsonl', 4)
  annotate.run(config(teacher, tmp_path), echo=None)
  (tmp_path / 'inputs.jsonl').write_text('{"input": "something else"}\n')
  with pytest.raises(prompting.AnnotateError, match='written for other inputs'):
    annotate.run(config(teacher, tmp_path), echo=None)


def test_n_samples_one_line_each(teacher, tmp_path):
  write_inputs(tmp_path / 'inputs.jsonl', 5)
  summary = annotate.run(
    config(teacher, tmp_path, n=3, temperature=0.7), echo=None
  )
  assert summary.completions == 15 and summary.requests == 5
  records = read_lines(tmp_path / 'out.jsonl')
  assert [(r['id'], r['sample']) for r in records] == [
    (i, s) for i in range(5) for s in range(3)
  ]
  assert all(f'sample {r["sample"]}.' in r['rationale'] for r in records)


def test_servers_that_ignore_n_are_asked_again(tmp_path):
  write_inputs(tmp_path / 'inputs.jsonl', 4)
  with fake_teacher.FakeTeacher(svamp_answer, max_choices=1) as server:
    summary = annotate.run(config(server, tmp_path, n=3), echo=None)
    assert summary.requests == 12 and summary.completions == 12
    assert server.answered == {str(i): 3 for i in range(4)}
  records = read_lines(tmp_path / 'out.jsonl')
  assert [(r['id'], r['sample']) for r in records] == [
    (i, s) for i in range(4) for s in range(3)
  ]


def test_jsonl_output_is_a_task_source(teacher, tmp_path):
  """The jsonl output is what `dsbs_task('jsonl', …)` reads."""
  labels = write_inputs(tmp_path / 'inputs.jsonl', 6)
  annotate.run(config(teacher, tmp_path), echo=None)
  examples = sources.read_jsonl_examples(
    tmp_path / 'out.jsonl',
    required=('input', 'label', 'rationale', 'llm_label'),
  )
  assert [e.teacher_label for e in examples] == labels


# The fake teacher's answer per dataset: a rationale and the known label.
FORMATS = {
  'svamp': (
    'train',
    r'(?s)Q: (.*?)\nA:',
    '{label} is right. The answer is {label}.',
  ),
  'cqa': (
    'train',
    r'(?s)Q: (.*?)\nA:',
    'Only {label} fits. So the answer is (b) {label}.',
  ),
  'esnli': (
    'valid',
    r'(?s)Premise: (.*?)\nReasonings:',
    'It follows, or not.\nAnswer: {label}',
  ),
  'anli1': (
    'valid',
    r'(?s)Premise: (.*?)\nAnswer:',
    'It follows, or not. So the answer is {label}.',
  ),
}


@pytest.mark.parametrize('dataset', sorted(FORMATS))
def test_release_output_reads_back_with_sources(tmp_path, dataset):
  split, key_pattern, answer = FORMATS[dataset]
  items, _ = annotation_io.read_release_items(
    str(SAMPLE_DATA_DIR), dataset, split
  )
  prompt = prompting.make_prompt(dataset)
  server = fake_teacher.FakeTeacher(key_pattern=key_pattern)
  keys = [server.key_of(prompt.completion_prompt(i.slots)) for i in items]
  labels = {key: item.label for key, item in zip(keys, items)}
  assert len(labels) == len(items)
  unparseable = {item.id for item in items[3:40:10]}  # 4 of them
  bad_keys = {keys[i] for i in unparseable}

  def respond(key, text, sample):
    del text, sample
    if key in bad_keys:
      return 'I cannot tell.'
    # Runs on into a next shot, which the stop string cuts off.
    return answer.format(label=labels[key]) + f'\n\n{prompt.stop[0]} more'

  server.respond = respond
  with server:
    summary = annotate.run(
      annotate.Config(
        dataset=dataset,
        split=split,
        data_dir=str(SAMPLE_DATA_DIR),
        output=str(tmp_path / 'out'),
        base_url=server.base_url,
        model='fake-teacher',
        completions_per_file=16,
        retry_delay=0.001,
        progress=False,
      ),
      echo=None,
    )
  assert summary.unparsed == len(unparseable) == 4
  folder = tmp_path / 'out' / dataset
  for source in (SAMPLE_DATA_DIR / dataset).glob('*.json'):  # all splits
    assert (folder / source.name).read_bytes() == source.read_bytes()
  files = sorted(p.name for p in (folder / 'llm').glob(f'{split}_CoT_*.json'))
  assert len(files) == -(-len(items) // 16)

  result = sources.load_release_split(dataset, split, tmp_path / 'out')
  assert result.counts.completions == len(items)
  assert result.counts.unparsed == 4
  for item, example in zip(items, result.examples):
    assert example.input == item.input and example.label == item.label
    if item.id in unparseable:
      assert example.teacher_label is None
    else:
      expected = prompting.PARSERS[dataset](answer.format(label=item.label))
      assert example.teacher_label == expected.label == item.label
      assert example.rationale == expected.rationale


# --------------------------------------------------------------------------
# The offline teacher.


@pytest.fixture(scope='module')
def tiny_hf_model(tmp_path_factory) -> Path:
  """A random 1-layer GPT-2 with a byte-level BPE tokenizer, built offline."""
  tokenizers = pytest.importorskip('tokenizers')
  transformers = pytest.importorskip('transformers')
  folder = tmp_path_factory.mktemp('tiny_gpt2')
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
    add_prefix_space=False
  )
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=['<|endoftext|>'],
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  text = [
    'Q: How many apples? A: The answer is (3 + 4).',
    'So the answer is (b) box. Premise: a dog. Hypothesis: an animal.',
  ]
  tokenizer.train_from_iterator(text * 10, trainer)
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tokenizer,
    eos_token='<|endoftext|>',
    pad_token='<|endoftext|>',
  )
  fast.save_pretrained(folder)
  model_config = transformers.GPT2Config(
    vocab_size=len(fast),
    n_positions=4096,
    n_embd=16,
    n_layer=1,
    n_head=2,
    bos_token_id=fast.eos_token_id,
    eos_token_id=fast.eos_token_id,
  )
  transformers.GPT2LMHeadModel(model_config).save_pretrained(folder)
  return folder


@pytest.mark.parametrize('temperature, n', [(0.0, 1), (1.0, 2)])
def test_hf_teacher_end_to_end(tiny_hf_model, tmp_path, temperature, n):
  summary = annotate.run(
    annotate.Config(
      dataset='svamp',
      split='test',
      data_dir=str(SAMPLE_DATA_DIR),
      output=str(tmp_path / 'out'),
      hf_model=str(tiny_hf_model),
      hf_device='cpu',
      max_tokens=6,
      temperature=temperature,
      n=n,
      seed=0,
      progress=False,
    ),
    echo=None,
  )
  inputs = len(
    (SAMPLE_DATA_DIR / 'svamp' / 'svamp_test.json').read_text().splitlines()
  )
  assert summary.annotated_now == inputs and summary.requests == inputs
  result = sources.load_release_split('svamp', 'test', tmp_path / 'out')
  assert result.counts.completions == inputs  # aligned one to one
  journal = read_lines(
    tmp_path / 'out' / 'svamp' / 'llm' / 'test_annotations.jsonl'
  )
  assert len(journal) == inputs * n
  assert all(r['finish_reason'] in ('stop', 'length') for r in journal)


# --------------------------------------------------------------------------
# The benchmark.


def test_benchmark_measures_requests_per_second(tmp_path):
  """The benchmark runs and its figures are consistent with the server's
  latency. Speed goals live in the benchmark's printed figures, not here."""
  sys.path.insert(0, str(REPO / 'tools'))
  try:
    import bench_annotate  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(REPO / 'tools'))
  rates = {}
  for concurrency, requests in ((1, 20), (16, 160)):
    with bench_annotate.fake_server(20.0) as base_url:
      rates[concurrency], cpu = bench_annotate.benchmark(
        base_url, concurrency, requests, tmp_path
      )
    assert cpu > 0  # client CPU seconds per request
  assert 0 < rates[1] < 50  # at most one request per 20 ms in flight
  assert rates[16] > 0


# --------------------------------------------------------------------------
# The binary: kill and rerun; one-line errors.

TF_NOISE = re.compile(
  r'^(WARNING: All log messages before absl::InitializeLog\(\)'
  r'|[IWEF]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\])'
)


def binary(*args: str) -> list[str]:
  return [sys.executable, '-m', 'dsbs_tasks.annotate', *args]


def binary_env(**extra: str) -> dict[str, str]:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith('OPENAI_') and 'PROXY' not in k.upper()
  }
  env.update(
    TF_CPP_MIN_LOG_LEVEL='3',
    JAX_PLATFORMS='cpu',
    XLA_FLAGS='',
    NO_PROXY='127.0.0.1,localhost',
    **extra,
  )
  return env


def stderr_lines(stderr: str) -> list[str]:
  """stderr without the lines TensorFlow's C++ prints on import."""
  return [
    line
    for line in stderr.splitlines()
    if line.strip() and not TF_NOISE.match(line)
  ]


@pytest.mark.slow
def test_kill_and_rerun_annotates_each_input_exactly_once(teacher, tmp_path):
  count, first = 40, 12
  write_inputs(tmp_path / 'inputs.jsonl', count)
  out = tmp_path / 'out.jsonl'
  command = binary(
    f'--input={tmp_path / "inputs.jsonl"}',
    f'--output={out}',
    '--prompt=svamp',
    f'--base_url={teacher.base_url}',
    '--model=fake-teacher',
    '--concurrency=4',
  )
  teacher.hold_after = first  # then the teacher stalls
  process = subprocess.Popen(
    command,
    env=binary_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.monotonic() + 300
    while not (out.exists() and out.read_text().count('\n') >= first):
      assert process.poll() is None, process.communicate()[1][-3000:]
      assert time.monotonic() < deadline, 'no progress'
      time.sleep(0.1)
    while teacher.held < 1:  # requests are waiting on the stalled teacher
      time.sleep(0.05)
    assert process.poll() is None
  finally:
    process.send_signal(signal.SIGKILL)
    process.communicate()
  assert out.read_text().count('\n') == first
  assert sum(teacher.answered.values()) == first

  teacher.hold_after = None
  result = subprocess.run(
    command, env=binary_env(), capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{count - first} annotated now' in result.stdout
  assert f'{first} before' in result.stdout
  assert teacher.answered == {str(i): 1 for i in range(count)}
  assert [r['id'] for r in read_lines(out)] == list(range(count))


@pytest.fixture(scope='module')
def error_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
  """Every error case at once (each start-up costs seconds)."""
  tmp = tmp_path_factory.mktemp('errors')
  write_inputs(tmp / 'inputs.jsonl', 3)
  no_input_slot = tmp / 'no_input.txt'
  no_input_slot.write_text('Q: What is this?\nA: {rationale}\n')
  with contextlib.closing(socket.socket()) as closed:
    closed.bind(('127.0.0.1', 0))
    closed_port = closed.getsockname()[1]
  keyed = fake_teacher.FakeTeacher(api_key='the-right-key').start()
  models = fake_teacher.FakeTeacher(models={'served-model'}).start()

  def args(case: str, base_url: str, **flags: str) -> list[str]:
    values = {
      'input': str(tmp / 'inputs.jsonl'),
      'output': str(tmp / f'out_{case}.jsonl'),
      'prompt': 'svamp',
      'base_url': base_url,
      'model': 'served-model',
      'max_retries': '1',
      'retry_delay': '0.001',
    }
    values.update(flags)
    return [f'--{k}={v}' for k, v in values.items()]

  cases = {
    'unreachable': (args('a', f'http://127.0.0.1:{closed_port}/v1'), {}),
    'bad_key': (args('b', keyed.base_url), {'OPENAI_API_KEY': 'a-wrong-key'}),
    'unknown_model': (args('c', models.base_url, model='no-such-model'), {}),
    'no_input_slot': (
      args('d', models.base_url, prompt=str(no_input_slot)),
      {},
    ),
    'missing_input': (
      args('e', models.base_url, input=str(tmp / 'nope.jsonl')),
      {},
    ),
  }
  try:
    processes = {
      name: subprocess.Popen(
        binary(*flags),
        env=binary_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for name, (flags, env) in cases.items()
    }
    results = {}
    for name, process in processes.items():
      stdout, stderr = process.communicate(timeout=300)
      results[name] = subprocess.CompletedProcess(
        process.args, process.returncode, stdout, stderr
      )
  finally:
    keyed.close()
    models.close()
  return results


@pytest.mark.slow
@pytest.mark.parametrize(
  'case, message',
  [
    ('unreachable', r'cannot reach the teacher at http://127\.0\.0\.1:\d+/v1'),
    ('bad_key', r'refused the API key \(401: Incorrect API key provided\.\)'),
    ('unknown_model', r'answered 404 .*no-such-model.*--model=no-such-model'),
    ('no_input_slot', r'no_input\.txt: no \{input\} slot'),
    ('missing_input', r'nope\.jsonl: no such file'),
  ],
)
def test_user_errors_are_one_line_with_status_2(error_runs, case, message):
  result = error_runs[case]
  lines = stderr_lines(result.stderr)
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1, lines
  assert re.search(message, lines[0]), lines[0]
