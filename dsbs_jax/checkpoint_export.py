"""Exporting T5 weights for others: a HuggingFace T5 folder.

This module's one job is the inverse of `checkpoint_import`'s HuggingFace
mapping, with the same tables and checks (`hf_name`, `hf_transposed`,
`FLAX_ACTIVATIONS`, `check_params`): `save_hf` writes a folder that

* `transformers.T5ForConditionalGeneration.from_pretrained(folder)` and
  `transformers.AutoTokenizer.from_pretrained(folder)` read as they are, and
* `checkpoint_import.load_params(folder)` reads back into the same tree
  (exactly, in float32).

The folder holds `config.json`, `generation_config.json`, `model.safetensors`
(HuggingFace's tensor names and (out, in) layouts, float32 or bfloat16) and
the tokenizer: `spiece.model` for a `seqio.SentencePieceVocabulary`
(`T5Tokenizer`), or the `ByT5Tokenizer` configuration for a
`seqio.ByteVocabulary` (the same ids: pad 0, eos 1, unk 2, bytes from 3).

T5 1.0 models (`logits_via_embedding`) need no rescaled weights: t5x divides
the decoder output by sqrt(emb_dim) before the tied embedding, and
HuggingFace's `scale_decoder_outputs` (transformers 5; `tie_word_embeddings`
before) multiplies it by d_model ** -0.5, the same number.
"""

from collections.abc import Mapping
import json
import os
from typing import Any

from etils import epath
from flax import traverse_util
import ml_dtypes
import numpy as np
import safetensors.numpy
from sentencepiece import sentencepiece_model_pb2
import seqio

from dsbs_jax import checkpoint_import
from dsbs_jax import errors
from dsbs_jax import network
from dsbs_jax import two_tasks

Params = checkpoint_import.Params

DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}

# flax.linen activation -> HuggingFace's name (the inverse of the import's).
_HF_ACTIVATIONS = {
  flax: hf for hf, flax in checkpoint_import.FLAX_ACTIVATIONS.items()
}

CONFIG_FILE = 'config.json'
GENERATION_CONFIG_FILE = 'generation_config.json'
WEIGHTS_FILE = 'model.safetensors'
SPIECE_FILE = 'spiece.model'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
SPECIAL_TOKENS_FILE = 'special_tokens_map.json'

# What a HuggingFace folder may hold that would be read instead of (or
# besides) what `save_hf` writes: removed from an output folder overwritten.
_SHADOWING_FILES = (
  'tokenizer.json',
  'added_tokens.json',
  SPIECE_FILE,
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
  f'{WEIGHTS_FILE}.index.json',
)
_SHADOWING_PATTERNS = ('model-*-of-*.safetensors', 'pytorch_model-*-of-*.bin')


class ExportError(errors.UserError, ValueError):
  """A model, vocabulary or output folder that cannot be exported to."""


def hf_config(
  config: network.T5Config,
  vocabulary: seqio.Vocabulary,
  prefixes: two_tasks.TaskPrefixes | None = None,
) -> dict[str, Any]:
  """`config.json` of the `T5ForConditionalGeneration` that `config` is.

  Readable by transformers 4 (`tie_word_embeddings`) and 5 (which always
  ties and reads the scaling as `scale_decoder_outputs`); `config_from_hf`
  maps it back to `config` (up to `dtype`, a computation setting). With
  `prefixes`, the label and rationale tasks' input prefixes are recorded in
  `task_specific_params`, where HuggingFace keeps per-task prefixes.
  """
  if vocabulary.vocab_size > config.vocab_size:
    raise ExportError(
      f'The vocabulary has {vocabulary.vocab_size} ids but the model only '
      f'{config.vocab_size} embeddings: not the model it was trained with.'
    )
  tied = bool(config.logits_via_embedding)
  hf = {
    'architectures': ['T5ForConditionalGeneration'],
    'model_type': 't5',
    'vocab_size': config.vocab_size,
    'd_model': config.emb_dim,
    'd_kv': config.head_dim,
    'd_ff': config.mlp_dim,
    'num_layers': config.num_encoder_layers,
    'num_decoder_layers': config.num_decoder_layers,
    'num_heads': config.num_heads,
    'relative_attention_num_buckets': config.num_buckets,
    'relative_attention_max_distance': config.max_distance,
    'feed_forward_proj': _feed_forward_proj(config.mlp_activations),
    'dropout_rate': config.dropout_rate,
    'layer_norm_epsilon': config.layer_norm_epsilon,
    'tie_word_embeddings': tied,
    'scale_decoder_outputs': tied,
    'is_encoder_decoder': True,
    'pad_token_id': vocabulary.pad_id,
    'eos_token_id': vocabulary.eos_id,
    # t5x starts decoding from id 0 (the padding id), as HuggingFace's T5.
    'decoder_start_token_id': 0,
  }
  if prefixes is not None:
    hf['task_specific_params'] = {
      'label': {'prefix': prefixes.label},
      'rationale': {'prefix': prefixes.rationale},
    }
  return hf


