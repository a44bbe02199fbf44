r"""Exports a checkpoint as a HuggingFace T5 folder: weights, config, tokenizer.

  python -m dsbs_jax.export_hf \
    --gin_file=runs/dsbs.gin --gin_file=models/t5_1_1_base.gin \
    --checkpoint=/tmp/dsbs --output=/tmp/dsbs_hf [--dtype=bfloat16]

The gin files are the train binary's (the model file suffices): MODULE gives
the network, VOCABULARY the tokenizer, and the run's LABEL_PREFIX and
RATIONALE_PREFIX are recorded in config.json's `task_specific_params`.
MODEL_DIR need not be bound. `--checkpoint` is a MODEL_DIR of ours (its
newest checkpoint), one of its `checkpoint_<step>` directories, or a t5x
checkpoint (legacy or orbax). The folder written loads with
`transformers.T5ForConditionalGeneration.from_pretrained` and
`AutoTokenizer.from_pretrained`; docs/export_hf.md shows how to prompt it.
"""

from typing import Any

from absl import flags
from absl import logging
from etils import epath
from flax import traverse_util
import gin
import jax
import numpy as np
import seqio

from dsbs_jax import checkpoint_export
from dsbs_jax import checkpoint_import
from dsbs_jax import checkpoints
from dsbs_jax import gin_utils
from dsbs_jax import network
from dsbs_jax import two_tasks


def _define_flags() -> None:
  """The binary's flags, defined when it runs (not on import: `python -m`
  imports this module a second time, see `gin_utils.run`)."""
  if 'checkpoint' in flags.FLAGS:
    return
  flags.DEFINE_string(
    'checkpoint',
    None,
    'A MODEL_DIR of ours (its newest checkpoint), one of its '
    'checkpoint_<step> directories, or a t5x checkpoint (legacy or orbax).',
  )
  flags.DEFINE_string(
    'output', None, 'The HuggingFace folder to write: new or empty.'
  )
  flags.DEFINE_enum(
    'dtype',
    'float32',
    sorted(checkpoint_export.DTYPES),
    'dtype of the saved weights.',
  )
  flags.DEFINE_bool(
    'overwrite',
    False,
    'Write into an output folder that is not empty, replacing an earlier '
    'export there.',
  )


def _host_device() -> jax.Device:
  """Where the parameters are gathered: host memory when jax has a CPU."""
  try:
    return jax.local_devices(backend='cpu')[0]
  except RuntimeError:
    return jax.local_devices()[0]


def _restore(path: str, config: network.T5Config) -> tuple[Any, int]:
  """float32 numpy parameters of any checkpoint `restore_params` reads."""
  sharding = jax.sharding.SingleDeviceSharding(_host_device())
  flat = checkpoint_import.param_shapes(config)
  shapes = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in flat.items()}
  params, step = checkpoints.restore_params(
    path,
    traverse_util.unflatten_dict(shapes),
    traverse_util.unflatten_dict({k: sharding for k in flat}),
    config,
  )
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params), step


@gin.configurable
def export(
  *,
  module: network.Transformer,
  vocabulary: seqio.Vocabulary,
  checkpoint: str,
  output: str,
  dtype: str = 'float32',
  overwrite: bool = False,
  prefixes: two_tasks.TaskPrefixes | None = None,
) -> int:
  """Writes `checkpoint` as a HuggingFace T5 folder; returns its step."""
  if not epath.Path(checkpoint).exists():
    raise checkpoint_export.ExportError(
      f'Checkpoint {checkpoint}: no such file or directory.'
    )
  checkpoint_export.check_output_dir(output, overwrite)
  # HuggingFace's tree is per layer, whichever layout the run trained in.
  config = module.config.replace(scan_layers=False)
  params, step = _restore(checkpoint, config)
  checkpoint_export.save_hf(
    params, config, vocabulary, output, dtype, prefixes, overwrite
  )
  logging.info(
    'Exported %s (step %d) to %s (%s).', checkpoint, step, output, dtype
  )
  return step


def _bound(binding_key: str) -> bool:
  try:
    gin.query_parameter(binding_key)
  except ValueError:
    return False
  return True


def export_from_flags() -> int:
  """`export` with the module and vocabulary of the gin files (MODULE,
  VOCABULARY, unless bound to `export` itself) and the command's flags."""
  if jax.process_count() > 1:
    raise checkpoint_export.ExportError(
      'dsbs-export-hf runs in one process: run it on one machine, without '
      'a multi-host mesh file (it needs no accelerator).'
    )
  values = flags.FLAGS
  for name in ('checkpoint', 'output'):
    if not values[name].value:
      raise checkpoint_export.ExportError(f'--{name} is required.')
  for arg, macro in (('module', 'MODULE'), ('vocabulary', 'VOCABULARY')):
    if _bound(f'{__name__}.export.{arg}'):
      continue
    if not _bound(f'{macro}/gin.macro.value'):
      raise gin_utils.GinConfigError(
        f'{macro} is not defined: pass the gin file of the model the '
        'checkpoint was trained with (--gin_file=models/...).'
      )
    gin.parse_config(f'{__name__}.export.{arg} = %{macro}')
  return export(
    checkpoint=values.checkpoint,
    output=values.output,
    dtype=values.dtype,
    overwrite=values.overwrite,
    prefixes=two_tasks.TaskPrefixes(),
  )


def main() -> None:
  _define_flags()
  gin_utils.run(export_from_flags)


if __name__ == '__main__':
  main()
