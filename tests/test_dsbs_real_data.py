"""Distilling step-by-step on the released svamp and cqa data, end to end.

A few training steps of the tiny model on the sample of the release in
tests/testdata (a few dozen records per split, which is all four steps of
batch 8 and an eval on 8 examples read), then the eval binary's function
reads the checkpoint and writes the accuracy and a predictions file with
generated rationales.
"""

import functools
import json

from conftest import SAMPLE_DATA_DIR
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from dsbs_jax import checkpoints
from dsbs_jax import data
from dsbs_jax import decoding
from dsbs_jax import eval as eval_lib
from dsbs_jax import losses
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import partitioning
from dsbs_jax import train
import dsbs_tasks


@pytest.mark.slow  # End to end: trains, restores, evaluates.
@pytest.mark.parametrize('dataset', ['svamp', 'cqa'])
def test_dsbs_trains_then_eval_writes_accuracy_and_predictions(
  tmp_path, tiny_config, dataset
):
  vocabulary = seqio.ByteVocabulary()
  task = dsbs_tasks.dsbs_task(
    dataset, data_dir=str(SAMPLE_DATA_DIR), vocabulary=vocabulary
  )
  model = models.DistillStepByStepModel(
    network.Transformer(tiny_config),
    vocabulary,
    vocabulary,
    loss=losses.DistillStepByStepLoss(alpha=0.5),
    decode_fn=functools.partial(decoding.temperature_sample, temperature=0.0),
  )
  lengths = {'inputs': 256, 'targets': 64}
  one_device = partitioning.Partitioner(devices=jax.devices()[:1])
  train_config = data.DatasetConfig(task, lengths, split='train', batch_size=8)
  state = train.train(
    model=model,
    train_dataset=train_config,
    model_dir=str(tmp_path),
    train_steps=4,
    partitioner=one_device,
    checkpoint_period=4,
    log_period=1,
  )
  assert int(state.step) == 4

  # The checkpoint restores as bfloat16 parameters for inference.
  shapes = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params
  )
  shardings = jax.tree.map(lambda x: x.sharding, state.params)
  params, step = checkpoints.restore_params(
    str(tmp_path), shapes, shardings, tiny_config, 'bfloat16'
  )
  assert step == 4
  for restored, trained in zip(
    jax.tree.leaves(params), jax.tree.leaves(state.params)
  ):
    # Rounded to nearest, as a cast rounds: exactly the cast's values.
    assert restored.dtype == jnp.bfloat16
    np.testing.assert_array_equal(restored, trained.astype(jnp.bfloat16))

  eval_config = data.DatasetConfig(
    task, lengths, split='test', batch_size=8, shuffle=False
  )
  results = eval_lib.evaluate(
    model=model,
    dataset=eval_config,
    model_dir=str(tmp_path),
    num_examples=8,
    partitioner=one_device,
    write_rationales=True,
  )
  metrics = json.loads((tmp_path / 'eval_test' / 'metrics.json').read_text())
  assert metrics['step'] == 4
  assert metrics['metrics'] == results
  assert 0.0 <= results[task]['accuracy'] <= 1.0

  lines = (tmp_path / 'eval_test' / 'predictions_4.jsonl').read_text()
  records = [json.loads(line) for line in lines.splitlines()]
  assert len(records) == 8
  first = json.loads(
    (SAMPLE_DATA_DIR / dataset / f'{dataset}_test.json')
    .read_text()
    .splitlines()[0]
  )
  # Ground-truth targets, in the split's order, and rationales on request.
  want = first['label'] if dataset == 'svamp' else first['answer']
  assert records[0]['target'] == want
  for record in records:
    assert record['input'].startswith('[label] ')
    assert {'prediction', 'rationale', 'teacher_rationale', 'score'} <= set(
      record
    )
