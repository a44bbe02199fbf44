"""A small arithmetic evaluator for svamp equations, safe on model output.

The reference scored svamp with Python's `eval` on generated text; we never
execute model output. The grammar is exactly

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := "-" factor | number | "(" expression ")"
    number     := digits ["." digits] | "." digits

Anything else (names, calls, attributes, `**`, exponents such as `1e9`,
strings) is rejected by the tokenizer or the parser before anything is
computed. Inputs longer than MAX_LENGTH characters or nested deeper than
MAX_DEPTH are rejected, so no input can exhaust time, memory or the stack; a
result that is not finite, or a division by zero, is an error too.
"""

from __future__ import annotations

import math
import re

MAX_LENGTH = 1000
MAX_DEPTH = 100

_TOKEN = re.compile(r'\s*(?:([0-9]+(?:\.[0-9]+)?|\.[0-9]+)|([-+*/()]))')

_NOT_A_FACTOR = frozenset('+*/)')


class ExpressionError(ValueError):
  """The text is not an expression of our grammar, or has no value."""


def _tokenize(text: str) -> list[str]:
  tokens = []
  position = 0
  end = len(text.rstrip())
  while position < end:
    match = _TOKEN.match(text, position)
    if match is None:
      raise ExpressionError(
        f'unexpected {text[position:].lstrip()[:10]!r} at offset {position}'
      )
    tokens.append(match.group(1) or match.group(2))
    position = match.end()
  return tokens


class _Parser:
  """Recursive descent over the token list, computing values as it goes."""

  def __init__(self, tokens: list[str]):
    self.tokens = tokens
    self.position = 0
    self.depth = 0

  def peek(self) -> str | None:
    if self.position == len(self.tokens):
      return None
    return self.tokens[self.position]

  def take(self) -> str:
    token = self.peek()
    if token is None:
      raise ExpressionError('unexpected end of expression')
    self.position += 1
    return token

  def expression(self) -> float:
    value = self.term()
    while self.peek() in ('+', '-'):
      if self.take() == '+':
        value += self.term()
      else:
        value -= self.term()
    return value

  def term(self) -> float:
    value = self.factor()
    while self.peek() in ('*', '/'):
      if self.take() == '*':
        value *= self.factor()
      else:
        divisor = self.factor()
        if divisor == 0:
          raise ExpressionError('division by zero')
        value /= divisor
    return value

  def factor(self) -> float:
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise ExpressionError(f'nested deeper than {MAX_DEPTH}')
    token = self.take()
    if token == '-':
      value = -self.factor()
    elif token == '(':
      value = self.expression()
      if self.take() != ')':
        raise ExpressionError("expected ')'")
    elif token in _NOT_A_FACTOR:
      raise ExpressionError(f'unexpected {token!r}')
    else:
      value = float(token)
    self.depth -= 1
    return value


def evaluate(text: str) -> float:
  """The value of `text`; raises ExpressionError if it is not in the grammar."""
  if len(text) > MAX_LENGTH:
    raise ExpressionError(f'longer than {MAX_LENGTH} characters')
  parser = _Parser(_tokenize(text))
  value = parser.expression()
  if parser.peek() is not None:
    raise ExpressionError(f'unexpected {parser.peek()!r} after the expression')
  if not math.isfinite(value):
    raise ExpressionError('the value is not finite')
  return value


def value_or_none(text: str) -> float | None:
  """The value of `text`, or None when it has none (used for scoring)."""
  try:
    return evaluate(text)
  except ExpressionError:
    return None
