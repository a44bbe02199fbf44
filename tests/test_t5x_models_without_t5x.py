"""Without t5x, importing dsbs_jax.t5x_models says how to install t5x."""

import subprocess
import sys

# `None` in sys.modules makes `import t5x` fail as if it were not installed.
_IMPORT_WITHOUT_T5X = """
import sys
sys.modules['t5x'] = None
try:
  import dsbs_jax.t5x_models
except ImportError as e:
  print(e)
else:
  print('imported')
"""


def test_import_without_t5x_explains_how_to_install_it():
  result = subprocess.run(
    [sys.executable, '-c', _IMPORT_WITHOUT_T5X],
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  message = result.stdout.strip()
  assert message.startswith('dsbs_jax.t5x_models needs t5x'), message
  assert "pip install 'git+https://github.com/google-research/t5x'" in message
