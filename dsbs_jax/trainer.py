"""Train state, optimizers, schedules and the jit-compiled sharded train step.

One `Trainer` owns a model, a partitioner and an optax optimizer. Its train
step is compiled once with explicit input/output shardings and donates the old
state. Gradient accumulation over `num_microbatches` scans over interleaved
slices of the global batch (each slice spread over every data shard); the
model's loss normalizers are computed once on the whole batch, so the summed
microbatch gradients equal the full-batch gradient.

Every model metric is additive (clu `Average` or `metrics.Sum`), so merging
across microbatches is a tree sum.

A step whose loss, gradient norm or resulting state is not finite leaves the
parameters and the optimizer state as they were (its batch still counts:
`step` advances) and reports itself in the `nonfinite_steps` metric.
"""

from collections.abc import Mapping
import functools
from typing import Any

import flax
from flax import linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsbs_jax import metrics as metrics_lib
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import partitioning

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: the data position is `step` batches."""

  step: Array
  params: Any
  opt_state: Any


# -- learning-rate schedules and optimizers ----------------------------------


@gin.configurable
def learning_rate_schedule(
  base_learning_rate: float = 1e-3,
  schedule: str = 'constant',
  warmup_steps: int = 0,
  total_steps: int | None = None,
) -> optax.Schedule:
  """Learning rate by step.

  `constant`: linear warm-up over `warmup_steps`, then `base_learning_rate`.
  `rsqrt`: `base / sqrt(max(step, warmup_steps))` (t5x's pre-training decay;
  flat during warm-up). `linear_decay` / `cosine_decay`: warm-up, then decay to
  0 at `total_steps` (the reference implementation used linear decay).
  """
  if schedule == 'rsqrt':
    return lambda step: (
      base_learning_rate / jnp.sqrt(jnp.maximum(step, max(warmup_steps, 1)))
    )
  warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
  if schedule == 'constant':
    after = optax.constant_schedule(base_learning_rate)
  elif schedule in ('linear_decay', 'cosine_decay'):
    if not total_steps or total_steps <= warmup_steps:
      raise ValueError(f'{schedule} needs total_steps > warmup_steps.')
    decay_steps = total_steps - warmup_steps
    after = (
      optax.linear_schedule(base_learning_rate, 0.0, decay_steps)
      if schedule == 'linear_decay'
      else optax.cosine_decay_schedule(base_learning_rate, decay_steps)
    )
  else:
    raise ValueError(
      f'Unknown schedule {schedule!r}; use constant, rsqrt, '
      'linear_decay or cosine_decay.'
    )
  if warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


def _with_learning_rate_in_state(make_optimizer, learning_rate):
  """The optimizer with its current learning rate kept in its state, for
  logging (only the learning rate is injected; other settings stay static)."""

  def with_only_learning_rate(learning_rate):
    return make_optimizer(learning_rate=learning_rate)

  return optax.inject_hyperparams(with_only_learning_rate)(
    learning_rate=learning_rate
  )


@gin.configurable
def adafactor(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  decay_rate: float = 0.8,
  clipping_threshold: float | None = 1.0,
  multiply_by_parameter_scale: bool = True,
  min_dim_size_to_factor: int = 128,
) -> optax.GradientTransformation:
  """Adafactor with t5x's T5 fine-tuning defaults (decay 0.8, clip 1.0)."""
  return _with_learning_rate_in_state(
    functools.partial(
      optax.adafactor,
      decay_rate=decay_rate,
      clipping_threshold=clipping_threshold,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      min_dim_size_to_factor=min_dim_size_to_factor,
    ),
    learning_rate,
  )


