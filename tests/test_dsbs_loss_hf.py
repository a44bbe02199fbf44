"""The two-task loss equals the reference formula computed with HuggingFace.

The reference (PyTorch) release of distilling step-by-step trains with
`alpha * loss(label batch) + (1 - alpha) * loss(rationale batch)`, each the
mean token cross-entropy `T5ForConditionalGeneration` returns for `labels`
with padding set to -100. Here a random T5.1.1 is saved by transformers,
imported with `dsbs_jax.checkpoints`, and our `DistillStepByStepModel` loss on
feature-converter batches (padded or packed, whole, in microbatches, or
sharded over a data-parallel mesh) is compared with that formula.
"""

import functools

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf
import torch
import transformers

from dsbs_jax import checkpoint_import
from dsbs_jax import losses
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import partitioning
from dsbs_jax import trainer as trainer_lib
from dsbs_jax.two_tasks import DistillStepByStepFeatureConverter

# T5.1.1: gated GELU, untied lm_head; more decoder than encoder layers.
HF_CONFIG = dict(
  vocab_size=64,
  d_model=16,
  num_heads=4,
  d_kv=4,
  d_ff=32,
  num_layers=1,
  num_decoder_layers=2,
  feed_forward_proj='gated-gelu',
  tie_word_embeddings=False,
  dropout_rate=0.0,
  pad_token_id=0,
  eos_token_id=1,
  decoder_start_token_id=0,
)  # transformers 5 leaves it unset
LENGTHS = {'inputs': 14, 'targets': 12}
LABEL_PREFIX, RATIONALE_PREFIX = 2, 3  # stand-ins for the task prefixes
NUM_INPUTS = 6
VOCABULARY = seqio.PassThroughVocabulary(HF_CONFIG['vocab_size'], eos_id=1)


@pytest.fixture(scope='module')
def hf_and_ours(tmp_path_factory):
  """(HF model in float64, our config, our params) with the same weights."""
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(
    transformers.T5Config(**HF_CONFIG)
  ).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'layer_norm' in name:  # distinct scales, not all ones
        param.uniform_(0.5, 1.5)
  # transformers 5 ties lm_head to `shared` regardless: untie by hand.
  model.lm_head.weight = torch.nn.Parameter(
    torch.randn_like(model.shared.weight)
  )
  folder = tmp_path_factory.mktemp('hf_t5')
  model.save_pretrained(folder)
  config = checkpoint_import.config_from_hf(folder)
  assert not config.logits_via_embedding
  params = checkpoint_import.load_params(folder, config)
  return model.double(), config, params


def _examples() -> list[dict[str, np.ndarray]]:
  """A label and a rationale example per input (ids, EOS = 1 appended).

  Labels are short and rationales long, and lengths vary, so the two tasks'
  token means weigh examples differently from a single mean.
  """
  rng = np.random.default_rng(0)
  examples = []
  for _ in range(NUM_INPUTS):
    text = list(rng.integers(4, HF_CONFIG['vocab_size'], rng.integers(3, 12)))
    for prefix, task, target_length in (
      (LABEL_PREFIX, 1, rng.integers(1, 4)),
      (RATIONALE_PREFIX, 2, rng.integers(4, 11)),
    ):
      targets = list(rng.integers(4, HF_CONFIG['vocab_size'], target_length))
      examples.append(
        {
          'inputs': np.array([prefix] + text + [1], np.int32),
          'targets': np.array(targets + [1], np.int32),
          'task': np.int32(task),
        }
      )
  return examples


def _model_batch(
  examples, pack: bool, rows_multiple: int = 4
) -> dict[str, np.ndarray]:
  """The feature converter's rows stacked, plus all-padding rows up to a
  multiple of `rows_multiple` (they must not count)."""
  signature = {
    'inputs': tf.TensorSpec([None], tf.int32),
    'targets': tf.TensorSpec([None], tf.int32),
    'task': tf.TensorSpec([], tf.int32),
  }
  dataset = tf.data.Dataset.from_generator(
    lambda: iter(examples), output_signature=signature
  )
  converter = DistillStepByStepFeatureConverter(pack=pack)
  rows = list(converter(dataset, LENGTHS).as_numpy_iterator())
  batch = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
  extra = -len(rows) % rows_multiple
  return {
    name: np.concatenate(
      [value, np.zeros((extra,) + value.shape[1:], value.dtype)]
    )
    for name, value in batch.items()
  }


