"""Train-state checkpoints of our own runs: orbax save, resume and restore.

This module's one job is our own checkpoints (`checkpoint_<step>/` in
MODEL_DIR, as t5x names them): saving the train state asynchronously and
atomically, resuming from the newest one, and restoring parameters for
evaluation. Foreign checkpoints (t5x, HuggingFace) are read by
`checkpoint_import`, which `restore_params` falls back to.
"""

from collections.abc import Iterator
import contextlib
import logging
import os
import re
import sys
from typing import Any
import warnings

from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from dsbs_jax import checkpoint_import
from dsbs_jax import errors
from dsbs_jax import network

CHECKPOINT_PREFIX = 'checkpoint'  # checkpoint_<step>, as t5x names them


def abstract_arrays(
  shapes: Any, shardings: Any, dtype: Any | None = None
) -> Any:
  """ShapeDtypeStructs carrying their shardings: what to restore into, or
  to lower a program for, without allocating."""
  return jax.tree.map(
    lambda s, sharding: jax.ShapeDtypeStruct(
      s.shape, dtype or s.dtype, sharding=sharding
    ),
    shapes,
    shardings,
  )


def _check_saved_shapes(saved: Any, expected: Any, where: str) -> None:
  """Names the first leaves whose saved shape differs from the model's."""
  saved = traverse_util.flatten_dict(saved, sep='/')
  expected = traverse_util.flatten_dict(expected, sep='/')
  problems = [
    f'{k} is {tuple(saved[k].shape)}, the model needs {tuple(v.shape)}'
    for k, v in expected.items()
    if k in saved and tuple(saved[k].shape) != tuple(v.shape)
  ]
  problems += [f'{k} is missing' for k in expected if k not in saved]
  if problems:
    raise checkpoint_import.CheckpointError(
      f'{where} holds a checkpoint of another model ({"; ".join(problems[:3])}'
      f'{"; ..." if len(problems) > 3 else ""}). Use a new MODEL_DIR or the '
      'gin files of the model that wrote it.'
    )


class CheckpointWriteError(errors.UserError):
  """A checkpoint could not be written (disk full, permission lost, ...)."""


# The status codes tensorstore reports storage problems with (its errors are
# ValueErrors): local files carry the OS error number, cloud storage a status.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_STORAGE_STATUS = re.compile(
  r'\b(PERMISSION_DENIED|RESOURCE_EXHAUSTED|UNAUTHENTICATED|NOT_FOUND)\b'
)


def storage_error(error: BaseException) -> str | None:
  """The OS (or storage service) error behind `error`, in a few words; None
  when `error` is not a storage problem (a bug keeps its traceback)."""
  while error is not None:
    if isinstance(error, OSError):
      return str(error)
    text = str(error)
    if code := _OS_ERROR_CODE.search(text):
      number = int(code.group(1))
      return f'[Errno {number}] {os.strerror(number)}'
    if status := _STORAGE_STATUS.search(text):
      return text[status.start() :].splitlines()[0][:300]
    error = error.__cause__ or error.__context__
  return None


