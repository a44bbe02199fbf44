"""Cached incremental decoding: greedy, top-k/top-p sampling, beam search.

The numerics follow t5x's `t5x/decoding.py` so that a model ported from t5x
decodes the same tokens and scores: the same constants (`NEG_INF`,
`MIN_TEMPERATURE`), the same random-key schedule, the same brevity penalty and
the same finished/alive beam bookkeeping, including its tie-breaking.

Both decoders drive a `tokens_to_logits(state) -> (logits, new_cache)` callback
that runs one decoder step on `state.cur_token` ([rows, 1]) with the flax
attention cache `state.cache` and returns next-token logits [rows, vocab].
Rows are `batch * k` with the k decodes of one example next to each other.

`inputs` is the decoder prompt [batch, length], starting with the BOS token 0
at position 0 (t5x's convention). Non-zero entries after it are forced
(teacher-forced prompt); zeros are generated. After EOS, tokens are 0.
"""

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import flax
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# t5x's "effective negative infinity" for masking. Kept as a float64 numpy
# scalar like t5x, so that it promotes exactly as it does there.
NEG_INF = np.array(-1.0e7)

# Temperatures at or below this count as 0 (greedy), avoiding 1/T blow-ups.
MIN_TEMPERATURE = np.array(1e-4)

Cache = Mapping[str, Any]


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at each step (t5x's interface).

  cur_index: loop position; [rows] in sampling, a scalar in beam search.
  sequences: [rows, length] tokens so far, position 0 being BOS.
  cur_token: [rows, 1] the token to feed now.
  cache: the flax attention cache for these rows.
  """

  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cur_token: jnp.ndarray
  cache: Cache


TokensToLogits = Callable[[DecodingState], tuple[jnp.ndarray, Cache]]

# ------------------------------------------------------------------------------
# Batch <-> beam helpers
# ------------------------------------------------------------------------------


def flat_batch_beam_expand(x: jnp.ndarray, beam_size: int) -> jnp.ndarray:
  """[batch, ...] -> [batch * beam_size, ...], each example repeated."""
  return jnp.repeat(x, beam_size, axis=0)


def cache_map(fn: Callable[[jnp.ndarray], jnp.ndarray], cache: Cache) -> Cache:
  """Applies `fn` to every cache array except the `cache_index` counters.

  flax's decoder cache holds per-row `cached_key`/`cached_value` arrays (rows
  leading) and one scalar `cache_index` per layer shared by all rows; only the
  former change with the number of rows. A scanned stack (`layers`, see
  `network.T5Config.scan_layers`) holds them for all its layers at once, rows
  second, so `fn` is mapped over its layers.
  """

  def apply(path, x):
    keys = [getattr(k, 'key', None) for k in path]
    if keys[-1] == 'cache_index':
      return x
    return jax.vmap(fn)(x) if 'layers' in keys else fn(x)

  return jax.tree_util.tree_map_with_path(apply, cache)


def _as_dict(cache: Cache) -> Cache:
  """Plain nested dicts, so the loop carry keeps one pytree structure."""
  return flax.core.unfreeze(cache)


def brevity_penalty(alpha: float, length) -> jnp.ndarray:
  """t5x/GNMT length normalisation ((5 + length) / 6) ** alpha.

  `length` counts every generated token including the EOS.
  """
  return jnp.power((5.0 + length) / 6.0, alpha)


def _gather_beams(x: jnp.ndarray, beam_indices: jnp.ndarray) -> jnp.ndarray:
  """x [batch, beams, ...] gathered at [batch, new_beams] beam indices."""
  return x[jnp.arange(x.shape[0])[:, None], beam_indices]


def _top_k_ascending(x: jnp.ndarray, k: int) -> jnp.ndarray:
  """Indices of the k largest entries per row, ordered worst to best.

  lax.top_k puts the lower index first among ties; the flip then puts it last,
  exactly as t5x does.
  """
  return jnp.flip(lax.top_k(x, k)[1], axis=1)


# ------------------------------------------------------------------------------
# Temperature sampling (greedy at temperature 0)
# ------------------------------------------------------------------------------


def _topk_mask(logits: jnp.ndarray, k: int) -> jnp.ndarray:
  """Sets all but the top-k logits (ties with the k-th included) to NEG_INF."""
  k = min(k, logits.shape[-1])
  cutoff = lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= cutoff, logits, jnp.full_like(logits, NEG_INF))


def _topp_mask(logits: jnp.ndarray, p: float) -> jnp.ndarray:
  """Keeps the smallest set of most likely tokens whose mass reaches p.

  Tokens tied with the least likely kept one are kept too (t5x's rule; t5x
  finds the threshold by a bit-level binary search, we by sorting).
  """
  probs = jax.nn.softmax(logits, axis=-1)
  sorted_probs = jnp.flip(jnp.sort(probs, axis=-1), axis=-1)
  mass = jnp.cumsum(sorted_probs, axis=-1)
  n_keep = jnp.minimum(
    jnp.sum(mass < p, axis=-1, keepdims=True) + 1, logits.shape[-1]
  )
  threshold = jnp.take_along_axis(sorted_probs, n_keep - 1, axis=-1)
  return jnp.where(probs >= threshold, logits, jnp.full_like(logits, NEG_INF))


def _log_prob_of(logits: jnp.ndarray, tokens: jnp.ndarray) -> jnp.ndarray:
  """log_softmax(logits)[row, tokens[row]] as float32."""
  log_probs = jax.nn.log_softmax(logits)
  return jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0].astype(
    jnp.float32
  )


class _SamplingState(NamedTuple):
  step: jnp.ndarray  # scalar: loop position i; token i+1 is written
  sequences: jnp.ndarray  # [rows, length + 1], BOS at 0
  cache: Cache
  cur_token: jnp.ndarray  # [rows, 1]
  ended: jnp.ndarray  # [rows] bool
  rng: jax.Array
  log_prob: jnp.ndarray  # [rows] float32


def temperature_sample(
  inputs: jnp.ndarray,
  cache: Cache,
  tokens_to_logits: TokensToLogits,
  eos_id: int,
  decode_rng: jax.Array | None = None,
  num_decodes: int = 1,
  temperature: float = 1.0,
  topk: int = 1,
  topp: float = 0.0,
  max_decode_steps: int | None = None,
  rescale_log_probs: bool = True,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Samples `num_decodes` continuations per example, as t5x does.

  temperature <= MIN_TEMPERATURE is greedy (argmax of the raw logits, whatever
  topk/topp say). Otherwise logits / temperature are masked to the top-k
  (topk > 0) or to the top-p nucleus (topp > 0; at most one of the two) and
  sampled. Each step splits the key into (this step's key, next state's key).

  The log probability of a decode sums the generated tokens up to and
  including EOS (prompt tokens excluded), taken from the temperature-scaled,
  masked distribution if `rescale_log_probs` (so greedy gives 0) and from the
  model's own distribution otherwise.

  `max_decode_steps` caps the generated tokens after the prompt's non-zero
  tokens. Decoding stops once every row has ended.

  Returns decodes [batch, num_decodes, length] and their log probabilities
  [batch, num_decodes], sorted by increasing log probability.
  """
  if topk and topp:
    raise ValueError('At most one of `topk` and `topp` may be non-zero.')
  batch_size, length = inputs.shape
  if isinstance(max_decode_steps, int) and max_decode_steps > length:
    raise ValueError('Cannot decode more steps than the sequence length.')
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)

  inputs = flat_batch_beam_expand(inputs, num_decodes)
  cache = _as_dict(
    cache_map(lambda x: flat_batch_beam_expand(x, num_decodes), cache)
  )
  rows = batch_size * num_decodes

  # Row r ends after writing position `last[r]` (1-based output position).
  if max_decode_steps is None:
    last = jnp.full((rows,), length)
  else:
    last = jnp.minimum(length, jnp.sum(inputs != 0, axis=1) + max_decode_steps)

  temperature = jnp.asarray(temperature)

  def sample(
    logits: jnp.ndarray, rng: jax.Array
  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    scaled = logits / jnp.maximum(temperature, MIN_TEMPERATURE)
    if topk:
      scaled = _topk_mask(scaled, topk)
    if topp:
      scaled = _topp_mask(scaled, topp)
    token = jax.random.categorical(rng, scaled).astype(jnp.int32)
    return token, _log_prob_of(scaled if rescale_log_probs else logits, token)

  def greedy(
    logits: jnp.ndarray, rng: jax.Array
  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    del rng
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if rescale_log_probs:
      return token, jnp.zeros(token.shape, jnp.float32)
    return token, _log_prob_of(logits, token)

  def cond_fn(state: _SamplingState) -> jnp.ndarray:
    return ~jnp.all(state.ended)

  def body_fn(state: _SamplingState) -> _SamplingState:
    i = state.step
    step_rng, next_rng = jax.random.split(state.rng)
    logits, new_cache = tokens_to_logits(
      DecodingState(
        cur_index=jnp.full((rows,), i),
        sequences=state.sequences[:, :-1],
        cur_token=state.cur_token,
        cache=state.cache,
      )
    )
    token, token_log_prob = lax.cond(
      temperature > MIN_TEMPERATURE, sample, greedy, logits, step_rng
    )

    # Prompt tokens are forced and do not count towards the log probability.
    prompt_token = state.sequences[:, i + 1]
    generated = prompt_token == 0
    token = jnp.where(generated, token, prompt_token)
    log_prob = state.log_prob + jnp.where(
      generated & ~state.ended, token_log_prob, 0.0
    )
    token = jnp.where(state.ended, 0, token)
    ended = state.ended | (generated & (token == eos_id)) | (i >= last - 1)
    return _SamplingState(
      step=i + 1,
      sequences=state.sequences.at[:, i + 1].set(token),
      cache=_as_dict(new_cache),
      cur_token=token[:, None],
      ended=ended,
      rng=next_rng,
      log_prob=log_prob,
    )

  # Position i + 1 is written at step i; the extra column makes room for the
  # last step (i = length - 1) and gives it an empty prompt token to read.
  init = _SamplingState(
    step=jnp.array(0),
    sequences=jnp.pad(inputs, ((0, 0), (0, 1))),
    cache=cache,
    cur_token=jnp.zeros((rows, 1), jnp.int32),
    ended=jnp.zeros((rows,), jnp.bool_),
    rng=decode_rng,
    log_prob=jnp.zeros((rows,), jnp.float32),
  )
  final = lax.while_loop(cond_fn, body_fn, init)

  decodes = final.sequences[:, 1:].reshape(batch_size, num_decodes, length)
  log_probs = final.log_prob.reshape(batch_size, num_decodes)
  order = jnp.argsort(log_probs, axis=-1)
  return (
    jnp.take_along_axis(decodes, order[:, :, None], axis=1),
    jnp.take_along_axis(log_probs, order, axis=1),
  )


# ------------------------------------------------------------------------------
# Beam search
# ------------------------------------------------------------------------------


class _BeamState(NamedTuple):
  cur_index: jnp.ndarray  # scalar: position of the token fed this step
  live_logprobs: jnp.ndarray  # [batch, beams], ascending
  finished_scores: jnp.ndarray  # [batch, beams], ascending
  live_seqs: jnp.ndarray  # [batch, beams, length + 1], BOS at 0
  finished_seqs: jnp.ndarray  # [batch, beams, length + 1]
  finished_flags: (
    jnp.ndarray
  )  # [batch, beams]: slot holds a real finished sequence
  cache: Cache  # rows = batch * beams


def beam_search(
  inputs: jnp.ndarray,
  cache: Cache,
  tokens_to_logits: TokensToLogits,
  eos_id: int,
  num_decodes: int = 4,
  alpha: float = 0.6,
  max_decode_len: int | None = None,
  decode_rng: jax.Array | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """t5x's beam search with brevity penalty.

  Each step extends the live beams, keeps the 2k most likely candidates (so k
  non-finished ones remain even if k of them end), moves those ending in EOS
  into the finished set scored log_prob / brevity_penalty(length incl. EOS),
  and keeps the k most likely non-finished candidates alive. It stops at
  `max_decode_len` (default: inputs.shape[1]) or once, for every example, all
  k finished scores beat the best live log prob divided by the penalty at
  `max_decode_len + 1` (t5x's bound). Examples with nothing finished return
  their live beams and raw log probs. As in t5x, one live beam starts with
  log prob 0 and the other k-1 with NEG_INF.

  Prompt tokens (non-zero `inputs` after position 0) are forced; each forced
  step resets the running log prob to 0 for the best beam (NEG_INF for the
  rest), so scores count only the tokens after the prompt.

  `decode_rng` is unused (beam search is deterministic); it is accepted for a
  decode-function interface shared with `temperature_sample`.

  Returns decodes [batch, k, max_decode_len] and scores [batch, k], sorted by
  increasing score (best last).
  """
  del decode_rng
  beams = num_decodes
  batch_size = inputs.shape[0]
  if max_decode_len is None:
    max_decode_len = inputs.shape[1]
  length = max_decode_len + 1  # sequences carry the BOS at position 0
  # The prompt aligned with the sequences; positions past `inputs` are free.
  n = min(inputs.shape[1], length)
  prompt = (
    jnp.zeros((batch_size, length), jnp.int32).at[:, :n].set(inputs[:, :n])
  )

  def cond_fn(state: _BeamState) -> jnp.ndarray:
    not_at_end = state.cur_index < max_decode_len
    best_live_scores = state.live_logprobs[:, -1:] / brevity_penalty(
      alpha, length
    )
    worst_finished_scores = jnp.where(
      state.finished_flags,
      jnp.min(state.finished_scores, axis=1, keepdims=True),
      NEG_INF,
    )
    search_terminated = jnp.all(worst_finished_scores > best_live_scores)
    return not_at_end & ~search_terminated

  def body_fn(state: _BeamState) -> _BeamState:
    i = state.cur_index
    flat_logits, new_cache = tokens_to_logits(
      DecodingState(
        cur_index=i,
        sequences=state.live_seqs.reshape(batch_size * beams, length),
        cur_token=state.live_seqs[:, :, i].reshape(batch_size * beams, 1),
        cache=state.cache,
      )
    )
    vocab_size = flat_logits.shape[-1]
    log_probs = jax.nn.log_softmax(
      flat_logits.reshape(batch_size, beams, vocab_size)
    )
    log_probs = log_probs + state.live_logprobs[:, :, None]

    # The 2k best extensions over all beams, best first.
    cand_log_probs, cand_indices = lax.top_k(
      log_probs.reshape(batch_size, beams * vocab_size), 2 * beams
    )
    cand_beams = cand_indices // vocab_size
    cand_tokens = cand_indices % vocab_size

    prompt_token = prompt[:, i + 1][:, None]
    in_prompt = prompt_token != 0
    forced_log_probs = jnp.full_like(cand_log_probs, NEG_INF).at[:, 0].set(0.0)
    cand_log_probs = jnp.where(in_prompt, forced_log_probs, cand_log_probs)
    cand_tokens = jnp.where(in_prompt, prompt_token, cand_tokens)

    cand_seqs = (
      _gather_beams(state.live_seqs, cand_beams)
      .at[:, :, i + 1]
      .set(cand_tokens)
    )
    newly_finished = cand_tokens == eos_id

    # Live set: the k best candidates that did not just end.
    cand_live_log_probs = cand_log_probs + newly_finished * NEG_INF
    live = _top_k_ascending(cand_live_log_probs, beams)
    live_beams = _gather_beams(cand_beams, live)
    rows = (jnp.arange(batch_size)[:, None] * beams + live_beams).reshape(-1)

    # Finished set: the k best of the old finished and the newly ended.
    new_scores = cand_log_probs / brevity_penalty(alpha, i + 1)
    new_scores += (~newly_finished) * NEG_INF
    all_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    all_seqs = jnp.concatenate([state.finished_seqs, cand_seqs], axis=1)
    all_flags = jnp.concatenate([state.finished_flags, newly_finished], axis=1)
    finished = _top_k_ascending(all_scores, beams)

    return _BeamState(
      cur_index=i + 1,
      live_logprobs=_gather_beams(cand_live_log_probs, live),
      finished_scores=_gather_beams(all_scores, finished),
      live_seqs=_gather_beams(cand_seqs, live),
      finished_seqs=_gather_beams(all_seqs, finished),
      finished_flags=_gather_beams(all_flags, finished),
      cache=_as_dict(cache_map(lambda x: x[rows], new_cache)),
    )

  init = _BeamState(
    cur_index=jnp.array(0),
    live_logprobs=jnp.full((batch_size, beams), NEG_INF, jnp.float32)
    .at[:, 0]
    .set(0.0),
    finished_scores=jnp.full((batch_size, beams), NEG_INF, jnp.float32),
    live_seqs=jnp.zeros((batch_size, beams, length), jnp.int32),
    finished_seqs=jnp.zeros((batch_size, beams, length), jnp.int32),
    finished_flags=jnp.zeros((batch_size, beams), jnp.bool_),
    cache=_as_dict(
      cache_map(lambda x: flat_batch_beam_expand(x, beams), cache)
    ),
  )
  final = lax.while_loop(cond_fn, body_fn, init)

  any_finished = jnp.any(final.finished_flags, axis=1)
  seqs = jnp.where(
    any_finished[:, None, None], final.finished_seqs, final.live_seqs
  )
  scores = jnp.where(
    any_finished[:, None], final.finished_scores, final.live_logprobs
  )
  return seqs[:, :, 1:], scores
