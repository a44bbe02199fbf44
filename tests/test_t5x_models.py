"""dsbs_jax.t5x_models with the real t5x: our loss, t5x's gin files.

The whole file is skipped where t5x is not installed (it is not on PyPI);
tests/test_t5x_models_without_t5x.py checks the error without it.
"""

import os
import sys

import pytest

t5x = pytest.importorskip('t5x')

# pylint: disable=g-import-not-at-top,g-bad-import-order
from conftest import T5X_TINY_DIR
import numpy as np
import seqio
from t5x import train as t5x_train
from t5x.examples.t5 import network as t5x_network

from dsbs_jax import checkpoints
from dsbs_jax import gin_utils
from dsbs_jax import losses
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import t5x_models
import gin
from tasks import feature_converters

# pylint: enable=g-import-not-at-top,g-bad-import-order

SIZES = ('small', 'base', 'large', 'xl', 'xxl')


def _batch() -> dict[str, np.ndarray]:
  """t5x's reference batch: label examples in rows 0 and 2, rationale
  examples in rows 1 and 3."""
  expected = np.load(T5X_TINY_DIR / 'expected.npz')
  targets = expected['decoder_target_tokens']
  task = np.array([losses.LABEL_TASK, losses.RATIONALE_TASK] * 2)[:, None]
  return {
    'encoder_input_tokens': expected['encoder_input_tokens'],
    'decoder_input_tokens': expected['decoder_input_tokens'],
    'decoder_target_tokens': targets,
    'decoder_loss_weights': (targets > 0).astype(np.int32),
    'decoder_task_ids': np.where(targets > 0, task, 0).astype(np.int32),
  }


def test_loss_and_metrics_equal_ours(tiny_config):
  params = checkpoints.load_params(T5X_TINY_DIR / 'legacy_checkpoint_400')
  vocabulary = seqio.ByteVocabulary()
  settings = dict(alpha=0.3, label_smoothing=0.1, z_loss=1e-4)
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
  theirs = t5x_models.DistillStepByStepModel(
    t5x_network.Transformer(t5x_config),
    vocabulary,
    vocabulary,
    optimizer_def=None,
    **settings,
  )
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
    theirs.FEATURE_CONVERTER_CLS
    is feature_converters.DistillStepByStepFeatureConverter
  )


@pytest.mark.parametrize('size', SIZES)
def test_gin_files_configure_t5x_train(size, monkeypatch):
  """What `python -m t5x.train --gin_file=t5x/dsbs_<size>.gin` would run."""
  # t5x's finetune.gin configures `__main__.train`, t5x.train's when run.
  monkeypatch.setattr(
    sys.modules['__main__'], 'train', t5x_train.train, raising=False
  )
  gin.clear_config()
  # Where t5x.train looks: this repository's gin/ is given by the user, t5x's
  # own files are found from the folder that holds the t5x package.
  for path in (
    str(gin_utils.project_gin_dir()),
    os.path.dirname(os.path.dirname(t5x.__file__)),
  ):
    gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(
      [f't5x/dsbs_{size}.gin'],
      [
        "MODEL_DIR = '/tmp/dsbs_t5x'",
        "DATASET = 'svamp'",
        'DATA_FRACTION = 0.5',
      ],
    )
    bindings = gin.get_bindings(t5x_train.train)
    model = bindings['model']
    assert isinstance(model, t5x_models.DistillStepByStepModel)
    assert model.alpha == 0.5
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
    assert task.output_features['targets'].vocabulary == (
      model.output_vocabulary
    )
  finally:
    gin.clear_config()
