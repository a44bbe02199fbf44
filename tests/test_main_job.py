"""README.md's main job, run as written there (in a fresh MODEL_DIR)."""

import json
from pathlib import Path
import re
import shlex
import subprocess

import pytest
import test_binaries

# End to end: README's main job, about 75 seconds on a CPU.
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / 'README.md'


def readme_main_job_command() -> list[str]:
  """The first command of README.md's "The main job" section."""
  section = README.read_text().split('## The main job', 1)[1]
  command = re.search(r'```bash\n(.+?)\n```', section, re.S).group(1)
  return shlex.split(command)


def test_readme_main_job_trains_evaluates_and_writes_rationales(tmp_path):
  binary, *args = readme_main_job_command()
  assert binary == 'dsbs-train'
  result = subprocess.run(
    [binary, *args, f"--gin.MODEL_DIR='{tmp_path}'"],
    capture_output=True,
    text=True,
    env=test_binaries.binary_env(),
    timeout=1200,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  accuracy = re.search(
    r'\(test, step \d+\): accuracy = ([0-9.]+)', result.stdout
  )
  assert accuracy, result.stdout
  # Learnt, not guessed: the synthetic answers are numbers up to 18.
  assert float(accuracy.group(1)) > 0.5
  [predictions] = (tmp_path / 'eval_test').glob('predictions_*.jsonl')
  records = [json.loads(line) for line in predictions.read_text().splitlines()]
  assert len(records) == 100
  assert all(record['rationale'] for record in records)
