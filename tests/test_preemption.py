"""SIGTERM/SIGINT: the train binary stops after the current step, checkpoints
it, exits normally, and the same command resumes exactly."""

import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_binaries import TINY_RUN
from test_binaries import _shared_compilation_cache  # noqa: F401 (autouse)
from test_binaries import binary_env
from test_binaries import final_params
from test_binaries import run_binary
from test_binaries import scalars

STEPS = 100
# No periodic checkpoint before the end: the signal lands mid-interval.
ARGS = [
  *TINY_RUN,
  f'--gin.TRAIN_STEPS={STEPS}',
  '--gin.CHECKPOINT_PERIOD=1000',
  '--gin.KEEP_CHECKPOINTS=None',
]


def _steps_saved(model_dir: Path) -> list[int]:
  return sorted(
    int(p.name.split('_')[1])
    for p in model_dir.glob('checkpoint_*')
    if p.name.split('_')[1].isdigit()
  )


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_the_rerun_resumes_exactly(tmp_path):
  straight = tmp_path / 'straight'
  result = run_binary('train', *ARGS, f"--gin.MODEL_DIR='{straight}'")
  assert result.returncode == 0, result.stderr[-3000:]

  preempted = tmp_path / 'preempted'
  command = [
    sys.executable,
    '-m',
    'dsbs_jax.train',
    *ARGS,
    f"--gin.MODEL_DIR='{preempted}'",
  ]
  process = subprocess.Popen(
    command,
    env=binary_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  log = []
  # Signal once the run has logged a few steps (orbax also saves the first).
  for line in process.stderr:
    log.append(line)
    if f'step 3/{STEPS}' in line:
      process.send_signal(signal.SIGTERM)
      break
  log += process.communicate(timeout=300)[1].splitlines()
  assert process.returncode == 0, ''.join(log[-30:])
  [stopped] = [line for line in log if 'Stopped at step' in line]
  step = int(stopped.split('Stopped at step ')[1].split()[0])
  assert 3 <= step < STEPS, stopped
  assert 'for a preemption signal (SIGTERM)' in stopped
  assert 'Rerunning the same command resumes from it.' in stopped
  # A checkpoint of exactly the step reached (step 1: orbax's first save).
  assert _steps_saved(preempted)[-1] == step
  saved = ocp.PyTreeCheckpointer().restore(
    (preempted / f'checkpoint_{step}' / 'default').absolute()
  )
  assert int(saved['step']) == step

  resumed = run_binary('train', *command[3:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from step {step}.' in resumed.stderr
  # The same program on the same values: the very same bits.
  want = jax.tree.leaves(final_params(straight, STEPS))
  got = jax.tree.leaves(final_params(preempted, STEPS))
  for a, b in zip(want, got):
    np.testing.assert_array_equal(b, a)
  # The rerun logs each step after the preemption checkpoint exactly once,
  # with the uninterrupted run's losses.
  *_, after = scalars(preempted / 'train', 'loss')
  assert sorted(after) == list(range(step + 1, STEPS + 1))
  [uninterrupted] = scalars(straight / 'train', 'loss')
  for s in after:
    assert after[s] == uninterrupted[s], s


# Two processes, each a "host" running the stop logic of the train loop at
# its own pace; one of them gets the signal. Both must stop at one step.
_HOST = textwrap.dedent(
  """
  import os, signal, sys, time
  import jax
  process_id, port, model_dir, signalled, signame = sys.argv[1:]
  jax.distributed.initialize(f'localhost:{port}', 2, int(process_id))
  from dsbs_jax import checkpoints, train
  checkpointer = checkpoints.TrainCheckpointer(model_dir, 1000)
  with train._StopSignals(checkpointer) as stop_signals:
    for step in range(1, 1000):
      time.sleep(0.02 * (1 + int(process_id)))  # hosts at different speeds
      if process_id == signalled and step == 10:
        os.kill(os.getpid(), getattr(signal, signame))
      if stop_signals.reached(step):
        break
  print('stopped at', step, stop_signals.received, flush=True)
  """
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
  'signalled,signame', [('1', 'SIGTERM'), ('0', 'SIGINT')]
)
def test_all_processes_stop_at_the_same_step(tmp_path, signalled, signame):
  """jax's preemption service agrees on the step (a SIGINT is passed on to
  it as a SIGTERM); the unsignalled, faster process waits for it."""
  port = str(_free_port())
  env = dict(binary_env(), JAX_PLATFORMS='cpu')
  hosts = [
    subprocess.Popen(
      [sys.executable, '-c', _HOST, str(i), port, str(tmp_path), signalled]
      + [signame],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [host.communicate(timeout=300) for host in hosts]
  for host, (_, err) in zip(hosts, outputs):
    assert host.returncode == 0, err[-3000:]
  lines = [out.strip().splitlines()[-1].split() for out, _ in outputs]
  steps = {int(words[2]) for words in lines}
  print(signame, 'to process', signalled, '->', lines)
  # One step for both, after the signal, before the loop's end (999).
  [step] = steps
  assert 10 < step < 999
  # jax's own handler takes SIGTERM; ours sees only the SIGINT.
  received = signame if signame == 'SIGINT' else 'None'
  assert lines[int(signalled)][3] == received
  assert lines[1 - int(signalled)][3] == 'None'


def test_no_handlers_are_left_behind():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  from dsbs_jax import train  # pylint: disable=g-import-not-at-top

  with train._StopSignals(checkpointer=None) as stop_signals:
    assert signal.getsignal(signal.SIGTERM) == stop_signals._handle
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop_signals.reached(7)
  assert stop_signals.received == 'SIGTERM' and stop_signals.stopped_at == 7
  assert {s: signal.getsignal(s) for s in before} == before
