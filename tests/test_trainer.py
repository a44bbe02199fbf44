"""Trainer: gradient accumulation, sharding, schedules and step metrics.

References are written here from the definitions: the loss from the network's
logits, gradients with `jax.grad` of that loss, updates from the optimizer's
textbook formula, schedules from their formulas. Compiling a train step takes
seconds on a CPU, so the training runs are shared between tests.
"""

import math

from flax import linen as nn
import jax
import jax.numpy as jnp
import numerics
import numpy as np
import optax
import pytest
import seqio

from dsbs_jax import data
from dsbs_jax import gin_utils
from dsbs_jax import losses
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import partitioning
from dsbs_jax import train
from dsbs_jax import trainer as trainer_lib

# Sharded dims divide by 4: vocab 64, mlp 32, heads 4, joined_kv 4 * 4 = 16.
CONFIG = network.T5Config(
  vocab_size=64,
  emb_dim=16,
  num_heads=4,
  head_dim=4,
  mlp_dim=32,
  mlp_activations=('gelu', 'linear'),
  num_encoder_layers=1,
  num_decoder_layers=1,
  dropout_rate=0.0,
)
VOCABULARY = seqio.PassThroughVocabulary(CONFIG.vocab_size, eos_id=1)
ENCODER_LENGTH, DECODER_LENGTH = 8, 6
# (input length, target length, task) of each row. The microbatches of k = 2
# (rows i, i + 2, ...) and of k = 4 hold very different numbers of real target
# tokens of each task, so a per-microbatch normalisation would differ.
ROWS = [
  (8, 1, 1),
  (3, 6, 2),
  (5, 2, 1),
  (7, 5, 2),
  (2, 3, 1),
  (6, 6, 2),
  (4, 1, 2),
  (8, 4, 1),
]
ALPHA = 0.3
TRAIN_SEEDS = (1, 2)  # one batch per step
MOMENTUM = 0.9
# The DSbS runs use SGD under `inject_hyperparams` with this linear decay
# (rate 0.1 * (1 - step / 4): 0.1, then 0.075); the plain encoder-decoder
# runs use `optax.sgd` with a constant 0.1 (no learning rate in its state).
DECAY_BASE, DECAY_STEPS = 0.1, 4


def _sgd_rate(kind: str, step: int) -> float:
  if kind == 'dsbs':
    return DECAY_BASE * (1 - step / DECAY_STEPS)
  return DECAY_BASE


def _sgd(kind: str) -> optax.GradientTransformation:
  if kind == 'dsbs':
    schedule = trainer_lib.learning_rate_schedule(
      DECAY_BASE, 'linear_decay', total_steps=DECAY_STEPS
    )
    return optax.inject_hyperparams(optax.sgd)(
      learning_rate=schedule, momentum=MOMENTUM
    )
  return optax.sgd(DECAY_BASE, momentum=MOMENTUM)


def _batch(seed: int) -> dict[str, np.ndarray]:
  """Padded batch with decoder inputs = targets shifted right (start 0)."""
  rng = np.random.default_rng(seed)
  n = len(ROWS)
  encoder = np.zeros((n, ENCODER_LENGTH), np.int32)
  targets = np.zeros((n, DECODER_LENGTH), np.int32)
  task_ids = np.zeros((n, DECODER_LENGTH), np.int32)
  for row, (n_in, n_out, task) in enumerate(ROWS):
    encoder[row, :n_in] = rng.integers(2, CONFIG.vocab_size, n_in)
    targets[row, :n_out] = rng.integers(2, CONFIG.vocab_size, n_out)
    task_ids[row, :n_out] = task
  decoder_inputs = np.zeros_like(targets)
  decoder_inputs[:, 1:] = targets[:, :-1]
  return {
    'encoder_input_tokens': encoder,
    'decoder_input_tokens': decoder_inputs,
    'decoder_target_tokens': targets,
    'decoder_loss_weights': (targets > 0).astype(np.int32),
    'decoder_task_ids': task_ids,
  }


