"""Decoding algorithms against plain numpy/python references on a toy model.

The toy `tokens_to_logits` looks up next-token logits in a fixed random table
indexed by (position, token before the current one, current token), plus a
per-example bias. The older token is read back from the cache and the bias is a
cache leaf with the batch leading, so wrong beam expansion or reordering of the
cache changes the decodes. A debug callback counts the decoder calls.
"""

import itertools

import flax
import jax
import jax.numpy as jnp
import numerics
import numpy as np
import pytest

from dsbs_jax import decoding

EOS = 1

# Jitted as a model's predict step would be; the toy model's bound method is a
# static argument, so repeated calls on one model reuse the compilation.
temperature_sample = jax.jit(
  decoding.temperature_sample,
  static_argnames=(
    'tokens_to_logits',
    'eos_id',
    'num_decodes',
    'temperature',
    'topk',
    'topp',
    'max_decode_steps',
    'rescale_log_probs',
  ),
)
beam_search = jax.jit(
  decoding.beam_search,
  static_argnames=(
    'tokens_to_logits',
    'eos_id',
    'num_decodes',
    'alpha',
    'max_decode_len',
  ),
)


class ToyModel:
  """logits = table[position, previous, current] + bias[example]."""

  def __init__(self, table: np.ndarray, bias: np.ndarray):
    self.table = table  # [length, vocab, vocab, vocab]
    self.bias = bias  # [batch, vocab]
    self.calls = 0

  def init_cache(self, frozen: bool = False):
    batch, length = self.bias.shape[0], self.table.shape[0]
    cache = {
      'decoder': {
        'layers_0': {
          'self_attention': {
            'cached_key': jnp.zeros((batch, length + 1), jnp.int32),
            'cached_value': jnp.asarray(self.bias),
            'cache_index': jnp.array(0, jnp.int32),
          }
        }
      }
    }
    return flax.core.freeze(cache) if frozen else cache

  def _count(self):
    self.calls += 1

  def tokens_to_logits(self, state: decoding.DecodingState):
    layer = state.cache['decoder']['layers_0']['self_attention']
    index, history, bias = (
      layer['cache_index'],
      layer['cached_key'],
      layer['cached_value'],
    )
    rows = state.cur_token.shape[0]
    assert index.ndim == 0, 'cache_index must stay a scalar'
    assert history.shape[0] == rows and bias.shape[0] == rows
    jax.debug.callback(self._count)
    token = state.cur_token[:, 0]
    logits = jnp.asarray(self.table)[index, history[:, index], token] + bias
    new_layer = {
      'cached_key': history.at[:, index + 1].set(token),
      'cached_value': bias,
      'cache_index': index + 1,
    }
    return logits, {'decoder': {'layers_0': {'self_attention': new_layer}}}

  # --- numpy references -----------------------------------------------------

  def logits(self, example: int, outputs: list[int]) -> np.ndarray:
    """Next-token logits after generating `outputs` (BOS 0 implied in front)."""
    full = [0] + list(outputs)
    t = len(outputs)
    previous = full[t - 1] if t >= 1 else 0
    return (
      self.table[t, previous, full[t]].astype(np.float64) + self.bias[example]
    )

  def log_probs(self, example: int, outputs: list[int]) -> np.ndarray:
    return log_softmax(self.logits(example, outputs))


def log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def penalty(alpha: float, length: int) -> float:
  return ((5.0 + length) / 6.0) ** alpha


def make_model(
  seed: int,
  batch: int,
  length: int,
  vocab: int,
  eos_boost: float = 0.0,
  peak: float = 0.0,
):
  """A random toy model.

  `peak` adds a dominant token per context, EOS at the last position.
  """
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(length, vocab, vocab, vocab))
  table[..., EOS] += eos_boost
  if peak:
    dominant = rng.integers(0, vocab, size=table.shape[:-1])
    dominant[rng.random(dominant.shape) < 0.2] = EOS
    dominant[-1] = EOS
    np.put_along_axis(table, dominant[..., None], peak, axis=-1)
  bias = 0.5 * rng.normal(size=(batch, vocab))
  return ToyModel(table.astype(np.float32), bias.astype(np.float32))


