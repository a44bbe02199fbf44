"""The source example every dataset's reader and generator makes."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Example:
  """One source example; teacher parts are None when absent or unparsed."""

  input: str
  label: str
  rationale: str | None = None
  teacher_label: str | None = None