class _UnretrievedErrors(logging.Filter):
  """Drops asyncio's "Task/Future exception was never retrieved" reports."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'exception was never retrieved' not in record.getMessage()


_UNRETRIEVED_ERRORS = _UnretrievedErrors()


def _mute_echoes_of_a_failed_save() -> None:
  """After a failed save, its other writes fail too and say so late, often
  after the one-line error that ends the run: orbax's asyncio tasks and
  coroutines when garbage-collected ("exception was never retrieved",
  "never awaited"), tensorstore's callbacks into orbax's closed event loop
  (unraisable "Event loop is closed"). Mutes exactly those."""
  logging.getLogger('asyncio').addFilter(_UNRETRIEVED_ERRORS)
  warnings.filterwarnings('ignore', 'coroutine .* was never awaited')
  unraisablehook = sys.unraisablehook
  if getattr(unraisablehook, 'mutes_closed_event_loop', False):
    return

  def muted(unraisable):
    if not (
      isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == 'Event loop is closed'
    ):
      unraisablehook(unraisable)

  muted.mutes_closed_event_loop = True
  sys.unraisablehook = muted


def finished_steps(model_dir: str | epath.Path) -> list[int]:
  """Steps of the complete checkpoints in `model_dir`, oldest first."""
  directory = epath.Path(model_dir)
  if not directory.is_dir():
    return []
  steps = (_finished_step(path) for path in directory.iterdir())
  return sorted(step for step in steps if step is not None)


def _finished_step(directory: epath.Path) -> int | None:
  """The step of a complete `checkpoint_<step>` directory, else None.

  Orbax renames a checkpoint's temporary directory to `checkpoint_<step>`
  when everything in it is written; on cloud storage, where it writes in
  place, it adds a commit file instead. `is_path_finalized` knows both.
  """
  prefix, _, step = directory.name.rpartition('_')
  if (
    prefix == CHECKPOINT_PREFIX
    and step.isdigit()
    and ocp.step.is_path_finalized(directory)
  ):
    return int(step)
  return None


class TrainCheckpointer:
  """Saves the train state every `period` steps and keeps the newest `keep`.

  Saves are asynchronous (training continues while arrays are written) and
  atomic: orbax finalises a step's directory only when complete, so a run
  killed mid-save resumes from the previous checkpoint. A save that fails
  for a storage reason raises `CheckpointWriteError` (from `save` or `wait`,
  whichever first sees the background write fail) and closes the
  checkpointer; the earlier checkpoints stay intact.
  """

  def __init__(self, model_dir: str, period: int, keep: int | None = None):
    self.model_dir = model_dir
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=period,
      max_to_keep=keep,
      step_prefix=CHECKPOINT_PREFIX,
      create=True,
      enable_async_checkpointing=True,
      # Removes what a killed or failed save left behind.
      cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
      epath.Path(model_dir).absolute(),
      options=options,
      item_handlers=ocp.StandardCheckpointHandler(),
    )

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    with self._reporting_write_errors():
      return self._manager.save(
        step, args=ocp.args.StandardSave(state), force=force
      )

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has reached the step jax's preemption service
    chose to save at after a SIGTERM (multi-process runs; False otherwise)."""
    return self._manager.reached_preemption(step)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, after pending saves finish."""
    self.wait()
    steps = finished_steps(self.model_dir)
    return steps[-1] if steps else None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.model_dir, f'{CHECKPOINT_PREFIX}_{step}')

  @contextlib.contextmanager
  def _reporting_write_errors(self) -> Iterator[None]:
    try:
      yield
    except Exception as e:  # pylint: disable=broad-exception-caught
      reason = storage_error(e)
      if reason is None:
        raise
      # The failed save's other threads may still be writing (and failing):
      # let them end, so that nothing is logged after the error.
      _mute_echoes_of_a_failed_save()
      with contextlib.suppress(Exception):
        self._manager.close()
      steps = finished_steps(self.model_dir)
      intact = (
        f'the newest intact one is {self.step_dir(steps[-1])}'
        if steps
        else 'there is none yet'
      )
      raise CheckpointWriteError(
        f'Could not write a checkpoint to {self.model_dir}: {reason}. '
        f'Earlier checkpoints are not affected ({intact}); free space or '
        'fix the permissions, then rerun the same command to resume.'
      ) from e

  def restore_latest(self, shapes: Any, shardings: Any) -> Any | None:
    """The newest complete checkpoint, sharded like `shardings`, or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    saved = self._manager.item_metadata(step).tree
    _check_saved_shapes(saved['params'], shapes.params, self.model_dir)
    try:
      return self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_arrays(shapes, shardings))
      )
    except (ValueError, KeyError, TypeError) as e:  # The tree differs.
      raise checkpoint_import.CheckpointError(
        f'{self.model_dir} holds a train state this configuration cannot '
        f'restore (another optimizer?): {str(e).strip().splitlines()[0][:300]}'
        '. Use a new MODEL_DIR or the gin files of the run that wrote it.'
      ) from e

  def wait(self) -> None:
    """Waits for pending saves; raises `CheckpointWriteError` if one failed."""
    with self._reporting_write_errors():
      self._manager.wait_until_finished()


def _stack_abstract(layers: list[jax.ShapeDtypeStruct]) -> jax.ShapeDtypeStruct:
  """The abstract array of `layers` stacked on a new, unsplit leading axis."""
  first = layers[0]
  sharding = first.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec)
    )
  return jax.ShapeDtypeStruct(
    (len(layers), *first.shape), first.dtype, sharding=sharding
  )


def _own_checkpoint(path: epath.Path) -> tuple[epath.Path, int] | None:
  """(checkpoint directory, step) when `path` is a run of ours (its newest
  complete checkpoint) or one of its complete `checkpoint_<step>`
  directories; None for anything else (t5x names its directories alike, but
  ours hold the orbax item `default`)."""
  step = _finished_step(path)
  if step is None:
    steps = finished_steps(path)
    if not steps:
      return None
    step = steps[-1]
    path = path / f'{CHECKPOINT_PREFIX}_{step}'
  return (path, step) if (path / 'default').is_dir() else None


def restore_params(
  path: str,
  param_shapes: Any,
  param_shardings: Any,
  config: network.T5Config,
  dtype: Any | None = None,
) -> tuple[Any, int]:
  """Sharded parameters (and their step) for evaluation or inference.

  `path` is a MODEL_DIR of ours (its newest checkpoint), one of its
  `checkpoint_<step>` directories, or anything `load_params` reads (a t5x or
  HuggingFace checkpoint, step 0). `dtype` (e.g. 'bfloat16') halves the memory
  of float32 parameters for inference. Only parameters are read.
  """
  own = _own_checkpoint(epath.Path(path))
  if own is not None:
    directory, step = own
    item = directory.absolute() / 'default'
    saved = ocp.PyTreeCheckpointHandler().metadata(item).tree['params']
    # A run with scanned layers saves them stacked; either layout loads into
    # either model (network.T5Config.scan_layers).
    saved_scanned = 'layers' in saved.get('encoder', {})
    saved_layout = config.replace(scan_layers=saved_scanned)
    target = abstract_arrays(param_shapes, param_shardings, dtype)
    if saved_scanned:
      target = network.stack_layers(target, saved_layout, _stack_abstract)
    else:
      target = network.unstack_layers(target, config)
    _check_saved_shapes(saved, target, path)
    restore_args = jax.tree.map(
      lambda a: ocp.ArrayRestoreArgs(
        sharding=a.sharding, dtype=a.dtype, global_shape=a.shape
      ),
      target,
    )
    params = checkpoint_import.restore_orbax_subtree(
      item, 'params', target, restore_args
    )
    if saved_scanned != config.scan_layers:
      params = jax.jit(
        lambda p: network.stack_layers(
          network.unstack_layers(p, saved_layout), config, jnp.stack
        ),
        out_shardings=param_shardings,
      )(params)
    return params, step
  params = checkpoint_import.load_params(path, config, param_shardings)
  if dtype is not None:
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  return params, 0