def _hf_loss(hf_model, examples, task: int) -> float:
  """HF's loss on the padded batch of one task's examples."""
  chosen = [e for e in examples if e['task'] == task]
  n_in = max(len(e['inputs']) for e in chosen)
  n_out = max(len(e['targets']) for e in chosen)
  input_ids = torch.zeros((len(chosen), n_in), dtype=torch.long)
  labels = torch.full((len(chosen), n_out), -100, dtype=torch.long)
  for row, example in enumerate(chosen):
    input_ids[row, : len(example['inputs'])] = torch.from_numpy(
      example['inputs']
    )
    labels[row, : len(example['targets'])] = torch.from_numpy(
      example['targets']
    )
  with torch.no_grad():
    out = hf_model(
      input_ids=input_ids, attention_mask=(input_ids != 0).long(), labels=labels
    )
  return float(out.loss)


@pytest.fixture(scope='module')
def reference(hf_and_ours):
  """(examples, {task: HF loss of that task's batch})."""
  examples = _examples()
  hf_model = hf_and_ours[0]
  return examples, {task: _hf_loss(hf_model, examples, task) for task in (1, 2)}


@pytest.fixture(scope='module')
def model_batches(reference):
  """{pack: the examples' model batch}."""
  return {pack: _model_batch(reference[0], pack) for pack in (False, True)}


def _model(config, alpha) -> models.DistillStepByStepModel:
  return models.DistillStepByStepModel(
    network.Transformer(config),
    VOCABULARY,
    VOCABULARY,
    loss=losses.DistillStepByStepLoss(alpha),
  )


def _expected(losses_by_task, alpha):
  return alpha * losses_by_task[1] + (1 - alpha) * losses_by_task[2]


@functools.lru_cache
def _jitted_loss_fn(config):
  """`loss_fn` under jit with alpha traced (one compile for every alpha)."""

  def run(params, batch, alpha, normalizers):
    return _model(config, alpha).loss_fn(params, batch, None, normalizers)

  return jax.jit(run)


def _loss_and_metrics(config, params, batch, alpha, normalizers=None):
  return _jitted_loss_fn(config)(params, batch, alpha, normalizers)


def _check_task_metrics(metrics, losses_by_task):
  values = trainer_lib.compute_metrics(metrics)
  assert values['label_loss'] == pytest.approx(losses_by_task[1], rel=1e-5)
  assert values['rationale_loss'] == pytest.approx(losses_by_task[2], rel=1e-5)


@pytest.mark.parametrize('pack', [False, True])
def test_loss_equals_hf_reference(hf_and_ours, reference, model_batches, pack):
  _, config, params = hf_and_ours
  examples, losses_by_task = reference
  batch = model_batches[pack]
  rows = np.sum(batch['decoder_target_tokens'].any(axis=-1))
  if pack:  # packing did merge examples: fewer rows
    assert np.any(batch['decoder_segment_ids'] > 1)
    assert rows < len(examples)
  else:
    assert rows == len(examples)
  for alpha in (0.5, 0.3):
    loss, metrics = _loss_and_metrics(config, params, batch, alpha)
    assert float(loss) == pytest.approx(
      _expected(losses_by_task, alpha), rel=1e-5
    ), alpha
    _check_task_metrics(metrics, losses_by_task)
  # Not the mean over all tokens of both tasks, nor the plain task mean.
  assert abs(losses_by_task[1] - losses_by_task[2]) > 1e-2