def pad(tokens: list[int], length: int) -> list[int]:
  return list(tokens) + [0] * (length - len(tokens))


def ref_greedy(
  model: ToyModel, example: int, prompt: list[int], max_steps: int | None = None
):
  """Step-by-step argmax with forced prompt tokens.

  Returns (tokens, log prob of the generated ones).
  """
  length = len(prompt)
  last = (
    length
    if max_steps is None
    else min(length, int(np.count_nonzero(prompt)) + max_steps)
  )
  out, log_prob = [], 0.0
  for t in range(last):
    forced = prompt[t + 1] if t + 1 < length else 0
    if forced:
      out.append(forced)
      continue
    log_probs = model.log_probs(example, out)
    token = int(np.argmax(log_probs))
    out.append(token)
    log_prob += log_probs[token]
    if token == EOS:
      break
  return pad(out, length), log_prob


def sequence_log_prob(
  model: ToyModel, example: int, tokens: list[int], start: int = 0
) -> float:
  """Sum of log probs of tokens[start:] up to and including the first EOS."""
  total = 0.0
  for t in range(start, len(tokens)):
    total += model.log_probs(example, tokens[:t])[tokens[t]]
    if tokens[t] == EOS:
      break
  return total


def ref_exhaustive_beams(
  model: ToyModel,
  example: int,
  length: int,
  beams: int,
  alpha: float,
  prefix=(),
):
  """The `beams` best finished sequences under t5x's score, worst first.

  score = log p(tokens after the prefix, EOS included)
          / penalty(total length incl. EOS).
  """
  vocab = model.table.shape[-1]
  others = [v for v in range(vocab) if v != EOS]
  candidates = []
  for n in range(1, length - len(prefix) + 1):
    for body in itertools.product(others, repeat=n - 1):
      tokens = list(prefix) + list(body) + [EOS]
      score = sequence_log_prob(
        model, example, tokens, start=len(prefix)
      ) / penalty(alpha, len(tokens))
      candidates.append((score, pad(tokens, length)))
  candidates.sort(key=lambda c: c[0])
  best = candidates[-beams:]
  return np.array([c[1] for c in best]), np.array([c[0] for c in best])


def first_eos_zero_padded(tokens: np.ndarray) -> bool:
  """After the first EOS, every token is 0."""
  hits = np.flatnonzero(tokens == EOS)
  return hits.size == 0 or not tokens[hits[0] + 1 :].any()


# ------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------


def test_expand_repeats_rows_and_keeps_cache_index():
  x = jnp.arange(6).reshape(2, 3)
  np.testing.assert_array_equal(
    decoding.flat_batch_beam_expand(x, 2),
    [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]],
  )
  cache = ToyModel(
    np.zeros((3, 4, 4, 4), np.float32), np.zeros((2, 4), np.float32)
  ).init_cache(frozen=True)
  expanded = decoding.cache_map(
    lambda a: decoding.flat_batch_beam_expand(a, 3), cache
  )
  layer = expanded['decoder']['layers_0']['self_attention']
  assert layer['cached_key'].shape == (6, 4)
  assert layer['cached_value'].shape == (6, 4)
  assert layer['cache_index'].shape == ()


def test_brevity_penalty_formula():
  np.testing.assert_allclose(
    decoding.brevity_penalty(0.6, 7), (12 / 6) ** 0.6, rtol=1e-6
  )
  np.testing.assert_allclose(decoding.brevity_penalty(0.0, 7), 1.0)


# ------------------------------------------------------------------------------
# Greedy and sampling
# ------------------------------------------------------------------------------