def _feed_forward_proj(activations: tuple[str, ...]) -> str:
  """HuggingFace's `feed_forward_proj` for t5x's `mlp_activations`."""
  activations = tuple(activations)
  gated = len(activations) == 2 and activations[1] == 'linear'
  if gated or len(activations) == 1:
    act = activations[0]
  else:
    raise ExportError(
      f'mlp_activations {activations} has no HuggingFace T5 equivalent: '
      "it takes (act,) or gated (act, 'linear')."
    )
  if act not in _HF_ACTIVATIONS:
    raise ExportError(
      f'Activation {act!r} has no HuggingFace T5 equivalent; supported: '
      f'{sorted(_HF_ACTIVATIONS)}.'
    )
  if not gated:
    return _HF_ACTIVATIONS[act]
  # HuggingFace reads 'gated-gelu' as the tanh GELU, flax's (and t5x's).
  return 'gated-gelu' if act == 'gelu' else f'gated-{_HF_ACTIVATIONS[act]}'


def hf_tensors(
  params: Params, config: network.T5Config, dtype: str = 'float32'
) -> dict[str, np.ndarray]:
  """HuggingFace's state dict for `params`: its names, layouts and `dtype`.

  Only what HuggingFace reads is written: no copies of `shared.weight`
  (`encoder/decoder.embed_tokens`, and `lm_head` when tied).
  """
  if dtype not in DTYPES:
    raise ExportError(f'dtype {dtype!r}: expected one of {sorted(DTYPES)}.')
  checkpoint_import.check_params(params, config)
  tensors = {}
  for key, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value, np.float32)
    if checkpoint_import.hf_transposed(key):
      value = value.T
    tensors[checkpoint_import.hf_name(key)] = np.ascontiguousarray(
      value.astype(DTYPES[dtype])
    )
  return tensors


# --- tokenizers -------------------------------------------------------------


def tokenizer_files(vocabulary: seqio.Vocabulary) -> dict[str, bytes]:
  """The files of the HuggingFace tokenizer with `vocabulary`'s ids."""
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return _byt5_files(vocabulary)
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return _t5_files(vocabulary)
  raise ExportError(
    f'No HuggingFace tokenizer for {type(vocabulary).__name__}: only '
    'seqio.SentencePieceVocabulary (T5Tokenizer) and seqio.ByteVocabulary '
    '(ByT5Tokenizer) are exported.'
  )


def _json(value: Any) -> bytes:
  return (json.dumps(value, indent=2, ensure_ascii=False) + '\n').encode()


def _extra_id_tokens(count: int) -> list[str]:
  return [f'<extra_id_{i}>' for i in range(count)]


def _byt5_files(vocabulary: seqio.ByteVocabulary) -> dict[str, bytes]:
  """ByT5Tokenizer: seqio's ids (pad 0, eos 1, unk 2, byte b at b + 3).

  seqio numbers extra ids from the top (`<extra_id_0>` is the last id),
  ByT5Tokenizer from 259 up: they are listed with seqio's ids. seqio encodes
  every text as its bytes, `</s>` (the NLI tasks' separator) included; so
  does the tokenizer with `split_special_tokens`, instead of reading such
  text as special ids.
  """
  special = {'eos_token': '</s>', 'unk_token': '<unk>', 'pad_token': '<pad>'}
  extra = vocabulary.extra_ids
  base = vocabulary.vocab_size - extra  # 259
  config = {
    'tokenizer_class': 'ByT5Tokenizer',
    'extra_ids': 0,
    'split_special_tokens': True,
    **special,
  }
  if extra:
    config['added_tokens_decoder'] = {
      str(base + i): {
        'content': f'<extra_id_{extra - 1 - i}>',
        'lstrip': False,
        'normalized': False,
        'rstrip': False,
        'single_word': False,
        'special': True,
      }
      for i in range(extra)
    }
    config['extra_special_tokens'] = _extra_id_tokens(extra)  # transformers 5
    special['additional_special_tokens'] = _extra_id_tokens(extra)
  return {
    TOKENIZER_CONFIG_FILE: _json(config),
    SPECIAL_TOKENS_FILE: _json(special),
  }


