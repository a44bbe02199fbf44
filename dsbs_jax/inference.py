"""Inference: restoring parameters, batched decoding, seqio evaluation.

The library behind the train binary's periodic evaluation, `eval` and
`infer`: `restore_for_inference` reads sharded parameters from any
checkpoint, `Predictor` decodes and scores datasets, `Evaluation` computes a
split's metrics (and writes predictions with generated rationales), and
`predict_split` makes one record per example.

Datasets are enumerated ((index, features) elements), as seqio's Evaluator
passes them, so results can be matched to examples. Batches are padded to a
fixed size so each decode function compiles once; padding rows are dropped
from the results.
"""

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
import functools
import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf

from dsbs_jax import checkpoints
from dsbs_jax import data
from dsbs_jax import models
from dsbs_jax import partitioning
from dsbs_jax import trainer
from dsbs_jax import two_tasks

Prediction = tuple[int, Sequence[int]]


def _padded_batches(
  ds: tf.data.Dataset, batch_size: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(indices, batch) of an enumerated dataset, the last batch zero-padded."""
  for batch in ds.batch(batch_size).as_numpy_iterator():
    indices, features = batch
    n = len(indices)
    if n < batch_size:
      features = {
        k: np.concatenate(
          [v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)]
        )
        for k, v in features.items()
      }
    yield indices, features


class Predictor:
  """Compiled decode and score functions for one model, reused across steps.

  Methods take the parameters first; `functools.partial(p.predict, params)`
  is seqio's `predict_fn`.
  """

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    partitioner: partitioning.Partitioner,
    batch_size: int,
    params_shardings: Any,
    num_decodes: int = 1,
    decoder_params: dict[str, Any] | None = None,
    seed: int = 0,
  ):
    partitioner.check_batch_size(batch_size)
    self.model = model
    self.partitioner = partitioner
    self.batch_size = batch_size
    self.seed = seed
    self._predict = jax.jit(
      functools.partial(
        model.predict_batch_with_aux,
        num_decodes=num_decodes,
        decoder_params=decoder_params,
      ),
      in_shardings=(params_shardings, partitioner.batch_sharding, None),
      out_shardings=partitioner.replicated,
    )
    self._score = jax.jit(
      model.score_batch,
      in_shardings=(params_shardings, partitioner.batch_sharding),
      out_shardings=partitioner.replicated,
    )

  def _model_features(self, features: dict[str, np.ndarray]):
    names = (
      'encoder_input_tokens',
      'decoder_input_tokens',
      'decoder_target_tokens',
      'decoder_loss_weights',
    )
    return self.partitioner.shard_full_batch(
      {k: v for k, v in features.items() if k in names}
    )

  def predict_with_aux(
    self, params: Any, ds: tf.data.Dataset
  ) -> list[tuple[int, tuple[np.ndarray, float]]]:
    """(index, (tokens, score)) for every example of a model-feature dataset."""
    results = []
    rng = jax.random.PRNGKey(self.seed)
    with self.partitioner.activation_context():
      for step, (indices, features) in enumerate(
        _padded_batches(ds, self.batch_size)
      ):
        tokens, aux = self._predict(
          params, self._model_features(features), jax.random.fold_in(rng, step)
        )
        tokens, scores = jax.device_get((tokens, aux['scores']))
        results += [
          (int(i), (tokens[j], float(scores[j]))) for j, i in enumerate(indices)
        ]
    return results

  def predict(self, params: Any, ds: tf.data.Dataset) -> list[Prediction]:
    """seqio's `predict_fn` (with params bound): (index, tokens)."""
    return [(i, tokens) for i, (tokens, _) in self.predict_with_aux(params, ds)]

  def score(self, params: Any, ds: tf.data.Dataset) -> list[tuple[int, float]]:
    """seqio's `score_fn` (with params bound): (index, log-likelihood)."""
    results = []
    with self.partitioner.activation_context():
      for indices, features in _padded_batches(ds, self.batch_size):
        scores = jax.device_get(
          self._score(params, self._model_features(features))
        )
        results += [(int(i), float(scores[j])) for j, i in enumerate(indices)]
    return results


def evaluate(
  predictor: Predictor,
  params: Any,
  evaluator: seqio.Evaluator,
  step: int | None = None,
) -> dict[str, dict[str, Any]]:
  """Runs generation (and scoring when a task asks for it) and its metrics."""
  has_score_metrics = any(
    task.score_metric_fns for task in evaluator.eval_tasks
  )
  future, _ = evaluator.evaluate(
    compute_metrics=jax.process_index() == 0,
    step=step,
    predict_fn=functools.partial(predictor.predict, params),
    score_fn=(
      functools.partial(predictor.score, params) if has_score_metrics else None
    ),
  )
  return future.result() or {}


def make_evaluator(
  mixture_or_task_name: str,
  model: models.EncoderDecoderModel,
  task_feature_lengths: dict[str, int],
  split: str,
  log_dir: str | None,
  num_examples: int | None = None,
  logger_cls: Sequence[Callable[..., Any]] = (
    seqio.TensorBoardLogger,
    seqio.JSONLogger,
  ),
) -> seqio.Evaluator:
  return seqio.Evaluator(
    mixture_or_task_name=mixture_or_task_name,
    feature_converter=model.FEATURE_CONVERTER_CLS(pack=False),
    eval_split=split,
    sequence_length=dict(task_feature_lengths),
    num_examples=num_examples,
    logger_cls=logger_cls if log_dir else (),
    log_dir=log_dir,
  )


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _rationale_requests(
  examples: Sequence[dict[str, Any]],
  vocabulary: seqio.Vocabulary,
  input_length: int,
) -> tf.data.Dataset:
  """The rationale-task inputs of evaluation examples, tokenized.

  Each is made from the example's `input` by `TaskPrefixes().task_input`, the
  function the tasks use, with the prefixes gin binds for the whole run.
  """
  prefixes = two_tasks.TaskPrefixes()
  inputs = []
  for example in examples:
    if 'input' not in example:
      raise ValueError(
        "Generating rationales needs the task's 'input' feature (the text "
        'without a prefix), which tasks made by dsbs_tasks.dsbs_task have.'
      )
    text = prefixes.task_input(
      two_tasks.RATIONALE_TASK, _text(example['input'])
    )
    ids = vocabulary.encode(text)[: input_length - 1]
    inputs.append(np.array(ids + [vocabulary.eos_id], np.int32))
  eos = np.array([vocabulary.eos_id], np.int32)
  task = np.int32(two_tasks.RATIONALE_TASK)
  return tf.data.Dataset.from_generator(
    lambda: ({'inputs': x, 'targets': eos, 'task': task} for x in inputs),
    output_signature={
      'inputs': tf.TensorSpec([None], tf.int32),
      'targets': tf.TensorSpec([None], tf.int32),
      'task': tf.TensorSpec([], tf.int32),
    },
  )


def predict_split(
  predictor: Predictor,
  params: Any,
  mixture_or_task_name: str,
  task_feature_lengths: dict[str, int],
  split: str,
  use_cached: bool = False,
  write_rationales: bool = False,
  num_examples: int | None = None,
) -> list[dict[str, Any]]:
  """One record per example: input, prediction, score, target when known.

  With `write_rationales`, each record also gets the model's `rationale`,
  generated from the same input as a rationale-task request (distilling
  step-by-step models), and the teacher's when the split has one.
  `num_examples` limits the split to its first examples.
  """
  task = seqio.get_mixture_or_task(mixture_or_task_name)
  lengths = dict(task_feature_lengths)
  dataset = task.get_dataset(
    lengths, split=split, shuffle=False, num_epochs=1, use_cached=use_cached
  )
  if num_examples is not None:
    dataset = dataset.take(num_examples)
  examples = list(dataset.as_numpy_iterator())
  model = predictor.model
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  vocabulary = model.output_vocabulary
  decode = lambda tokens: vocabulary.decode(np.asarray(tokens).tolist())
  predictions = dict(
    predictor.predict_with_aux(params, converter(dataset, lengths).enumerate())
  )
  records = []
  for i, example in enumerate(examples):
    tokens, score = predictions[i]
    record = {
      'input': _text(example['inputs_pretokenized']),
      'prediction': decode(tokens),
      'score': score,
    }
    if 'targets_pretokenized' in example:
      record['target'] = _text(example['targets_pretokenized'])
    records.append(record)
  if write_rationales and examples:
    requests = _rationale_requests(examples, vocabulary, lengths['inputs'])
    rationales = dict(
      predictor.predict_with_aux(
        params, converter(requests, lengths).enumerate()
      )
    )
    for i, record in enumerate(records):
      record['rationale'] = decode(rationales[i][0])
      if _text(examples[i].get('rationale', b'')):
        record['teacher_rationale'] = _text(examples[i]['rationale'])
  return records


def write_jsonl(records: Sequence[dict[str, Any]], path: str) -> None:
  with tf.io.gfile.GFile(path, 'w') as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + '\n')


