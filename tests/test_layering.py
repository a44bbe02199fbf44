"""One direction of dependency: the framework `dsbs_jax` never imports the
tasks (`dsbs_tasks`, the folder tasks/), which sit on top of it."""

import pkgutil
import subprocess
import sys

import dsbs_jax

# `None` in sys.modules makes an import fail as if the package were absent.
_IMPORT_EVERY_MODULE = """
import importlib
import pkgutil
import sys

sys.modules['dsbs_tasks'] = None
sys.modules['tasks'] = None
import dsbs_jax

for info in pkgutil.iter_modules(dsbs_jax.__path__):
  name = 'dsbs_jax.' + info.name
  try:
    importlib.import_module(name)
  except ImportError as e:
    # Only the real-t5x model may miss something: t5x, when not installed.
    if info.name != 't5x_models' or 'needs t5x' not in str(e):
      raise
  print(name)
"""


def test_every_framework_module_imports_without_the_tasks():
  result = subprocess.run(
    [sys.executable, '-c', _IMPORT_EVERY_MODULE],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  modules = {
    'dsbs_jax.' + info.name for info in pkgutil.iter_modules(dsbs_jax.__path__)
  }
  assert {'dsbs_jax.models', 'dsbs_jax.train', 'dsbs_jax.two_tasks'} <= modules
  assert set(result.stdout.split()) == modules