def _t5_files(vocabulary: seqio.SentencePieceVocabulary) -> dict[str, bytes]:
  """T5Tokenizer: the SentencePiece model without seqio's extra-id pieces.

  seqio appends `▁<extra_id_i>` pieces (i descending) to the model it reads;
  T5Tokenizer adds them itself (`extra_ids`), in the same order. One
  difference remains (docs/export_hf.md): the text `</s>` (the NLI tasks'
  separator) is ordinary pieces to seqio, the EOS id to T5Tokenizer.
  """
  model = sentencepiece_model_pb2.ModelProto.FromString(vocabulary.sp_model)
  extra = vocabulary.extra_ids
  pieces = [p.piece for p in model.pieces]
  added = pieces[len(pieces) - extra :]
  if extra and added != [f'▁<extra_id_{i}>' for i in reversed(range(extra))]:
    raise ExportError(
      f'{vocabulary.sentencepiece_model_file}: extra ids numbered from the '
      'bottom (reverse_extra_ids=False); T5Tokenizer numbers them from the top.'
    )
  del model.pieces[len(pieces) - extra :]
  sp = vocabulary.tokenizer
  ids = {'pad': sp.pad_id(), 'eos': sp.eos_id(), 'unk': sp.unk_id()}
  if ids != {'pad': 0, 'eos': 1, 'unk': 2}:
    raise ExportError(
      f'{vocabulary.sentencepiece_model_file}: pad/eos/unk ids are '
      f'{ids["pad"]}/{ids["eos"]}/{ids["unk"]}; T5 (seqio and T5Tokenizer) '
      'needs 0/1/2.'
    )
  special = {
    'eos_token': sp.id_to_piece(1),
    'unk_token': sp.id_to_piece(2),
    'pad_token': sp.id_to_piece(0),
  }
  config = {'tokenizer_class': 'T5Tokenizer', 'extra_ids': extra, **special}
  if extra:
    special['additional_special_tokens'] = _extra_id_tokens(extra)
  return {
    SPIECE_FILE: model.SerializeToString(),
    TOKENIZER_CONFIG_FILE: _json(config),
    SPECIAL_TOKENS_FILE: _json(special),
  }


# --- the folder ---------------------------------------------------------------


def check_output_dir(
  output_dir: str | os.PathLike[str], overwrite: bool = False
) -> None:
  """Refuses an output folder that exists and is not empty, unless
  `overwrite`; and a path that exists as a file."""
  path = epath.Path(output_dir)
  if path.exists() and not path.is_dir():
    raise ExportError(f'Output {path} exists and is not a directory.')
  if path.is_dir() and any(path.iterdir()) and not overwrite:
    raise ExportError(
      f'Output {path} exists and is not empty; choose a new directory or '
      'pass --overwrite.'
    )


def save_hf(
  params: Params,
  config: network.T5Config,
  vocabulary: seqio.Vocabulary,
  output_dir: str | os.PathLike[str],
  dtype: str = 'float32',
  prefixes: two_tasks.TaskPrefixes | None = None,
  overwrite: bool = False,
) -> None:
  """Writes `params` (t5x's tree) as a HuggingFace T5 folder.

  `dtype` ('float32' or 'bfloat16') is that of the saved weights (and the
  `dtype` transformers 5 loads them in by default). Everything is checked
  and converted before the first file is written. With `overwrite`, files
  of an earlier export (or other HuggingFace weights and tokenizers that
  would be read instead) are replaced or removed; nothing else is touched.
  """
  check_output_dir(output_dir, overwrite)
  files = {
    CONFIG_FILE: _json(
      hf_config(config, vocabulary, prefixes)
      | {'dtype': dtype, 'torch_dtype': dtype}
    ),
    GENERATION_CONFIG_FILE: _json(
      {
        'decoder_start_token_id': 0,
        'eos_token_id': vocabulary.eos_id,
        'pad_token_id': vocabulary.pad_id,
      }
    ),
    **tokenizer_files(vocabulary),
  }
  tensors = hf_tensors(params, config, dtype)
  directory = epath.Path(output_dir)
  directory.mkdir(parents=True, exist_ok=True)
  _remove_shadowing_files(directory)
  for name, content in files.items():
    (directory / name).write_bytes(content)
  _save_safetensors(tensors, directory / WEIGHTS_FILE)


def _remove_shadowing_files(directory: epath.Path) -> None:
  stale = [directory / name for name in _SHADOWING_FILES]
  for pattern in _SHADOWING_PATTERNS:
    stale += directory.glob(pattern)
  for path in stale:
    if path.is_file():
      path.unlink()


def _save_safetensors(
  tensors: Mapping[str, np.ndarray], path: epath.Path
) -> None:
  metadata = {'format': 'pt'}  # what transformers checks for
  if '://' in os.fspath(path):
    path.write_bytes(safetensors.numpy.save(dict(tensors), metadata))
  else:
    safetensors.numpy.save_file(dict(tensors), os.fspath(path), metadata)