def test_greedy_equals_stepwise_argmax():
  batch, length, vocab = 4, 6, 7
  model = make_model(0, batch, length, vocab, eos_boost=1.5)
  inputs = jnp.zeros((batch, length), jnp.int32)
  decodes, log_probs = temperature_sample(
    inputs,
    model.init_cache(),
    model.tokens_to_logits,
    EOS,
    temperature=0.0,
    rescale_log_probs=False,
  )
  assert decodes.shape == (batch, 1, length) and log_probs.shape == (batch, 1)
  expected = [ref_greedy(model, b, [0] * length) for b in range(batch)]
  np.testing.assert_array_equal(decodes[:, 0], [e[0] for e in expected])
  numerics.assert_close(log_probs[:, 0], [e[1] for e in expected])
  # Not vacuous: some row stops early, and stopped rows are zero-padded.
  assert any(EOS in e[0][:-1] for e in expected)
  assert all(first_eos_zero_padded(d) for d in np.asarray(decodes[:, 0]))

  # With rescaled log probs, greedy decodes have log prob 0.
  _, rescaled = temperature_sample(
    inputs, model.init_cache(), model.tokens_to_logits, EOS, temperature=0.0
  )
  np.testing.assert_array_equal(rescaled, 0.0)


def test_greedy_forces_prompt_and_respects_max_decode_steps():
  batch, length, vocab = 3, 7, 6
  model = make_model(1, batch, length, vocab)
  prompts = [
    [0, 4, 0, 0, 0, 0, 0],
    [0, 3, 5, 2, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
  ]
  for max_steps in (None, 2):
    decodes, log_probs = temperature_sample(
      jnp.array(prompts),
      model.init_cache(),
      model.tokens_to_logits,
      EOS,
      temperature=0.0,
      max_decode_steps=max_steps,
      rescale_log_probs=False,
    )
    expected = [
      ref_greedy(model, b, prompts[b], max_steps) for b in range(batch)
    ]
    np.testing.assert_array_equal(decodes[:, 0], [e[0] for e in expected])
    numerics.assert_close(log_probs[:, 0], [e[1] for e in expected])
  # Prompt tokens are kept; max_decode_steps=2 leaves at most 2 generated.
  np.testing.assert_array_equal(decodes[1, 0, :3], [3, 5, 2])
  assert (
    not np.asarray(decodes[1, 0, 5:]).any()
    and not np.asarray(decodes[0, 0, 3:]).any()
  )


def test_sampling_stops_when_all_rows_end():
  batch, length, vocab = 2, 8, 5
  model = make_model(2, batch, length, vocab)
  model.table[:2, ..., EOS] -= (
    50.0  # every decode ends exactly at the third token
  )
  model.table[2, ..., EOS] += 50.0
  decodes, _ = temperature_sample(
    jnp.zeros((batch, length), jnp.int32),
    model.init_cache(frozen=True),
    model.tokens_to_logits,
    EOS,
    num_decodes=3,
    temperature=1.0,
    topk=0,
  )
  assert model.calls == 3
  np.testing.assert_array_equal(decodes[:, :, 2], EOS)
  np.testing.assert_array_equal(decodes[:, :, 3:], 0)


def test_topk1_sampling_equals_greedy():
  batch, length, vocab = 3, 6, 7
  model = make_model(3, batch, length, vocab, eos_boost=1.0)
  inputs = jnp.zeros((batch, length), jnp.int32)
  greedy, _ = temperature_sample(
    inputs, model.init_cache(), model.tokens_to_logits, EOS, temperature=0.0
  )
  sampled, log_probs = temperature_sample(
    inputs,
    model.init_cache(),
    model.tokens_to_logits,
    EOS,
    decode_rng=jax.random.PRNGKey(7),
    num_decodes=2,
    temperature=1.3,
    topk=1,
  )
  np.testing.assert_array_equal(
    sampled, np.repeat(np.asarray(greedy), 2, axis=1)
  )
  np.testing.assert_array_equal(log_probs, 0.0)


def _mask_topk(logits: np.ndarray, k: int) -> np.ndarray:
  cutoff = np.sort(logits)[-k]
  return np.where(logits >= cutoff, logits, -1e7)


def _mask_topp(logits: np.ndarray, p: float) -> np.ndarray:
  probs = np.exp(log_softmax(logits))
  order = np.argsort(-probs)
  n_keep = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1
  keep = np.zeros(logits.shape, bool)
  keep[order[:n_keep]] = True
  return np.where(keep, logits, -1e7)


@pytest.mark.parametrize('mask', ['topk', 'topp'])
def test_sampling_is_deterministic_and_stays_in_the_mask(mask):
  batch, length, vocab, num_decodes, temperature = 2, 6, 8, 5, 0.8
  model = make_model(4, batch, length, vocab, eos_boost=0.5)
  kwargs = {'topk': 3} if mask == 'topk' else {'topk': 0, 'topp': 0.6}
  mask_fn = (
    (lambda x: _mask_topk(x, 3))
    if mask == 'topk'
    else (lambda x: _mask_topp(x, 0.6))
  )

  def run(seed, rescale=True):
    return temperature_sample(
      jnp.zeros((batch, length), jnp.int32),
      model.init_cache(),
      model.tokens_to_logits,
      EOS,
      decode_rng=jax.random.PRNGKey(seed),
      num_decodes=num_decodes,
      temperature=temperature,
      rescale_log_probs=rescale,
      **kwargs,
    )

  decodes, log_probs = run(0)
  again, again_log_probs = run(0)
  np.testing.assert_array_equal(decodes, again)
  np.testing.assert_array_equal(log_probs, again_log_probs)
  assert not np.array_equal(decodes, run(1)[0])
  assert np.all(np.diff(np.asarray(log_probs), axis=1) >= 0)  # sorted ascending

  # Without rescaling the same samples come back (ordered by raw log probs).
  raw_decodes, raw_log_probs = run(0, rescale=False)
  raw_by_decode = [
    {
      tuple(d): lp
      for d, lp in zip(np.asarray(raw_decodes[b]), np.asarray(raw_log_probs[b]))
    }
    for b in range(batch)
  ]
  for b in range(batch):
    assert sorted(map(tuple, np.asarray(raw_decodes[b]))) == sorted(
      map(tuple, np.asarray(decodes[b]))
    )
  decodes, log_probs = np.asarray(decodes), np.asarray(log_probs)
  for b in range(batch):
    for d in range(num_decodes):
      tokens = list(decodes[b, d])
      assert first_eos_zero_padded(decodes[b, d])
      rescaled, raw = 0.0, 0.0
      for t in range(length):
        logits = model.logits(b, tokens[:t])
        masked = mask_fn(logits / temperature)
        assert masked[tokens[t]] > -1e6, 'sampled a token outside the mask'
        rescaled += log_softmax(masked)[tokens[t]]
        raw += log_softmax(logits)[tokens[t]]
        if tokens[t] == EOS:
          break
      numerics.assert_close(log_probs[b, d], rescaled)
      numerics.assert_close(raw_by_decode[b][tuple(tokens)], raw)


def test_topk_and_topp_together_are_rejected():
  model = make_model(5, 1, 4, 4)
  with pytest.raises(ValueError):
    temperature_sample(
      jnp.zeros((1, 4), jnp.int32),
      model.init_cache(),
      model.tokens_to_logits,
      EOS,
      topk=2,
      topp=0.5,
    )


# ------------------------------------------------------------------------------
# Beam search
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('prefix,beams,alpha', [((), 12, 0.6), ((2,), 6, 1.5)])
def test_beam_search_equals_exhaustive_search(prefix, beams, alpha):
  # Vocab {0, EOS, 2} and length 4: the beams are wide enough never to prune a
  # real candidate (2k >= 3 * live sequences), so beam search must find the
  # exact best finished sequences; there are more of them than beams.
  batch, length, vocab = 2, 4, 3
  model = make_model(6, batch, length, vocab)
  inputs = jnp.array([pad([0, *prefix], length)] * batch)
  decodes, scores = beam_search(
    inputs,
    model.init_cache(),
    model.tokens_to_logits,
    EOS,
    num_decodes=beams,
    alpha=alpha,
  )
  assert decodes.shape == (batch, beams, length) and scores.shape == (
    batch,
    beams,
  )
  for b in range(batch):
    expected_tokens, expected_scores = ref_exhaustive_beams(
      model, b, length, beams, alpha, prefix
    )
    np.testing.assert_array_equal(decodes[b], expected_tokens)
    numerics.assert_close(scores[b], expected_scores)


def test_beam_search_terminates_early_without_changing_the_result():
  batch, length, vocab, beams = 2, 8, 3, 2
  model = make_model(7, batch, length, vocab)
  model.table[..., EOS] += 20.0  # ending right away is by far the best
  decodes, scores = beam_search(
    jnp.zeros((batch, length), jnp.int32),
    model.init_cache(),
    model.tokens_to_logits,
    EOS,
    num_decodes=beams,
  )
  # After 2 steps the worst finished beam beats any live beam's best score.
  assert model.calls == 2
  for b in range(batch):
    expected_tokens, expected_scores = ref_exhaustive_beams(
      model, b, length, beams, 0.6
    )
    np.testing.assert_array_equal(decodes[b], expected_tokens)
    numerics.assert_close(scores[b], expected_scores)


def test_beam_search_with_one_beam_equals_greedy():
  batch, length, vocab = 4, 6, 6
  model = make_model(8, batch, length, vocab, peak=8.0)
  inputs = jnp.zeros((batch, length), jnp.int32)
  greedy, greedy_log_probs = temperature_sample(
    inputs,
    model.init_cache(),
    model.tokens_to_logits,
    EOS,
    temperature=0.0,
    rescale_log_probs=False,
  )
  # A FrozenDict cache (as older flax returns) works as well as a plain dict.
  decodes, scores = beam_search(
    inputs,
    model.init_cache(frozen=True),
    model.tokens_to_logits,
    EOS,
    num_decodes=1,
  )
  np.testing.assert_array_equal(decodes, greedy)
  lengths = [
    int(np.flatnonzero(g == EOS)[0]) + 1 for g in np.asarray(greedy[:, 0])
  ]
  assert min(lengths) < length  # some decode ends before the last position
  expected = [
    greedy_log_probs[b, 0] / penalty(0.6, lengths[b]) for b in range(batch)
  ]
  numerics.assert_close(scores[:, 0], expected)


def test_beam_search_scores_match_their_sequences_when_pruning():
  batch, length, vocab, beams, alpha = 3, 6, 7, 3, 0.6
  model = make_model(9, batch, length, vocab, eos_boost=1.0)
  decodes, scores = beam_search(
    jnp.zeros((batch, length), jnp.int32),
    model.init_cache(),
    model.tokens_to_logits,
    EOS,
    num_decodes=beams,
    alpha=alpha,
  )
  decodes, scores = np.asarray(decodes), np.asarray(scores)
  assert np.all(np.diff(scores, axis=1) >= 0)  # best last
  for b in range(batch):
    assert len({tuple(d) for d in decodes[b]}) == beams
    for d in range(beams):
      tokens = list(decodes[b, d])
      assert EOS in tokens and first_eos_zero_padded(decodes[b, d])
      n = tokens.index(EOS) + 1
      expected = sequence_log_prob(model, b, tokens) / penalty(alpha, n)
      numerics.assert_close(scores[b, d], expected)


def test_beam_search_returns_live_beams_when_nothing_finishes():
  # Vocab {0, EOS, 2} and 8 beams: wide enough to keep every sequence alive.
  batch, length, vocab, beams = 2, 4, 3, 8
  model = make_model(10, batch, length, vocab)
  model.table[..., EOS] = -1e9  # EOS is never reachable
  decodes, scores = beam_search(
    jnp.zeros((batch, length), jnp.int32),
    model.init_cache(),
    model.tokens_to_logits,
    EOS,
    num_decodes=beams,
  )
  decodes, scores = np.asarray(decodes), np.asarray(scores)
  assert not (decodes == EOS).any()
  for b in range(batch):
    # Exhaustive: the best unpenalised log probs over all full-length sequences.
    options = sorted(
      (sequence_log_prob(model, b, list(s)), list(s))
      for s in itertools.product(
        [v for v in range(vocab) if v != EOS], repeat=length
      )
    )[-beams:]
    np.testing.assert_array_equal(decodes[b], [o[1] for o in options])
    numerics.assert_close(scores[b], [o[0] for o in options])
