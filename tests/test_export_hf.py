"""Exporting to HuggingFace: checkpoint_export and the dsbs-export-hf binary.

References: the real-t5x checkpoint and what t5x computed from it
(conftest.T5X_TINY_DIR), and our own network on the same weights; the
exported folders are read by transformers (torch, CPU) as a user would,
with `from_pretrained` and nothing else.
"""

import functools
import io
import json
import os
import subprocess
import sys

from conftest import T5X_TINY_DIR
from conftest import reference_batch
from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numerics
import numpy as np
import pytest
import safetensors.numpy
import sentencepiece
import seqio
import torch
import transformers

from dsbs_jax import checkpoint_export
from dsbs_jax import checkpoint_import
from dsbs_jax import checkpoints
from dsbs_jax import data
from dsbs_jax import decoding
from dsbs_jax import export_hf
from dsbs_jax import models
from dsbs_jax import network
from dsbs_jax import partitioning
from dsbs_jax import train
from dsbs_jax import two_tasks
import dsbs_tasks
from dsbs_tasks import parsing

# The reference README's inputs; the fourth is truncated to 15 bytes there.
_REFERENCE_INPUTS = ['[label] q1', '[rationale] q7', '[label] q20']
_REFERENCE_DECODES = ['a1', '5 mod 3 = 0', 'a2', '3 mod 3 = 0']


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def _assert_trees_equal(actual, expected):
  actual, expected = _flat(actual), _flat(expected)
  assert actual.keys() == expected.keys()
  for key, value in expected.items():
    assert actual[key].dtype == np.float32, key
    np.testing.assert_array_equal(actual[key], value, err_msg=str(key))


def _load(folder, **kwargs) -> transformers.T5ForConditionalGeneration:
  return transformers.T5ForConditionalGeneration.from_pretrained(
    folder, **kwargs
  ).eval()


def _hf_logits(model, batch) -> np.ndarray:
  enc = torch.from_numpy(np.asarray(batch['encoder_input_tokens'])).long()
  dec = torch.from_numpy(np.asarray(batch['decoder_input_tokens'])).long()
  with torch.no_grad():
    logits = model(
      input_ids=enc, attention_mask=(enc != 0).long(), decoder_input_ids=dec
    ).logits
  return logits.float().numpy()


def _our_logits(config, params, batch) -> np.ndarray:
  return np.asarray(
    network.Transformer(config).apply(
      {'params': params}, **batch, enable_dropout=False
    )
  )


def _assert_logits_close(
  actual, desired, batch, k=numerics.OTHER_LIBRARY, what='logits'
):
  """`numerics.assert_close` at non-padding target positions (HF's masking
  of padded positions legitimately differs from t5x's)."""
  real = np.asarray(batch['decoder_target_tokens']) != 0
  numerics.assert_close(actual[real], desired[real], k, what)


def _hf_greedy(model, encoder_input_tokens, length) -> np.ndarray:
  """HF greedy decodes in t5x's layout: no start token, 0-padded."""
  enc = torch.from_numpy(np.asarray(encoder_input_tokens)).long()
  out = model.generate(
    input_ids=enc,
    attention_mask=(enc != 0).long(),
    do_sample=False,
    num_beams=1,
    max_new_tokens=length,
  ).numpy()
  assert (out[:, 0] == 0).all()  # decoder_start_token_id
  decodes = np.zeros((len(out), length), np.int32)
  decodes[:, : out.shape[1] - 1] = out[:, 1:]
  return decodes


# --- the real-t5x reference, exported -----------------------------------------


def test_reference_export_gives_t5x_logits_decodes_and_tokens(
  tiny_config, expected, reference_params, tmp_path
):
  vocabulary = seqio.ByteVocabulary()
  checkpoint_export.save_hf(
    reference_params,
    tiny_config,
    vocabulary,
    tmp_path,
    'float32',
    two_tasks.TaskPrefixes(),
  )
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    'config.json',
    'generation_config.json',
    'model.safetensors',
    'special_tokens_map.json',
    'tokenizer_config.json',
  ]
  model = _load(tmp_path)
  assert model.dtype == torch.float32
  assert model.generation_config.decoder_start_token_id == 0
  assert model.config.task_specific_params == {
    'label': {'prefix': '[label] '},
    'rationale': {'prefix': '[rationale] '},
  }
  batch = reference_batch(expected)
  _assert_logits_close(_hf_logits(model, batch), expected['logits'], batch)

  decodes = _hf_greedy(model, expected['encoder_input_tokens'], 16)
  np.testing.assert_array_equal(decodes, expected['greedy_decodes'])

  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert type(tokenizer).__name__ == 'ByT5Tokenizer'
  ids = tokenizer(
    _REFERENCE_INPUTS, padding='max_length', max_length=16
  ).input_ids
  np.testing.assert_array_equal(ids, expected['encoder_input_tokens'][:3])
  texts = tokenizer.batch_decode(decodes, skip_special_tokens=True)
  assert texts == _REFERENCE_DECODES


