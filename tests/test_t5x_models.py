"""dsbs_jax.t5x_models with the real t5x: our loss, t5x's gin files.

The whole file is skipped where t5x is not installed (it is not on PyPI);
tests/test_t5x_models_without_t5x.py checks the error without it.
"""

import os
import subprocess
import sys
from typing import Any

import pytest

t5x = pytest.importorskip('t5x')

# pylint: disable=g-import-not-at-top,g-bad-import-order
from conftest import T5X_TINY_DIR
import gin
import numpy as np
import seqio
from t5x import train as t5x_train
from t5x import trainer as t5x_trainer
from t5x.examples.t5 import network as t5x_network
import tensorflow as tf

from dsbs_jax import checkpoint_import
from dsbs_jax import gin_utils
from dsbs_jax import losses
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import t5x_models
from dsbs_jax import two_tasks

# pylint: enable=g-import-not-at-top,g-bad-import-order

SIZES = ('small', 'base', 'large', 'xl', 'xxl')


def _batch() -> dict[str, np.ndarray]:
  """t5x's reference batch: label examples in rows 0 and 2, rationale
  examples in rows 1 and 3."""
  expected = np.load(T5X_TINY_DIR / 'expected.npz')
  targets = expected['decoder_target_tokens']
  task = np.array([two_tasks.LABEL_TASK, two_tasks.RATIONALE_TASK] * 2)[:, None]
  return {
    'encoder_input_tokens': expected['encoder_input_tokens'],
    'decoder_input_tokens': expected['decoder_input_tokens'],
    'decoder_target_tokens': targets,
    'decoder_loss_weights': (targets > 0).astype(np.int32),
    'decoder_task_ids': np.where(targets > 0, task, 0).astype(np.int32),
  }


def _t5x_model(tiny_config, **settings) -> t5x_models.DistillStepByStepModel:
  """Our t5x model on t5x's network in the reference's configuration."""
  t5x_config = t5x_network.T5Config(
    vocab_size=tiny_config.vocab_size,
    emb_dim=tiny_config.emb_dim,
    num_heads=tiny_config.num_heads,
    head_dim=tiny_config.head_dim,
    mlp_dim=tiny_config.mlp_dim,
    mlp_activations=tiny_config.mlp_activations,
    num_encoder_layers=tiny_config.num_encoder_layers,
    num_decoder_layers=tiny_config.num_decoder_layers,
    dropout_rate=0.0,
    logits_via_embedding=False,
  )
  vocabulary = seqio.ByteVocabulary()
  return t5x_models.DistillStepByStepModel(
    t5x_network.Transformer(t5x_config),
    vocabulary,
    vocabulary,
    optimizer_def=None,
    **settings,
  )


def test_loss_and_metrics_equal_ours(tiny_config):
  params = checkpoint_import.load_params(T5X_TINY_DIR / 'legacy_checkpoint_400')
  vocabulary = seqio.ByteVocabulary()
  settings = dict(
    loss=losses.DistillStepByStepLoss(alpha=0.3),
    label_smoothing=0.1,
    z_loss=1e-4,
  )
  theirs = _t5x_model(tiny_config, **settings)
  ours = models.DistillStepByStepModel(
    network.Transformer(tiny_config), vocabulary, vocabulary, **settings
  )
  batch = _batch()

  loss, metrics = theirs.loss_fn(params, batch, dropout_rng=None)
  our_loss, our_metrics = ours.loss_fn(params, batch, dropout_rng=None)

  np.testing.assert_allclose(loss, our_loss, rtol=1e-5)
  assert float(loss) > 0
  for name in ('label_loss', 'rationale_loss', 'label_accuracy'):
    np.testing.assert_allclose(
      metrics[name].compute(),
      our_metrics[name].compute(),
      rtol=1e-5,
      err_msg=name,
    )
  assert float(metrics['label_tokens'].compute()) == 6  # 2 + eos, twice
  assert float(metrics['rationale_tokens'].compute()) == 25
  # t5x's own metrics are there too, on the same loss.
  np.testing.assert_allclose(metrics['loss'].compute(), loss, rtol=1e-6)
  assert 'accuracy' in metrics
  assert (
    theirs.FEATURE_CONVERTER_CLS is two_tasks.DistillStepByStepFeatureConverter
  )


