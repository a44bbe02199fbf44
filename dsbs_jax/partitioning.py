"""Device mesh, logical-axis rules and shardings; multi-host start-up.

The mesh has two axes, `data` and `model`, as in t5x. Parameters carry
logical axis names (see `network.py`); `logical_axis_rules` maps them onto the
mesh (t5x's standard rules: vocabulary, MLP and heads split over `model`,
batches over `data`; with 2-D parameter partitioning also `embed` over
`data`). Optimizer state that is shaped like its parameter gets
the parameter's sharding; smaller state (Adafactor's factored statistics,
counters) is replicated.

On several hosts (Cloud TPU pod slices, multi-GPU machines) every process runs
the same program; `initialize_distributed` starts jax's multi-host runtime and
each host loads its own slice of the global batch (`global_batch`).
"""

from collections.abc import Sequence
import contextlib
import dataclasses
from typing import Any

from absl import logging
from flax import linen as nn
import gin
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

LogicalRules = Sequence[tuple[str, str | None]]

DATA, MODEL = 'data', 'model'


@gin.configurable
def standard_logical_axis_rules(
  parameter_partitioning_dims: int = 1,
) -> LogicalRules:
  """t5x's standard rules, for 1-D or 2-D parameter partitioning.

  1-D splits parameters over `model` only (vocabulary, MLP, heads). 2-D also
  splits `embed` over `data`, as t5x's `parameter_partitioning_dims=2`:
  every parameter and its optimizer state is then spread over all devices
  (FSDP / ZeRO-3), and XLA gathers each where it is used. Activations keep
  `batch` over `data`: flax gives a mesh axis to the first rule that claims
  it, so their `embed` stays whole.
  """
  if parameter_partitioning_dims not in (1, 2):
    raise ValueError(
      f'parameter_partitioning_dims must be 1 or 2, got '
      f'{parameter_partitioning_dims}'
    )
  return (
    ('batch', DATA),
    ('vocab', MODEL),
    ('mlp', MODEL),
    ('heads', MODEL),
    ('joined_kv', MODEL),
    ('embed', DATA if parameter_partitioning_dims == 2 else None),
    ('kv', None),
    ('length', None),
    ('relpos_buckets', None),
  )


@gin.configurable
def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  enabled: bool = False,
) -> None:
  """Starts jax's multi-host runtime when asked to.

  On Cloud TPU VMs and SLURM/Open MPI clusters jax finds the coordinator by
  itself (`enabled=True` alone); elsewhere pass the three arguments (for
  example from environment variables set by the launcher).
  """
  if not enabled:
    return
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
  )
  logging.info(
    'Process %d of %d; %d local of %d devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


@gin.configurable
@dataclasses.dataclass
class Partitioner:
  """Chooses the mesh and turns logical annotations into shardings.

  Give at most one of `num_partitions` (size of the `model` axis; the rest
  of the devices form `data`, as t5x's knob) or `mesh_shape` (data, model).
  The default is pure data parallelism. `devices` restricts the mesh to those
  devices (default: all of `jax.devices()`), e.g. one device for a reference.
  """

  num_partitions: int | None = None
  mesh_shape: tuple[int, int] | None = None
  logical_axis_rules: LogicalRules = dataclasses.field(
    default_factory=standard_logical_axis_rules
  )
  devices: Sequence[jax.Device] | None = None

  def __post_init__(self):
    n = jax.device_count() if self.devices is None else len(self.devices)
    if self.num_partitions is not None and self.mesh_shape is not None:
      raise ValueError('Give num_partitions or mesh_shape, not both.')
    if self.mesh_shape is not None:
      shape = tuple(self.mesh_shape)
    else:
      model = self.num_partitions or 1
      if n % model:
        raise ValueError(
          f'num_partitions={model} does not divide the {n} devices.'
        )
      shape = (n // model, model)
    if int(np.prod(shape)) != n:
      raise ValueError(
        f'Mesh shape {shape} needs {int(np.prod(shape))} '
        f'devices; there are {n}.'
      )
    # create_device_mesh follows the physical topology on TPU pods.
    devices = None if self.devices is None else list(self.devices)
    self.mesh = Mesh(
      mesh_utils.create_device_mesh(shape, devices), (DATA, MODEL)
    )

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape[DATA]

  def check_batch_size(self, batch_size: int) -> None:
    """ValueError, naming the nearest multiples, unless `batch_size` rows
    split evenly over the data shards (jax says so only when the first
    batch is sharded)."""
    shards = self.data_parallel_size
    if batch_size % shards == 0:
      return
    below = batch_size // shards * shards
    choices = [n for n in (below, below + shards) if n > 0]
    raise ValueError(
      f'BATCH_SIZE={batch_size} rows a step cannot be split over the '
      f'{shards} data shards of the mesh {dict(self.mesh.shape)}; use a '
      f'multiple of {shards}, e.g. '
      + ' or '.join(f'--gin.BATCH_SIZE={n}' for n in choices)
      + '.'
    )

  def sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  @property
  def replicated(self) -> NamedSharding:
    return self.sharding(P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return self.sharding(P(DATA))

  def params_shardings(self, boxed_params: Any) -> Any:
    """Shardings for parameters from their flax logical-axis metadata."""
    return nn.logical_to_mesh_sharding(
      nn.get_partition_spec(boxed_params), self.mesh, self.logical_axis_rules
    )

  def optimizer_shardings(
    self,
    optimizer: optax.GradientTransformation,
    opt_state_shapes: Any,
    param_shapes: Any,
    params_shardings: Any,
  ) -> Any:
    """Parameter-shaped optimizer state follows its parameter's sharding."""

    def like_param(state_leaf, param_leaf, param_sharding):
      if state_leaf.shape == param_leaf.shape:
        return param_sharding
      return self.replicated

    return optax.tree_map_params(
      optimizer,
      like_param,
      opt_state_shapes,
      param_shapes,
      params_shardings,
      transform_non_params=lambda _: self.replicated,
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )

  def global_batch(
    self, local_batch: dict[str, np.ndarray]
  ) -> dict[str, jax.Array]:
    """Global arrays sharded over `data` from this host's slice of a batch."""
    return {
      name: jax.make_array_from_process_local_data(self.batch_sharding, value)
      for name, value in local_batch.items()
    }

  def shard_full_batch(
    self, batch: dict[str, np.ndarray]
  ) -> dict[str, jax.Array]:
    """Global arrays sharded over `data` from a batch every host holds whole
    (inference reads the full split on every host)."""
    return {
      name: jax.make_array_from_process_local_data(
        self.batch_sharding, value, value.shape
      )
      for name, value in batch.items()
    }

  @contextlib.contextmanager
  def activation_context(self):
    """Context in which the network's logical sharding constraints apply."""
    with (
      jax.set_mesh(self.mesh),
      nn.logical_axis_rules(self.logical_axis_rules),
    ):
      yield