def test_reference_export_reads_back_exactly_and_decodes_as_hf(
  tiny_config, expected, reference_params, tmp_path
):
  vocabulary = seqio.ByteVocabulary()
  checkpoint_export.save_hf(reference_params, tiny_config, vocabulary, tmp_path)
  assert checkpoint_import.config_from_hf(tmp_path) == tiny_config
  params = checkpoint_import.load_params(tmp_path, tiny_config)
  _assert_trees_equal(params, reference_params)
  # Our greedy decodes (from the folder read back) are HuggingFace's.
  ours = models.EncoderDecoderModel(
    network.Transformer(tiny_config),
    vocabulary,
    vocabulary,
    decode_fn=functools.partial(decoding.temperature_sample, temperature=0.0),
  ).predict_batch(params, reference_batch(expected))
  np.testing.assert_array_equal(
    ours, _hf_greedy(_load(tmp_path), expected['encoder_input_tokens'], 16)
  )


def test_bfloat16_export_is_the_rounded_weights(
  tiny_config, expected, reference_params, tmp_path
):
  checkpoint_export.save_hf(
    reference_params, tiny_config, seqio.ByteVocabulary(), tmp_path, 'bfloat16'
  )
  stored = safetensors.numpy.load_file(tmp_path / 'model.safetensors')
  assert {v.dtype for v in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
  rounded = jax.tree.map(
    lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32),
    reference_params,
  )
  _assert_trees_equal(checkpoint_import.load_params(tmp_path), rounded)

  batch = reference_batch(expected)
  ours = _our_logits(tiny_config, rounded, batch)
  # The bfloat16 weights computed in float32: our network's logits on them.
  as_f32 = _hf_logits(_load(tmp_path, dtype=torch.float32), batch)
  _assert_logits_close(as_f32, ours, batch)
  # transformers 5 loads them as bfloat16 (config.json's dtype) by default.
  model = _load(tmp_path)
  assert model.dtype == torch.bfloat16
  as_bf16 = _hf_logits(model, batch)
  # Against t5x's float32 logits: rounded weights, then bfloat16 compute too.
  for logits, what in ((as_f32, 'rounded weights'), (as_bf16, 'bf16 compute')):
    _assert_logits_close(
      logits, expected['logits'], batch, numerics.BFLOAT16, what
    )
  # Greedy decodes survive the rounding.
  np.testing.assert_array_equal(
    _hf_greedy(model, expected['encoder_input_tokens'], 16),
    expected['greedy_decodes'],
  )


# --- a T5 1.0-shaped model of ours, with a SentencePiece vocabulary ---------

# ReLU, tied embedding (logits via the scaled embedding), num_heads * head_dim
# != emb_dim, more decoder than encoder layers, few buckets.
_T5_1_0 = network.T5Config(
  vocab_size=128,
  emb_dim=32,
  num_heads=4,
  head_dim=16,
  mlp_dim=64,
  mlp_activations=('relu',),
  num_encoder_layers=2,
  num_decoder_layers=3,
  dropout_rate=0.0,
  logits_via_embedding=True,
  num_buckets=8,
  max_distance=20,
)

_SPM_TEXT = [
  'the quick brown fox jumps over the lazy dog',
  'a man is playing a guitar on stage',
  'two plus three equals five',
  'what is the answer to the question',
]


@pytest.fixture(scope='module')
def spm_file(tmp_path_factory):
  """A tiny SentencePiece model with T5's special ids (pad 0, eos 1, unk 2)."""
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(_SPM_TEXT * 20),
    model_writer=model,
    vocab_size=40,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    model_type='unigram',
    character_coverage=1.0,
    minloglevel=2,
  )
  path = tmp_path_factory.mktemp('spm') / 'tiny.model'
  path.write_bytes(model.getvalue())
  return str(path)