@pytest.fixture
def t5x_train_bindings(monkeypatch):
  """Parses gin files as `python -m t5x.train --gin_search_paths=gin` does;
  returns the bindings of `t5x.train.train` they make."""
  # t5x's finetune.gin configures `__main__.train`, t5x.train's when run.
  monkeypatch.setattr(
    sys.modules['__main__'], 'train', t5x_train.train, raising=False
  )

  def parse(gin_file: str, overrides: list[str]) -> dict[str, Any]:
    gin.clear_config()
    # Where t5x.train looks: this repository's gin/ is given by the user,
    # t5x's own files are found from the folder that holds the t5x package.
    for path in (
      str(gin_utils.project_gin_dir()),
      os.path.dirname(os.path.dirname(t5x.__file__)),
    ):
      gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings([gin_file], overrides)
    return gin.get_bindings(t5x_train.train)

  yield parse
  gin.clear_config()


@pytest.mark.parametrize('size', SIZES)
def test_gin_files_configure_t5x_train(size, t5x_train_bindings):
  """What `python -m t5x.train --gin_file=t5x/dsbs_<size>.gin` would run."""
  bindings = t5x_train_bindings(
    f't5x/dsbs_{size}.gin',
    [
      "MODEL_DIR = '/tmp/dsbs_t5x'",
      "DATASET = 'svamp'",
      'DATA_FRACTION = 0.5',
    ],
  )
  model = bindings['model']
  assert isinstance(model, t5x_models.DistillStepByStepModel)
  assert model.loss.alpha == 0.5
  assert model.module.config.dropout_rate == 0.1
  train_cfg = bindings['train_dataset_cfg']
  assert train_cfg.mixture_or_task_name.startswith(
    'dsbs_svamp_llm_frac0.5_seed0'
  )
  assert train_cfg.mixture_or_task_name in seqio.TaskRegistry.names()
  assert train_cfg.task_feature_lengths == {'inputs': 1024, 'targets': 256}
  assert (train_cfg.batch_size, train_cfg.pack, train_cfg.use_cached) == (
    64,
    False,
    False,
  )
  assert bindings['total_steps'] == 1_010_000
  assert bindings['checkpoint_cfg'].restore.path == (
    f'gs://t5-data/pretrained_models/t5x/t5_1_1_{size}/checkpoint_1000000'
  )
  # The task tokenizes with the model's vocabulary (t5x checks this).
  task = seqio.get_mixture_or_task(train_cfg.mixture_or_task_name)
  assert task.output_features['targets'].vocabulary == (model.output_vocabulary)
  # t5x's trainer, reporting only the tasks present.
  assert bindings['trainer_cls'].__name__ == 'trainer_reporting_present_tasks'


def test_tiny_gin_file_needs_no_downloads(t5x_train_bindings):
  """t5x/dsbs_tiny.gin: byte vocabulary, no checkpoint, synthetic data."""
  bindings = t5x_train_bindings(
    't5x/dsbs_tiny.gin', ["MODEL_DIR = '/tmp/dsbs_t5x_tiny'"]
  )
  model = bindings['model']
  assert isinstance(model, t5x_models.DistillStepByStepModel)
  assert isinstance(model.output_vocabulary, seqio.ByteVocabulary)
  assert model.module.config.vocab_size >= model.output_vocabulary.vocab_size
  assert model.module.config.dtype == 'float32'
  assert bindings['checkpoint_cfg'].restore.path is None
  train_cfg = bindings['train_dataset_cfg']
  assert train_cfg.mixture_or_task_name.startswith('dsbs_synthetic_llm')
  assert train_cfg.task_feature_lengths == {'inputs': 64, 'targets': 48}
  task = seqio.get_mixture_or_task(train_cfg.mixture_or_task_name)
  assert task.output_features['targets'].vocabulary == model.output_vocabulary
  assert bindings['total_steps'] <= 1000