class Evaluation:
  """Metrics (and optionally predictions with rationales) of one split.

  Built once per run and called with the parameters of each step, so the
  decode function compiles once. Writes under `out_dir`: seqio's summaries,
  `metrics.json`, and with `write_rationales` `predictions_<step>.jsonl`.
  """

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    partitioner: partitioning.Partitioner,
    dataset: data.DatasetConfig,
    params_shardings: Any,
    out_dir: str,
    write_rationales: bool = False,
    num_examples: int | None = None,
  ):
    self.dataset = dataset
    self.num_examples = num_examples
    self.out_dir = out_dir
    self.write_rationales = write_rationales
    self.evaluator = make_evaluator(
      dataset.mixture_or_task_name,
      model,
      dataset.task_feature_lengths,
      dataset.split,
      out_dir,
      num_examples,
    )
    self.predictor = Predictor(
      model, partitioner, dataset.batch_size, params_shardings
    )

  def __call__(self, params: Any, step: int) -> dict[str, dict[str, Any]]:
    results = evaluate(self.predictor, params, self.evaluator, step)
    if jax.process_index() == 0:
      tf.io.gfile.makedirs(self.out_dir)
      with tf.io.gfile.GFile(
        os.path.join(self.out_dir, 'metrics.json'), 'w'
      ) as f:
        json.dump({'step': step, 'metrics': results}, f, indent=2, default=str)
    if self.write_rationales:
      records = predict_split(
        self.predictor,
        params,
        self.dataset.mixture_or_task_name,
        self.dataset.task_feature_lengths,
        self.dataset.split,
        self.dataset.use_cached,
        write_rationales=True,
        num_examples=self.num_examples,
      )
      path = os.path.join(self.out_dir, f'predictions_{step}.jsonl')
      if jax.process_index() == 0:
        write_jsonl(records, path)
        print(f'Wrote {len(records)} predictions with rationales to {path}')
    for task, metrics in results.items():
      logging.info('%s (step %d): %s', task, step, metrics)
      print(
        f'{task} ({self.dataset.split}, step {step}): '
        + ', '.join(
          f'{k} = {v:.4f}' if isinstance(v, float) else f'{k} = {v}'
          for k, v in metrics.items()
        )
      )
    return results


def restore_for_inference(
  model: models.EncoderDecoderModel,
  dataset: data.DatasetConfig,
  partitioner: partitioning.Partitioner,
  path: str,
  dtype: str | None,
) -> tuple[Any, Any, int]:
  """Sharded parameters, their shardings and their step, from any checkpoint.

  `path` is a MODEL_DIR or checkpoint of ours, or a t5x or HuggingFace
  checkpoint (`checkpoints.restore_params`).
  """
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  input_shapes = data.model_input_shapes(dataset, converter)
  shapes, shardings = trainer.param_shapes_and_shardings(
    model, partitioner, input_shapes
  )
  params, step = checkpoints.restore_params(
    path, shapes, shardings, model.module.config, dtype
  )
  return params, shardings, step