@pytest.mark.parametrize('pack', [False, True])
def test_microbatched_loss_equals_hf_reference(
  hf_and_ours, reference, model_batches, pack
):
  """Two microbatches with the whole batch's normalizers add up to the
  reference, both for the Trainer's interleaved split (unpacked, one
  microbatch holds every label example, the other every rationale) and a
  contiguous one."""
  _, config, params = hf_and_ours
  _, losses_by_task = reference
  batch = model_batches[pack]
  n = len(batch['decoder_target_tokens'])
  alpha = 0.3
  normalizers = _model(config, alpha).loss_normalizers(batch)
  for split in (
    [slice(0, n, 2), slice(1, n, 2)],
    [slice(0, n // 2), slice(n // 2, n)],
  ):
    total, merged = 0.0, None
    for rows in split:
      microbatch = {name: value[rows] for name, value in batch.items()}
      loss, metrics = _loss_and_metrics(
        config, params, microbatch, alpha, normalizers
      )
      total += float(loss)
      merged = (
        metrics
        if merged is None
        else {
          name: metric.merge(metrics[name]) for name, metric in merged.items()
        }
      )
    assert total == pytest.approx(_expected(losses_by_task, alpha), rel=1e-5)
    _check_task_metrics(merged, losses_by_task)


@pytest.mark.parametrize('pack', [False, True])
def test_data_parallel_loss_equals_hf_reference(
  hf_and_ours, reference, model_batches, pack
):
  """On a 4-device data-parallel mesh: `loss_fn` under jit on the sharded
  batch; unpacked, also the Trainer's step with 2 microbatches (learning
  rate 0), in which one microbatch has no rationale tokens at all."""
  _, config, params = hf_and_ours
  examples, losses_by_task = reference
  alpha = 0.3
  partitioner = partitioning.Partitioner(
    mesh_shape=(4, 1), devices=jax.devices()[:4]
  )
  host_batch = model_batches[pack]
  batch = partitioner.shard_full_batch(host_batch)
  rows = len(host_batch['decoder_target_tokens'])
  for value in batch.values():
    assert value.sharding.spec[0] == partitioning.DATA
    assert len(value.sharding.device_set) == 4
    assert {s.data.shape[0] for s in value.addressable_shards} == {rows // 4}

  model = _model(config, alpha)
  replicated = jax.device_put(params, partitioner.replicated)
  with partitioner.activation_context():
    loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None))(
      replicated, batch
    )
  assert float(loss) == pytest.approx(
    _expected(losses_by_task, alpha), rel=1e-5
  )
  _check_task_metrics(metrics, losses_by_task)
  if pack:  # the microbatched Trainer step is compiled once, unpacked
    return

  trainer = trainer_lib.Trainer(
    model, partitioner, optax.sgd(0.0), num_microbatches=2
  )
  shapes = {name: value.shape for name, value in host_batch.items()}
  state = trainer.init_state(shapes, params)
  state, metrics = trainer.train_step(state, batch)
  values = trainer_lib.compute_metrics(metrics)
  assert values['loss'] == pytest.approx(
    _expected(losses_by_task, alpha), rel=1e-5
  )
  _check_task_metrics(metrics, losses_by_task)
  assert values['label_tokens'] == sum(
    len(e['targets']) for e in examples if e['task'] == 1
  )
  assert values['rationale_tokens'] == sum(
    len(e['targets']) for e in examples if e['task'] == 2
  )
  # Learning rate 0: the parameters did not move.
  leaves = zip(
    jax.tree.leaves(jax.device_get(state.params)),
    jax.tree.leaves(params),
  )
  assert all(np.array_equal(a, b) for a, b in leaves)


@pytest.mark.parametrize('pack', [False, True])
def test_label_only_batch_loss_is_the_hf_label_loss(
  hf_and_ours, reference, pack
):
  """A batch with no rationale examples (a validation batch): the loss is
  the reference's label loss, not alpha times it, for every alpha, and the
  reported metrics have the label task's means and no NaN."""
  _, config, params = hf_and_ours
  examples, losses_by_task = reference
  batch = _model_batch([e for e in examples if e['task'] == 1], pack)
  assert not np.any(batch['decoder_task_ids'] == 2)
  for alpha in (0.5, 0.3, 1.0):
    loss, metrics = _loss_and_metrics(config, params, batch, alpha)
    assert float(loss) == pytest.approx(losses_by_task[1], rel=1e-5), alpha
    values = trainer_lib.compute_metrics(metrics)
    assert not any(np.isnan(v) for v in values.values()), values
    assert values['label_loss'] == pytest.approx(losses_by_task[1], rel=1e-5)
    assert 0 <= values['label_accuracy'] <= 1
    # The rationale task had no tokens: its mean is left out, its count is 0.
    assert 'rationale_loss' not in values
    assert values['rationale_tokens'] == 0
  # Likewise a rationale-only batch has the rationale loss (alpha < 1).
  batch = _model_batch([e for e in examples if e['task'] == 2], pack)
  loss, metrics = _loss_and_metrics(config, params, batch, 0.3)
  assert float(loss) == pytest.approx(losses_by_task[2], rel=1e-5)
  values = trainer_lib.compute_metrics(metrics)
  assert values['rationale_loss'] == pytest.approx(losses_by_task[2], rel=1e-5)
  assert not {'label_loss', 'label_accuracy'} & set(values)
  assert not any(np.isnan(v) for v in values.values()), values