def _random_params(config, seed=0):
  tokens = jnp.zeros((1, 4), jnp.int32)
  variables = network.Transformer(config).init(
    jax.random.PRNGKey(seed), tokens, tokens, tokens, enable_dropout=False
  )
  flat = _flat(jax.device_get(nn.unbox(variables['params'])))
  rng = np.random.default_rng(seed)
  for key, value in flat.items():
    if key[-1] == 'scale':  # norm scales start at 1: make a swap show
      flat[key] = rng.uniform(0.5, 1.5, value.shape)
    flat[key] = np.asarray(flat[key], np.float32)
  return traverse_util.unflatten_dict(flat)


def _random_batch(vocab_size):
  """Mixed lengths, padded; decoder inputs are the targets shifted right."""
  rng = np.random.default_rng(1)
  enc = np.zeros((3, 12), np.int32)
  tgt = np.zeros((3, 8), np.int32)
  for row, (n_in, n_out) in enumerate([(9, 5), (4, 8), (12, 2)]):
    enc[row, :n_in] = rng.integers(3, vocab_size, n_in)
    tgt[row, :n_out] = rng.integers(3, vocab_size, n_out)
  dec = np.zeros_like(tgt)
  dec[:, 1:] = tgt[:, :-1]
  return {
    'encoder_input_tokens': enc,
    'decoder_input_tokens': dec,
    'decoder_target_tokens': tgt,
  }


def test_t5_1_0_checkpoint_of_ours_exports_with_sentencepiece(
  spm_file, tmp_path
):
  """Our checkpoint format (a checkpoint_<step> dir) through the binary's
  function, a tied ReLU model, and a T5Tokenizer folder."""
  params = _random_params(_T5_1_0)
  model_dir = tmp_path / 'run'
  checkpointer = checkpoints.TrainCheckpointer(str(model_dir), period=1)
  checkpointer.save(7, {'params': params, 'step': np.int32(7)}, force=True)
  checkpointer.wait()
  vocabulary = seqio.SentencePieceVocabulary(spm_file, extra_ids=5)
  out = tmp_path / 'hf'
  step = export_hf.export(
    module=network.Transformer(_T5_1_0),
    vocabulary=vocabulary,
    checkpoint=str(model_dir / 'checkpoint_7'),
    output=str(out),
  )
  assert step == 7

  stored = safetensors.numpy.load_file(out / 'model.safetensors')
  assert 'lm_head.weight' not in stored  # tied: HuggingFace ties it itself
  assert checkpoint_import.config_from_hf(out) == _T5_1_0
  _assert_trees_equal(checkpoint_import.load_params(out), params)

  model = _load(out)
  assert model.config.scale_decoder_outputs
  assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
  batch = _random_batch(_T5_1_0.vocab_size)
  _assert_logits_close(
    _hf_logits(model, batch), _our_logits(_T5_1_0, params, batch), batch
  )

  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert type(tokenizer).__name__ == 'T5Tokenizer'
  assert len(tokenizer) == vocabulary.vocab_size


# --- tokenizers ---------------------------------------------------------------

_TEXTS = [
  'the quick fox',
  'two plus  three equals five',
  '[label] what is the answer',
  'zebra!',
]


# An NLI input: premise and hypothesis joined as the tasks join them.
_NLI = f'a man plays{parsing.NLI_SEPARATOR}a man is playing'


@pytest.mark.parametrize('extra_ids', [0, 3])
@pytest.mark.parametrize('kind', ['byte', 'sentencepiece'])
def test_tokenizer_ids_are_the_vocabulary_ids(
  kind, extra_ids, spm_file, tmp_path
):
  if kind == 'byte':
    vocabulary = seqio.ByteVocabulary(extra_ids=extra_ids)
    # Bytes, whatever the text: special tokens' text too, as seqio does.
    texts = [*_TEXTS, 'héllo wörld ✓', '  spaces  ', _NLI, '<pad><extra_id_0>']
  else:
    vocabulary = seqio.SentencePieceVocabulary(spm_file, extra_ids=extra_ids)
    texts = _TEXTS
  for name, content in checkpoint_export.tokenizer_files(vocabulary).items():
    (tmp_path / name).write_bytes(content)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert len(tokenizer) == vocabulary.vocab_size
  assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
  assert tokenizer.unk_token_id == 2
  for text in texts:
    ids = vocabulary.encode(text)
    # seqio appends EOS in preprocessing, the tokenizer by itself.
    assert tokenizer(text).input_ids == [*ids, 1], text
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if 2 not in ids:  # seqio decodes unk as ' ⁇ ', HF drops it
      assert decoded == vocabulary.decode(ids), text
  # Sentinels: seqio's <extra_id_0> is the last id, as HuggingFace's.
  for i in range(extra_ids):
    want = vocabulary.vocab_size - 1 - i
    assert tokenizer.convert_tokens_to_ids(f'<extra_id_{i}>') == want
  if kind == 'sentencepiece':
    # The documented difference: T5Tokenizer reads the text `</s>` as EOS;
    # and the documented way around it: SentencePiece on spiece.model.
    assert 1 not in vocabulary.encode(_NLI)
    assert 1 in tokenizer(_NLI).input_ids[:-1]
    sp = sentencepiece.SentencePieceProcessor(
      model_file=str(tmp_path / 'spiece.model')
    )
    assert sp.encode(_NLI) == vocabulary.encode(_NLI)