def _only_rows(batch, rows):
  """The batch with every other row's targets turned into padding."""
  keep = np.isin(np.arange(len(ROWS)), rows)[:, None]
  out = dict(batch)
  for name in (
    'decoder_target_tokens',
    'decoder_loss_weights',
    'decoder_task_ids',
  ):
    out[name] = np.where(keep, batch[name], 0)
  return out


def _model(kind: str) -> models.EncoderDecoderModel:
  module = network.Transformer(CONFIG)
  if kind == 'dsbs':
    return models.DistillStepByStepModel(
      module, VOCABULARY, VOCABULARY, loss=losses.DistillStepByStepLoss(ALPHA)
    )
  return models.EncoderDecoderModel(
    module,
    VOCABULARY,
    VOCABULARY,
    loss_normalizing_factor=losses.NUM_REAL_TARGET_TOKENS,
  )


def _shapes(batch):
  return {name: value.shape for name, value in batch.items()}


def _single_device() -> partitioning.Partitioner:
  return partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope='module')
def initial_params():
  """Random host parameters of the model's tree (numpy: nothing to compile)."""
  boxed = jax.eval_shape(
    lambda: _model('encdec').get_initial_variables(
      jax.random.PRNGKey(0), _shapes(_batch(0))
    )
  )['params']
  rng = np.random.default_rng(0)

  def init(leaf):
    if leaf.ndim == 1:  # norm scales
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    std = 1 / math.sqrt(leaf.shape[0])
    return rng.normal(0, std, leaf.shape).astype(np.float32)

  return jax.tree.map(init, nn.unbox(boxed))


# -- independent references ---------------------------------------------------


def _task_mean(values, batch, task):
  """Mean of `values` over the task's real target tokens (numpy or jax)."""
  mask = (batch['decoder_target_tokens'] > 0) & (
    batch['decoder_task_ids'] == task
  )
  return (values * mask).sum() / mask.sum()


def _reference_loss(kind, params, batch):
  """Mean NLL over real target tokens; for DSbS the alpha-weighted task
  means. Also returns the per-token NLL and the logits."""
  logits = network.Transformer(CONFIG).apply(
    {'params': params},
    batch['encoder_input_tokens'],
    batch['decoder_input_tokens'],
    batch['decoder_target_tokens'],
    enable_dropout=False,
  )
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = batch['decoder_target_tokens']
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if kind == 'dsbs':
    loss = ALPHA * _task_mean(nll, batch, 1) + (1 - ALPHA) * _task_mean(
      nll, batch, 2
    )
  else:
    real = targets > 0
    loss = jnp.sum(nll * real) / jnp.sum(real)
  return loss, (nll, logits)


_reference = jax.jit(
  jax.value_and_grad(_reference_loss, argnums=1, has_aux=True), static_argnums=0
)


def _reference_grads(kind, params, batch):
  """Host (numpy) gradients of the reference loss."""
  return jax.device_get(_reference(kind, params, batch)[1])


def _train(model, partitioner, optimizer, num_microbatches, params, batches):
  """Runs `train_step` on each batch.

  Returns the final state and, per step, host copies of the updated
  parameters and the metrics.
  """
  trainer = trainer_lib.Trainer(
    model, partitioner, optimizer, num_microbatches=num_microbatches
  )
  state = trainer.init_state(_shapes(batches[0]), params)
  params_history, metrics_history = [], []
  for batch in batches:
    state, metrics = trainer.train_step(
      state, partitioner.shard_full_batch(batch)
    )
    params_history.append(jax.device_get(state.params))
    metrics_history.append(trainer_lib.compute_metrics(metrics))
  return state, params_history, metrics_history


@pytest.fixture(scope='module')
def sgd_run(initial_params):
  """(kind, k) -> (params after each step, metrics of each step) of SGD with
  momentum on one device, on the batches of TRAIN_SEEDS; computed once."""
  cache = {}

  def run(kind, num_microbatches):
    key = (kind, num_microbatches)
    if key not in cache:
      _, params, metrics = _train(
        _model(kind),
        _single_device(),
        _sgd(kind),
        num_microbatches,
        initial_params,
        [_batch(seed) for seed in TRAIN_SEEDS],
      )
      cache[key] = params, metrics
    return cache[key]

  return run


