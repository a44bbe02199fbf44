"""Gin flags of the binaries: `--gin_file`, `--gin.NAME=value`, search paths.

`--gin.NAME=value` is t5x's shorthand for `--gin_bindings='NAME = value'`.
The project's own `gin/` folder is always on the search path, so
`--gin_file=models/t5_1_1_base.gin` works from any directory. Mistakes in the
configuration stop the program with one short message (`GinConfigError`)
rather than a traceback.
"""

from collections.abc import Callable
from collections.abc import Sequence
import contextlib
import importlib
import logging
import os
from pathlib import Path
import sys
import tokenize
from typing import Any

from absl import app
from absl import flags
import gin

from dsbs_jax import errors
from dsbs_jax import partitioning

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
  tracker = _FileTracker()
  try:
    with tracker:
      gin.parse_config_files_and_bindings(
        files, [*_GIN_BINDINGS.value, *extra_bindings], finalize_config=False
      )
  except _IncludeCycle as e:
    raise GinConfigError(f'{_first_line(e)}{_location(e)}.') from None
  except OSError as e:
    raise GinConfigError(f'{e} (searched {", ".join(search_paths)}).') from e
  except RecursionError as e:
    raise GinConfigError(
      f'a value or include nested too deeply{_location(e)}.'
    ) from e
  except tokenize.TokenError as e:  # an unclosed bracket at the end of a file
    raise GinConfigError(
      f'{tracker.failed or "a binding"}: a bracket or string is not closed.'
    ) from e
  except UnicodeDecodeError as e:
    raise GinConfigError(
      f'{tracker.failed or "a binding"}: not UTF-8 text ({_first_line(e)})'
      f'{_location(e)}.'
    ) from e
  # AttributeError: a selector naming no attribute of its module.
  except (
    ValueError,
    SyntaxError,
    TypeError,
    ImportError,
    AttributeError,
  ) as e:
    raise GinConfigError(_first_line(e) + _location(e) + _hint(e)) from e
  finally:
    logging.disable(logging.NOTSET)


class _IncludeCycle(Exception):
  pass


class _FileTracker:
  """While active, tracks the gin files being parsed, to stop include cycles
  at once and to name the file of errors gin does not place.

  gin would parse a cycle again and again until Python's recursion limit
  (seconds to minutes). Its `parse_config` includes files through the
  module's `parse_config_file`, which this wraps.
  """

  def __init__(self):
    self.stack: list[str] = []
    self.failed: str | None = None  # the innermost file an error came from
    self._parse_config_file = gin.config.parse_config_file

  def __enter__(self) -> None:
    gin.config.parse_config_file = self._parse_file

  def __exit__(self, *unused: Any) -> None:
    gin.config.parse_config_file = self._parse_config_file

  def _parse_file(self, config_file: str, *args: Any, **kwargs: Any) -> Any:
    if config_file in self.stack:
      cycle = [*self.stack[self.stack.index(config_file) :], config_file]
      raise _IncludeCycle(f'gin files include one another: {" → ".join(cycle)}')
    self.stack.append(config_file)
    try:
      return self._parse_config_file(config_file, *args, **kwargs)
    except BaseException:
      if self.failed is None:
        self.failed = config_file
      raise
    finally:
      self.stack.pop()


def _text(error: Exception) -> str:
  """`str(error)`, or '' where that fails: gin wraps an exception once per
  include level, and an include cycle's message nests too deeply for str."""
  try:
    return str(error)
  except RecursionError:
    return ''


def _first_line(error: Exception) -> str:
  """The first line of gin's message (it appends the place on other lines)."""
  text = error.msg if isinstance(error, SyntaxError) else _text(error)
  lines = str(text).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def _location(error: Exception) -> str:
  """Where gin says an error is, as ' (in FILE, line N: TEXT)', or ''."""
  if isinstance(error, SyntaxError) and error.lineno:
    where = f'in {error.filename}' if error.filename else 'in a binding'
    text = error.text.strip() if error.text else ''
    text = f': {text[:60]!r}{"…" if len(text) > 60 else ""}' if text else ''
    return f' ({where}, line {error.lineno}{text})'
  for line in _text(error).splitlines()[1:]:
    if line.strip().startswith('In file'):
      return f' ({line.strip()[0].lower()}{line.strip()[1:]})'
  return ''


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
  text = _text(error)
  if 'No configurable matching' in text or 'not a parameter' in text.lower():
    return (
      ' — check the spelling of the binding against the gin files and '
      'docs/configuration.md.'
    )
  return ''


def run(configured_fn: Callable[[], Any]) -> None:
  """The `main` of every binary: calls `configured_fn` configured by gin.

  Parses the command line (absl flags, `--gin.NAME=value`), the gin files
  and bindings, starts jax's multi-host runtime when there is one, and calls
  `configured_fn()`. A `UserError` ends the program with its message alone
  (exit status 2).
  """
  main_spec = sys.modules['__main__'].__spec__
  if configured_fn.__module__ == '__main__' and main_spec is not None:
    # `python -m dsbs_jax.x` runs x's file as __main__, whose functions gin
    # does not configure (gin files import dsbs_jax.x): use the module's own.
    module = importlib.import_module(main_spec.name)
    configured_fn = getattr(module, configured_fn.__name__)

  def main(argv: Sequence[str]) -> None:
    del argv  # absl's flags hold them.
    parse_gin_flags()
    partitioning.initialize_distributed()
    with config_errors():
      configured_fn()

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