def test_sentencepiece_with_extra_ids_numbered_up_is_refused(spm_file):
  vocabulary = seqio.SentencePieceVocabulary(
    spm_file, extra_ids=2, reverse_extra_ids=False
  )
  with pytest.raises(checkpoint_export.ExportError, match='from the top'):
    checkpoint_export.tokenizer_files(vocabulary)


def test_sentencepiece_without_t5_special_ids_is_refused(tmp_path):
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(  # defaults: unk 0, bos 1, eos 2
    sentence_iterator=iter(_SPM_TEXT * 20),
    model_writer=model,
    vocab_size=40,
    minloglevel=2,
  )
  (tmp_path / 'default.model').write_bytes(model.getvalue())
  vocabulary = seqio.SentencePieceVocabulary(str(tmp_path / 'default.model'))
  with pytest.raises(checkpoint_export.ExportError, match='needs 0/1/2'):
    checkpoint_export.tokenizer_files(vocabulary)


def test_other_vocabularies_are_refused():
  with pytest.raises(checkpoint_export.ExportError, match='PassThrough'):
    checkpoint_export.tokenizer_files(seqio.PassThroughVocabulary(10))


# --- config.json --------------------------------------------------------------


@pytest.mark.parametrize(
  'activations, proj',
  [
    (('gelu', 'linear'), 'gated-gelu'),
    (('silu', 'linear'), 'gated-silu'),
    (('relu',), 'relu'),
    (('gelu',), 'gelu_new'),
  ],
)
@pytest.mark.parametrize('tied', [False, True])
def test_hf_config_maps_back_to_the_config(activations, proj, tied, tmp_path):
  config = _T5_1_0.replace(
    vocab_size=384, mlp_activations=activations, logits_via_embedding=tied
  )
  written = checkpoint_export.hf_config(config, seqio.ByteVocabulary())
  assert written['feed_forward_proj'] == proj
  assert written.keys() >= checkpoint_import.HF_DEFAULTS.keys()
  (tmp_path / 'config.json').write_text(json.dumps(written))
  assert checkpoint_import.config_from_hf(tmp_path) == config
  hf = transformers.T5Config.from_pretrained(tmp_path)
  assert hf.scale_decoder_outputs == tied
  assert (hf.dense_act_fn, hf.is_gated_act) == (
    'gelu_new' if activations[0] == 'gelu' else activations[0],
    len(activations) == 2,
  )


@pytest.mark.parametrize(
  'activations', [('gelu', 'gelu'), ('tanh',), ('relu', 'linear', 'linear')]
)
def test_activations_without_hf_equivalent_are_refused(activations):
  config = _T5_1_0.replace(vocab_size=384, mlp_activations=activations)
  with pytest.raises(checkpoint_export.ExportError, match='no HuggingFace'):
    checkpoint_export.hf_config(config, seqio.ByteVocabulary())


def test_vocabulary_larger_than_the_model_is_refused(tiny_config):
  with pytest.raises(checkpoint_export.ExportError, match='384 embeddings'):
    checkpoint_export.hf_config(
      tiny_config, seqio.ByteVocabulary(extra_ids=200)
    )


# --- the output folder --------------------------------------------------------