# -- gradient accumulation ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['encdec', 'dsbs'])
def test_gradient_accumulation_equals_full_batch_sgd(
  kind, initial_params, sgd_run
):
  batches = [_batch(seed) for seed in TRAIN_SEEDS]

  # The reference: heavy-ball SGD on full-batch gradients of the loss.
  lr0, lr1 = _sgd_rate(kind, 0), _sgd_rate(kind, 1)
  g1 = _reference_grads(kind, initial_params, batches[0])
  p1 = jax.tree.map(lambda p, g: p - lr0 * g, initial_params, g1)
  g2 = _reference_grads(kind, p1, batches[1])
  p2 = jax.tree.map(lambda p, a, b: p - lr1 * (b + MOMENTUM * a), p1, g1, g2)

  # The test can tell: normalising each microbatch of k = 2 by its own token
  # counts gives another gradient.
  per_half = jax.tree.map(
    lambda a, b: (a + b) / 2,
    *[
      _reference_grads(
        kind, initial_params, _only_rows(batches[0], range(i, len(ROWS), 2))
      )
      for i in (0, 1)
    ],
  )
  assert numerics.tree_relative_error(per_half, g1) > 1000 * numerics.TRAINED

  full = sgd_run(kind, 1)[0]
  numerics.assert_trees_close(full[0], p1, numerics.TRAINED, 'step 1')
  numerics.assert_trees_close(full[1], p2, numerics.TRAINED, 'step 2')
  for k in (2, 4):
    accumulated = sgd_run(kind, k)[0]
    for step in (0, 1):
      numerics.assert_trees_close(
        accumulated[step], full[step], numerics.TRAINED, f'step {step + 1}'
      )


@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch_adafactor(initial_params):
  """One Adafactor step with 4 microbatches is Adafactor's update for the
  full-batch gradient (factored second moments on the matrices)."""
  batch = _batch(3)
  optimizer = trainer_lib.adafactor(
    learning_rate=0.05, min_dim_size_to_factor=4
  )
  grads = _reference_grads('dsbs', initial_params, batch)
  updates, _ = jax.device_get(
    jax.jit(optimizer.update)(
      grads, optimizer.init(initial_params), initial_params
    )
  )
  expected = jax.tree.map(np.add, initial_params, updates)

  state, (accumulated,), _ = _train(
    _model('dsbs'), _single_device(), optimizer, 4, initial_params, [batch]
  )
  # It moved, far more than the tolerance.
  assert (
    numerics.tree_relative_error(expected, initial_params)
    > 1000 * numerics.TRAINED
  )
  numerics.assert_trees_close(accumulated, expected, numerics.TRAINED, 'step')
  # Factored: the second moment of a [16, 32] kernel is a row and a column.
  factored = jax.tree.leaves(state.opt_state.inner_state)
  assert any(leaf.shape == (16,) for leaf in factored)
  assert any(leaf.shape == (32,) for leaf in factored)


# -- sharding -----------------------------------------------------------------


def _spec(array) -> tuple:
  spec = tuple(array.sharding.spec)
  return spec + (None,) * (array.ndim - len(spec))


def _check_model_sharding(params, model_size):
  """Vocabulary, MLP and head dims are split over `model`; others are not."""
  expectations = [
    (('encoder', 'layers_0', 'mlp', 'wi_0', 'kernel'), 1),  # (embed, mlp)
    (('decoder', 'layers_0', 'mlp', 'wo', 'kernel'), 0),  # (mlp, embed)
    (('token_embedder', 'embedding'), 0),  # (vocab, embed)
    (('decoder', 'logits_dense', 'kernel'), 1),  # (embed, vocab)
    (('encoder', 'layers_0', 'attention', 'query', 'kernel'), 1),
    (('decoder', 'layers_0', 'self_attention', 'value', 'kernel'), 1),
    (
      ('decoder', 'layers_0', 'encoder_decoder_attention', 'out', 'kernel'),
      0,
    ),  # (joined_kv, embed)
    (('encoder', 'relpos_bias', 'rel_embedding'), 0),  # (heads, buckets)
  ]
  for path, dim in expectations:
    array = params
    for name in path:
      array = array[name]
    spec = _spec(array)
    assert spec[dim] == partitioning.MODEL, (path, spec)
    assert all(axis is None for i, axis in enumerate(spec) if i != dim), path
    shard_shape = list(array.shape)
    shard_shape[dim] //= model_size
    assert len(array.addressable_shards) == 8
    for shard in array.addressable_shards:
      assert shard.data.shape == tuple(shard_shape), path
  norm = params['encoder']['encoder_norm']['scale']
  assert _spec(norm) == (None,)
  assert all(s.data.shape == norm.shape for s in norm.addressable_shards)


