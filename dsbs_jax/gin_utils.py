"""Gin flags of the binaries: `--gin_file`, `--gin.NAME=value`, search paths.

`--gin.NAME=value` is t5x's shorthand for `--gin_bindings='NAME = value'`.
The project's own `gin/` folder is always on the search path, so
`--gin_file=models/t5_1_1_base.gin` works from any directory. Mistakes in the
configuration stop the program with one short message (`GinConfigError`)
rather than a traceback.
"""

from collections.abc import Sequence
import contextlib
import logging
import os
from pathlib import Path
import sys

from absl import app
from absl import flags

from dsbs_jax import errors
import gin

_GIN_FILES = flags.DEFINE_multi_string(
  'gin_file', [], 'Gin files to parse, in order; later ones override.'
)
_GIN_BINDINGS = flags.DEFINE_multi_string(
  'gin_bindings', [], 'Individual gin bindings, applied after the files.'
)
_GIN_SEARCH_PATHS = flags.DEFINE_list(
  'gin_search_paths', [], 'Folders to look in for gin files and their includes.'
)


class GinConfigError(errors.UserError):
  """A mistake in the gin configuration or the command line."""

  def __init__(self, message: str):
    super().__init__(f'Configuration error: {message}')


def project_gin_dir() -> Path:
  """The gin/ folder: installed package data, or the source checkout's."""
  package = Path(__file__).resolve().parent
  for candidate in (package / 'gin', package.parent / 'gin'):
    if candidate.is_dir():
      return candidate
  raise FileNotFoundError(f'No gin/ folder next to {package}.')


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns `--gin.NAME=value` into `--gin_bindings=NAME = value`."""
  rewritten = []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.') :].partition('=')
      if not sep:
        raise GinConfigError(f'{arg!r} has no value; write --gin.{name}=VALUE.')
      arg = f'--gin_bindings={name} = {value}'
    rewritten.append(arg)
  return rewritten


def parse_gin_flags(extra_bindings: Sequence[str] = ()) -> None:
  """Parses the gin files and bindings given on the command line."""
  search_paths = [os.getcwd(), *_GIN_SEARCH_PATHS.value, str(project_gin_dir())]
  for path in search_paths:
    gin.add_config_file_search_path(path)
  files = _GIN_FILES.value
  if not files:
    raise GinConfigError('no --gin_file given.')
  # gin logs an error for every search path a file is not in; mute it.
  logging.disable(logging.ERROR)
  try:
    gin.parse_config_files_and_bindings(
      files, [*_GIN_BINDINGS.value, *extra_bindings], finalize_config=False
    )
  except OSError as e:
    raise GinConfigError(f'{e} (searched {", ".join(search_paths)}).') from e
  except (ValueError, SyntaxError, TypeError, ImportError) as e:
    raise GinConfigError(str(e).strip().splitlines()[0] + _hint(e)) from e
  finally:
    logging.disable(logging.NOTSET)


@contextlib.contextmanager
def config_errors():
  """Turns gin's call-time complaints (an unbound argument or macro) into
  `GinConfigError`; other errors propagate unchanged."""
  try:
    yield
  except (TypeError, ValueError) as e:
    text = str(e)
    if 'No values supplied by Gin' in text or 'Unknown reference' in text:
      lines = [line.strip() for line in text.splitlines() if line.strip()]
      raise GinConfigError(
        ' '.join(lines[:2]) + ' — bind it in a gin file '
        'or with --gin.NAME=VALUE.'
      ) from e
    raise


def _hint(error: Exception) -> str:
  text = str(error)
  if 'No configurable matching' in text or 'not a parameter' in text.lower():
    return (
      ' — check the spelling of the binding against the gin files and '
      'docs/configuration.md.'
    )
  return ''


def run(main) -> None:
  """absl.app.run with `--gin.NAME=value`; a `UserError` ends the program
  with its message alone (exit status 2)."""
  try:
    app.run(main, argv=rewrite_gin_args(sys.argv))
  except errors.UserError as e:
    # gin appends "In call to configurable ..." lines; the message suffices.
    lines = [
      line
      for line in str(e).splitlines()
      if line.strip() and not line.strip().startswith('In call to')
    ]
    print('\n'.join(lines), file=sys.stderr)
    sys.exit(2)