def test_output_must_be_new_or_empty_unless_overwrite(
  tiny_config, reference_params, tmp_path
):
  save = functools.partial(
    checkpoint_export.save_hf,
    reference_params,
    tiny_config,
    seqio.ByteVocabulary(),
    tmp_path,
  )
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(checkpoint_export.ExportError, match='not empty'):
    save()
  # An earlier export with other weights and a fast tokenizer: both would be
  # read instead of the new files, so overwriting removes them.
  (tmp_path / 'tokenizer.json').write_text('{}')
  (tmp_path / 'pytorch_model.bin').write_bytes(b'')
  save(overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    'config.json',
    'generation_config.json',
    'model.safetensors',
    'notes.txt',
    'special_tokens_map.json',
    'tokenizer_config.json',
  ]
  with pytest.raises(checkpoint_export.ExportError, match='not a directory'):
    checkpoint_export.check_output_dir(tmp_path / 'notes.txt')


def test_missing_checkpoint_is_named(tiny_config, tmp_path):
  with pytest.raises(checkpoint_export.ExportError, match='no such file'):
    export_hf.export(
      module=network.Transformer(tiny_config),
      vocabulary=seqio.ByteVocabulary(),
      checkpoint=str(tmp_path / 'nothing'),
      output=str(tmp_path / 'hf'),
    )
  assert not (tmp_path / 'hf').exists()


# --- the binary ---------------------------------------------------------------

_TINY_MODEL = ['--gin_file=runs/dsbs.gin', '--gin_file=models/t5_1_1_tiny.gin']


def _run_binary(*args: str) -> subprocess.CompletedProcess:
  env = {'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2', 'XLA_FLAGS': ''}
  return subprocess.run(
    [sys.executable, '-m', 'dsbs_jax.export_hf', *args],
    capture_output=True,
    text=True,
    env={**os.environ, **env},
    timeout=600,
    check=False,
  )


@pytest.mark.slow
def test_binary_exports_a_trained_run(tiny_config, tmp_path):
  """Two training steps of the tiny model, then `python -m
  dsbs_jax.export_hf` on its MODEL_DIR: transformers gives our logits."""
  config = tiny_config
  vocabulary = seqio.ByteVocabulary()
  task = dsbs_tasks.dsbs_task('synthetic', vocabulary=vocabulary)
  model = models.DistillStepByStepModel(
    network.Transformer(config),
    vocabulary,
    vocabulary,
    decode_fn=functools.partial(decoding.temperature_sample, temperature=0.0),
  )
  model_dir = tmp_path / 'run'
  state = train.train(
    model=model,
    train_dataset=data.DatasetConfig(
      task, {'inputs': 64, 'targets': 48}, split='train', batch_size=8
    ),
    model_dir=str(model_dir),
    train_steps=2,
    partitioner=partitioning.Partitioner(devices=jax.devices()[:1]),
    checkpoint_period=2,
    log_period=1,
  )
  params = jax.device_get(state.params)

  out = tmp_path / 'hf'
  result = _run_binary(
    *_TINY_MODEL,
    "--gin.LABEL_PREFIX='predict: '",
    f'--checkpoint={model_dir}',
    f'--output={out}',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  hf = _load(out)
  assert hf.config.task_specific_params['label'] == {'prefix': 'predict: '}
  _assert_trees_equal(checkpoint_import.load_params(out), params)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  inputs = tokenizer(
    ['predict: Tom has 3 apples and gets 4 more. How many now?', 'Ann'],
    padding=True,
    return_tensors='np',
  ).input_ids
  targets = tokenizer(['7', 'Gets more, so add'], padding=True).input_ids
  targets = np.asarray(targets, np.int32)
  batch = {
    'encoder_input_tokens': inputs.astype(np.int32),
    'decoder_input_tokens': np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
    'decoder_target_tokens': targets,
  }
  _assert_logits_close(
    _hf_logits(hf, batch), _our_logits(config, params, batch), batch
  )


@pytest.mark.slow
def test_binary_mistakes_stop_with_one_line_and_status_2(tmp_path):
  reference = T5X_TINY_DIR / 'legacy_checkpoint_400'
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'file').write_text('x')
  for args, message in [
    (
      [f'--checkpoint={tmp_path / "nothing"}', f'--output={tmp_path / "a"}'],
      f'Checkpoint {tmp_path / "nothing"}: no such file or directory.',
    ),
    (
      [f'--checkpoint={reference}', f'--output={tmp_path / "taken"}'],
      f'Output {tmp_path / "taken"} exists and is not empty; choose a new '
      'directory or pass --overwrite.',
    ),
  ]:
    result = _run_binary(*_TINY_MODEL, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == message
    assert 'Traceback' not in result.stderr