@pytest.mark.slow
@pytest.mark.parametrize(
  'mesh_shape,num_microbatches', [((4, 2), 1), ((2, 4), 2)]
)
def test_sharded_training_equals_single_device(
  mesh_shape, num_microbatches, initial_params, sgd_run
):
  single_params, single_metrics = sgd_run('dsbs', 1)
  batches = [_batch(seed) for seed in TRAIN_SEEDS]

  partitioner = partitioning.Partitioner(mesh_shape=mesh_shape)
  assert dict(partitioner.mesh.shape) == {
    'data': mesh_shape[0],
    'model': mesh_shape[1],
  }
  sharded_batch = partitioner.shard_full_batch(batches[0])
  for value in sharded_batch.values():
    assert _spec(value)[0] == partitioning.DATA
    rows = {shard.data.shape[0] for shard in value.addressable_shards}
    assert rows == {len(ROWS) // mesh_shape[0]}

  trainer = trainer_lib.Trainer(
    _model('dsbs'), partitioner, _sgd('dsbs'), num_microbatches=num_microbatches
  )
  state = trainer.init_state(_shapes(batches[0]), initial_params)
  _check_model_sharding(state.params, mesh_shape[1])
  # The momentum follows its parameter's sharding.
  _check_model_sharding(state.opt_state.inner_state[0].trace, mesh_shape[1])
  for step, batch in enumerate(batches):
    state, metrics = trainer.train_step(
      state, partitioner.shard_full_batch(batch)
    )
    metrics = trainer_lib.compute_metrics(metrics)
    numerics.assert_close(
      metrics['loss'], single_metrics[step]['loss'], numerics.TRAINED, 'loss'
    )
    numerics.assert_trees_close(
      jax.device_get(state.params),
      single_params[step],
      numerics.TRAINED,
      f'step {step + 1}',
    )
  _check_model_sharding(state.params, mesh_shape[1])


@pytest.mark.slow
@pytest.mark.parametrize('mesh_shape', [(4, 2), (8, 1)])
def test_two_dimensional_parameter_sharding_equals_single_device(
  mesh_shape, initial_params
):
  """t5x's parameter_partitioning_dims=2: `embed` is split over `data` too,
  for parameters and their optimizer state, and training is unchanged."""
  batches = [_batch(seed) for seed in (1, 2, 3)]
  _, single, _ = _train(
    _model('dsbs'), _single_device(), _sgd('dsbs'), 1, initial_params, batches
  )
  partitioner = partitioning.Partitioner(
    mesh_shape=mesh_shape,
    logical_axis_rules=partitioning.standard_logical_axis_rules(2),
  )
  state, sharded, _ = _train(
    _model('dsbs'), partitioner, _sgd('dsbs'), 1, initial_params, batches
  )
  data, model = mesh_shape
  layer = state.params['encoder']['layers_0']
  momentum = state.opt_state.inner_state[0].trace['encoder']['layers_0']
  for kernel, embed_dim in (
    (layer['mlp']['wi_0']['kernel'], 0),  # (embed, mlp)
    (layer['mlp']['wo']['kernel'], 1),  # (mlp, embed)
    (momentum['attention']['query']['kernel'], 0),  # (embed, joined_kv)
  ):
    spec = _spec(kernel)
    assert spec[embed_dim] == partitioning.DATA
    assert spec[1 - embed_dim] == partitioning.MODEL
    shard_shape = list(kernel.shape)
    shard_shape[embed_dim] //= data
    shard_shape[1 - embed_dim] //= model
    assert {s.data.shape for s in kernel.addressable_shards} == {
      tuple(shard_shape)
    }
  token_embedding = state.params['token_embedder']['embedding']
  assert _spec(token_embedding) == (partitioning.MODEL, partitioning.DATA)
  for step in range(len(batches)):
    numerics.assert_trees_close(
      sharded[step], single[step], numerics.TRAINED, f'step {step + 1}'
    )


@pytest.mark.slow
def test_scanned_layers_train_as_t5x_layers():
  """With `scan_layers`, three Adafactor steps (factored moments, update
  clipping and parameter scale: all per parameter array) on data 4 x model 2
  with 2-D parameter sharding give the parameters of t5x's per-layer modules
  on one device: the optimizer sees each layer on its own, its state in the
  per-layer tree. Stacked kernels keep `layers` whole and split `embed` over
  `data`."""
  config = CONFIG.replace(num_encoder_layers=2, num_decoder_layers=3)
  scanned = config.replace(scan_layers=True)
  batches = [_batch(seed) for seed in (1, 2, 3)]

  def model(config):
    return models.DistillStepByStepModel(
      network.Transformer(config),
      VOCABULARY,
      VOCABULARY,
      loss=losses.DistillStepByStepLoss(ALPHA),
    )

  params = jax.device_get(
    nn.unbox(
      model(config).get_initial_variables(
        jax.random.PRNGKey(1), _shapes(batches[0])
      )['params']
    )
  )
  optimizer = trainer_lib.adafactor(
    learning_rate=0.05, min_dim_size_to_factor=4
  )
  _, plain, _ = _train(
    model(config), _single_device(), optimizer, 1, params, batches
  )
  partitioner = partitioning.Partitioner(
    mesh_shape=(4, 2),
    logical_axis_rules=partitioning.standard_logical_axis_rules(2),
  )
  state, stacked, _ = _train(
    model(scanned),
    partitioner,
    optimizer,
    1,
    network.stack_layers(params, scanned),
    batches,
  )
  wi = state.params['decoder']['layers']['mlp']['wi_0']['kernel']
  assert wi.shape == (3, config.emb_dim, config.mlp_dim)
  assert _spec(wi) == (None, partitioning.DATA, partitioning.MODEL)
  moments = state.opt_state.inner_state[0]
  assert 'layers_2' in moments.v_row['decoder']
  for step in range(len(batches)):
    # It moved, far more than the tolerance.
    assert (
      numerics.tree_relative_error(plain[step], params)
      > 1000 * numerics.TRAINED
    )
    per_layer = network.unstack_layers(stacked[step], scanned)
    numerics.assert_trees_close(
      per_layer, plain[step], numerics.TRAINED, f'step {step + 1}'
    )


# -- learning-rate schedules --------------------------------------------------

BASE, WARMUP, TOTAL = 0.01, 10, 50


def _expected_rate(schedule: str, step: int) -> float:
  if schedule == 'rsqrt':
    return BASE / math.sqrt(max(step, WARMUP))
  if step < WARMUP:
    return BASE * step / WARMUP
  if schedule == 'constant':
    return BASE
  progress = min(step - WARMUP, TOTAL - WARMUP) / (TOTAL - WARMUP)
  if schedule == 'linear_decay':
    return BASE * (1 - progress)
  return BASE * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
  'schedule', ['constant', 'rsqrt', 'linear_decay', 'cosine_decay']
)
def test_learning_rate_schedule_shapes(schedule):
  rate = trainer_lib.learning_rate_schedule(
    base_learning_rate=BASE,
    schedule=schedule,
    warmup_steps=WARMUP,
    total_steps=TOTAL,
  )
  for step in (0, 1, 5, 9, 10, 11, 20, 30, 49, 50, 60):
    assert float(rate(step)) == pytest.approx(
      _expected_rate(schedule, step), rel=1e-6, abs=1e-9
    ), step