def _label_only_batch() -> dict[str, np.ndarray]:
  """The label examples (rows 0 and 2) of t5x's reference batch."""
  return {name: value[::2] for name, value in _batch().items()}


class _MetricsManagersOnly:
  """What `trainer_reporting_present_tasks` touches of a t5x trainer."""

  def __init__(self, summary_dir: str):
    self.train_metrics_manager = t5x_trainer.MetricsManager(
      'train', summary_dir=summary_dir
    )
    self.eval_metrics_managers = {
      'validation': t5x_trainer.MetricsManager(
        'training_eval/validation', summary_dir=summary_dir
      )
    }


def test_label_only_batch_summary_has_the_label_loss_and_no_nan(
  tiny_config, tmp_path
):
  """A validation batch holds label examples only: t5x's summary of it has
  loss = label loss (not alpha times it), no rationale_loss and no NaN."""
  params = checkpoint_import.load_params(T5X_TINY_DIR / 'legacy_checkpoint_400')
  model = _t5x_model(
    tiny_config, loss=losses.DistillStepByStepLoss(alpha=0.3), z_loss=1e-4
  )
  loss, metrics = model.eval_fn(params, _label_only_batch())
  np.testing.assert_allclose(loss, metrics['label_loss'].compute(), rtol=1e-6)
  assert float(loss) > 0

  trainer = t5x_models.trainer_reporting_present_tasks(
    _MetricsManagersOnly, summary_dir=str(tmp_path)
  )
  manager = trainer.eval_metrics_managers['validation']
  try:
    manager.start_duration_timer()
    summary = manager.write_metrics_summary(metrics, 400, 1).result()
  finally:
    manager.close()
    trainer.train_metrics_manager.close()
  values = {name: float(value.value) for name, value in summary.items()}
  assert not any(np.isnan(v) for v in values.values()), values
  np.testing.assert_allclose(values['loss'], values['label_loss'], rtol=1e-6)
  assert 0 <= values['label_accuracy'] <= 1
  assert 'rationale_loss' not in values
  assert values['rationale_tokens'] == 0
  assert values['label_tokens'] == 6


@pytest.mark.slow
def test_t5x_train_runs_the_tiny_gin_file(tmp_path):
  """`python -m t5x.train` with t5x/dsbs_tiny.gin, a few steps: it trains,
  and its validation summary has the label loss and no NaN."""
  model_dir = tmp_path / 'model'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      't5x.train',
      f'--gin_search_paths={gin_utils.project_gin_dir()}',
      '--gin_file=t5x/dsbs_tiny.gin',
      f"--gin.MODEL_DIR='{model_dir}'",
      '--gin.TRAIN_STEPS=4',
      '--gin.EVAL_PERIOD=4',
      '--gin.EVAL_STEPS=1',
      '--gin.utils.SaveCheckpointConfig.period=4',
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu'),
    timeout=900,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (model_dir / 'checkpoint_4').is_dir()
  (eval_dir,) = (model_dir / 'training_eval').iterdir()
  values = _last_scalars(eval_dir)
  assert not any(np.isnan(v) for v in values.values()), values
  assert values['label_loss'] > 0
  assert 'rationale_loss' not in values
  assert values['rationale_tokens'] == 0
  train = _last_scalars(model_dir / 'train')
  assert {'loss', 'label_loss', 'rationale_loss'} <= set(train)
  assert not any(np.isnan(v) for v in train.values()), train


def _last_scalars(log_dir) -> dict[str, float]:
  """The last value of every scalar in a TensorBoard log directory."""
  values = {}
  for path in sorted(log_dir.glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'scalars':
          values[value.tag] = float(tf.make_ndarray(value.tensor))
  return values