@gin.configurable
def adamw(
  learning_rate: optax.ScalarOrSchedule = 5e-5,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  """AdamW as the reference (HuggingFace) implementation trained with."""
  return _with_learning_rate_in_state(
    functools.partial(
      optax.adamw, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    ),
    learning_rate,
  )


def current_learning_rate(opt_state: Any) -> Array | None:
  """The learning rate `inject_hyperparams` recorded in the optimizer state.

  None for an optimizer without injected hyperparameters (e.g. a plain
  `optax.sgd`).
  """
  hyperparams = getattr(opt_state, 'hyperparams', None)
  return None if hyperparams is None else hyperparams.get('learning_rate')


# -- the trainer -------------------------------------------------------------


def all_finite(tree: Any) -> Array:
  """Whether every floating-point value in `tree` is finite (a bool scalar)."""
  checks = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def _interleaved_microbatches(batch: Mapping[str, Array], k: int):
  """[B, ...] -> [k, B/k, ...]; microbatch i holds rows i, i+k, i+2k, ...

  Interleaving keeps every microbatch spread over all data shards.
  """

  def split(x):
    if x.shape[0] % k:
      raise ValueError(
        f'Batch size {x.shape[0]} is not divisible by num_microbatches={k}.'
      )
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

  return jax.tree.map(split, dict(batch))


def param_shapes_and_shardings(
  model: models.EncoderDecoderModel,
  partitioner: partitioning.Partitioner,
  input_shapes: Mapping[str, tuple[int, ...]],
) -> tuple[Any, Any]:
  """Abstract parameters of `model` for these inputs, and their shardings."""
  boxed = jax.eval_shape(
    lambda: model.get_initial_variables(jax.random.PRNGKey(0), input_shapes)
  )['params']
  return nn.unbox(boxed), partitioner.params_shardings(boxed)


@gin.configurable
class Trainer:
  """Initialises, shards and updates the train state of a model."""

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    partitioner: partitioning.Partitioner,
    optimizer: optax.GradientTransformation | None = None,
    num_microbatches: int | None = None,
    seed: int = 0,
    compiler_options: Mapping[str, Any] | None = None,
  ):
    """`compiler_options`: XLA options for compiling the train step (e.g.
    `{'xla_cpu_experimental_ynn_fusion_type': ''}`, which runs/main.gin sets
    for the tiny model on CPU: docs/benchmark.md); the backend must know
    them."""
    self.model = model
    self.partitioner = partitioner
    self.optimizer = optimizer or model.optimizer_def or adafactor()
    self.num_microbatches = num_microbatches or 1
    self.seed = seed
    self.compiler_options = compiler_options
    self._train_step = None
    # The optimizer always sees t5x's per-layer tree. Its statistics are per
    # parameter array (Adafactor's factored moments, update clipping and
    # parameter scale are RMS over the array), so with scanned layers it
    # updates each layer as for the unscanned model, exactly, and its state
    # has one layout whichever the parameters have.
    config = model.module.config
    self._per_layer = functools.partial(network.unstack_layers, config=config)
    self._scanned = functools.partial(
      network.stack_layers, config=config, stack_fn=jnp.stack
    )

  # -- state ---------------------------------------------------------------

  def state_shapes_and_shardings(
    self, input_shapes: Mapping[str, tuple[int, ...]]
  ) -> tuple[TrainState, TrainState]:
    """Abstract train state (shapes, dtypes) and its shardings."""
    param_shapes, param_shardings = param_shapes_and_shardings(
      self.model, self.partitioner, input_shapes
    )
    layer_shapes = self._per_layer(param_shapes)
    opt_shapes = jax.eval_shape(self.optimizer.init, layer_shapes)
    opt_shardings = self.partitioner.optimizer_shardings(
      self.optimizer,
      opt_shapes,
      layer_shapes,
      self._per_layer(param_shardings),
    )
    shapes = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=param_shapes,
      opt_state=opt_shapes,
    )
    shardings = TrainState(
      step=self.partitioner.replicated,
      params=param_shardings,
      opt_state=opt_shardings,
    )
    return shapes, shardings

  def init_state(
    self, input_shapes: Mapping[str, tuple[int, ...]], params: Any | None = None
  ) -> TrainState:
    """A fresh, sharded train state; from `params` if given.

    Fresh parameters are initialised directly in their shards (jit with
    out_shardings), so no host ever holds a full copy of a large model.
    """
    _, shardings = self.state_shapes_and_shardings(input_shapes)

    def init(params):
      if params is None:
        params = nn.unbox(
          self.model.get_initial_variables(
            jax.random.PRNGKey(self.seed), input_shapes
          )['params']
        )
      return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=self.optimizer.init(self._per_layer(params)),
      )

    with self.partitioner.activation_context():
      if params is None:
        return jax.jit(lambda: init(None), out_shardings=shardings)()
      params = jax.device_put(params, shardings.params)
      return jax.jit(init, out_shardings=shardings)(params)

  # -- steps ---------------------------------------------------------------

  def _grads_and_metrics(self, params, batch, dropout_rng):
    normalizers = self.model.loss_normalizers(batch)
    grad_fn = jax.value_and_grad(self.model.loss_fn, has_aux=True)

    def one(params, microbatch, rng):
      (loss, metrics), grads = grad_fn(params, microbatch, rng, normalizers)
      return grads, loss, metrics

    k = self.num_microbatches
    if k == 1:
      return one(params, batch, dropout_rng)

    microbatches = _interleaved_microbatches(batch, k)
    zero = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(
        one, params, jax.tree.map(lambda x: x[0], microbatches), dropout_rng
      ),
    )

    def accumulate(total, i):
      microbatch = jax.tree.map(lambda x: x[i], microbatches)
      out = one(params, microbatch, jax.random.fold_in(dropout_rng, i))
      return jax.tree.map(jnp.add, total, out), None

    total, _ = jax.lax.scan(accumulate, zero, jnp.arange(k))
    return total

  def _train_step_fn(self, state: TrainState, batch: Mapping[str, Array]):
    # A fresh dropout key per step, reproducible on resume.
    dropout_rng = jax.random.fold_in(
      jax.random.PRNGKey(self.seed + 1), state.step
    )
    grads, loss, metrics = self._grads_and_metrics(
      state.params, batch, dropout_rng
    )
    updates, opt_state = self.optimizer.update(
      self._per_layer(grads), state.opt_state, self._per_layer(state.params)
    )
    params = optax.apply_updates(state.params, self._scanned(updates))
    grad_norm = optax.tree.norm(grads)
    # A non-finite step keeps the old parameters and optimizer state, so no
    # state (and no checkpoint) ever holds a NaN; checking the new state too
    # catches an update that overflows from finite gradients.
    finite = (
      jnp.isfinite(loss)
      & jnp.isfinite(grad_norm)
      & all_finite((params, opt_state))
    )
    metrics = dict(metrics)
    metrics['loss'] = metrics_lib.Sum(loss)
    metrics['grad_norm'] = metrics_lib.Sum(grad_norm)
    metrics['nonfinite_steps'] = metrics_lib.Sum(jnp.where(finite, 0, 1))
    # inject_hyperparams stores the rate it used for this update in the new
    # state (the old state holds the previous step's rate).
    learning_rate = current_learning_rate(opt_state)
    if learning_rate is not None:
      metrics['learning_rate'] = metrics_lib.Sum(learning_rate)
    # A conditional, not a select per array (optax.tree.where): XLA fused
    # `finite`, an AND over every array, into each array's select, which
    # doubled the main job's compile time (10 s against 6).
    params, opt_state = jax.lax.cond(
      finite,
      lambda: (params, opt_state),
      lambda: (state.params, state.opt_state),
    )
    return TrainState(
      step=state.step + 1, params=params, opt_state=opt_state
    ), metrics

  def compile(self, state_shardings: TrainState) -> None:
    self._train_step = jax.jit(
      self._train_step_fn,
      in_shardings=(state_shardings, self.partitioner.batch_sharding),
      out_shardings=(state_shardings, self.partitioner.replicated),
      donate_argnums=(0,),
      compiler_options=self.compiler_options,
    )

  def lower_train_step(
    self, state: TrainState, batch: Mapping[str, Array]
  ) -> jax.stages.Lowered:
    """The train step lowered for these inputs: XLA's cost and memory
    analyses of the program `train_step` runs (for benchmarks)."""
    self.compile(jax.tree.map(lambda x: x.sharding, state))
    with self.partitioner.activation_context():
      return self._train_step.lower(state, batch)

  def train_step(
    self, state: TrainState, batch: Mapping[str, Array]
  ) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer step on a global batch; metrics stay on device."""
    if self._train_step is None:
      self.compile(jax.tree.map(lambda x: x.sharding, state))
    with self.partitioner.activation_context():
      return self._train_step(state, batch)


def compute_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host values of a metrics tree (one device-to-host transfer).

  The means of a task that had no tokens are left out, not NaN (see
  `metrics.TaskAverage`).
  """
  metrics = metrics_lib.reported_metrics(jax.device_get(metrics))
  return {name: float(np.asarray(m.compute())) for name, m in metrics.items()}


def throughput(
  steps: int, seconds: float, examples: int, target_tokens: int
) -> dict[str, float]:
  """Steps, examples and target tokens per second over `seconds`."""
  seconds = max(seconds, 1e-9)
  return {
    'steps_per_second': steps / seconds,
    'examples_per_second': examples / seconds,
    'target_tokens_per_second': target_tokens / seconds,
  }