def test_rsqrt_without_warmup_and_decays_need_total_steps():
  rate = trainer_lib.learning_rate_schedule(1.0, 'rsqrt')
  assert float(rate(100)) == pytest.approx(0.1)
  assert float(rate(0)) == pytest.approx(1.0)
  constant = trainer_lib.learning_rate_schedule(0.3, 'constant')
  assert float(constant(0)) == pytest.approx(0.3)
  for schedule in ('linear_decay', 'cosine_decay'):
    with pytest.raises(ValueError, match='total_steps'):
      trainer_lib.learning_rate_schedule(1.0, schedule, warmup_steps=5)
  with pytest.raises(ValueError, match='Unknown schedule'):
    trainer_lib.learning_rate_schedule(1.0, 'exponential')


def test_optimizers_record_their_learning_rate():
  schedule = lambda step: 0.1 * (step + 1)
  params = {'w': jnp.ones((3,))}
  grads = {'w': jnp.full((3,), 0.5)}
  for optimizer in (
    trainer_lib.adamw(schedule),
    trainer_lib.adafactor(schedule),
  ):
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    for step in range(3):
      _, state = update(grads, state, params)
      assert float(trainer_lib.current_learning_rate(state)) == (
        pytest.approx(0.1 * (step + 1))
      )
  assert trainer_lib.current_learning_rate(optax.sgd(0.1).init(params)) is None


# -- metrics ------------------------------------------------------------------


@pytest.mark.parametrize(
  'kind,num_microbatches',
  [
    ('dsbs', 1),
    # The microbatched runs are shared with the (slow) accumulation tests.
    pytest.param('dsbs', 2, marks=pytest.mark.slow),
    pytest.param('dsbs', 4, marks=pytest.mark.slow),
    pytest.param('encdec', 2, marks=pytest.mark.slow),
  ],
)
def test_train_step_metrics(kind, num_microbatches, initial_params, sgd_run):
  params_after, metrics_of = sgd_run(kind, num_microbatches)
  params_before = [initial_params] + params_after[:-1]
  for step, seed in enumerate(TRAIN_SEEDS):
    batch = _batch(seed)
    metrics = metrics_of[step]
    (loss, (nll, logits)), grads = jax.device_get(
      _reference(kind, params_before[step], batch)
    )
    assert metrics['loss'] == pytest.approx(float(loss), rel=1e-5)
    grad_norm = math.sqrt(
      sum(
        np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(grads)
      )
    )
    assert metrics['grad_norm'] == pytest.approx(grad_norm, rel=1e-5)
    correct = np.argmax(logits, -1) == batch['decoder_target_tokens']
    real = batch['decoder_target_tokens'] > 0
    assert metrics['accuracy'] == pytest.approx(correct[real].mean(), rel=1e-6)
    assert metrics['target_tokens'] == real.sum()
    if kind == 'encdec':  # plain optax.sgd records no learning rate
      assert 'learning_rate' not in metrics
      continue
    assert metrics['learning_rate'] == pytest.approx(
      _sgd_rate(kind, step), rel=1e-6
    ), step
    assert metrics['label_loss'] == pytest.approx(
      float(_task_mean(nll, batch, 1)), rel=1e-5
    )
    assert metrics['rationale_loss'] == pytest.approx(
      float(_task_mean(nll, batch, 2)), rel=1e-5
    )
    label = real & (batch['decoder_task_ids'] == 1)
    assert metrics['label_accuracy'] == pytest.approx(
      correct[label].mean(), rel=1e-6
    )
    assert metrics['label_tokens'] == sum(n for _, n, t in ROWS if t == 1)
    assert metrics['rationale_tokens'] == sum(n for _, n, t in ROWS if t == 2)


def test_rows_the_data_shards_cannot_split_stop_the_run_before_any_work(
  tmp_path,
):
  """In this process the 8 simulated devices form the data axis; the check
  comes before the model, the state or the pipeline is touched."""
  dataset = data.DatasetConfig('never_read', {'inputs': 8}, batch_size=12)
  with pytest.raises(gin_utils.GinConfigError) as error:
    train.train(
      model=None,
      train_dataset=dataset,
      model_dir=str(tmp_path),
      train_steps=1,
      partitioner=partitioning.Partitioner(),
    )
  message = str(error.value)
  assert 'BATCH_SIZE=12' in message and '8 data shards' in message
  assert '--gin.BATCH_SIZE=8 or --gin.BATCH_SIZE=16' in message
