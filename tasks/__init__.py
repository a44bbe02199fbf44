"""seqio tasks for distilling step-by-step; importing this registers them.

Modules: `parsing` (input formats, teacher-completion parsers), `arithmetic`
(safe svamp evaluator), `sources` (files and splits), `synthetic` (a generated
dataset), `preprocessors` (paired examples), `metrics`, `registry`
(`dsbs_task` and the named tasks), `span_corruption` (T5's pretraining
objective) and `pretraining` (its Tasks of unlabeled text, `pretrain_task`).
Annotation with a teacher LLM (`dsbs-annotate`): `annotate` (the binary),
`prompting` (templates and shots), `teachers` (the OpenAI-compatible and
HuggingFace teachers), `annotation_io` (inputs, the resumable journal,
outputs) and `fake_teacher` (a loopback server for tests and the benchmark).

The folder `tasks/` installs as the package `dsbs_tasks`: a top-level
`tasks` would clash with other installs of that generic name. It sits on top
of the framework: it imports `dsbs_jax` (the task ids, prefixes and feature
converter of `dsbs_jax.two_tasks`), and `dsbs_jax` never imports it.
"""

from dsbs_tasks.pretraining import pretrain_task
from dsbs_tasks.registry import NAMED_TASKS
from dsbs_tasks.registry import dsbs_task
from dsbs_tasks.registry import t5_vocabulary

__all__ = [
  'NAMED_TASKS',
  'dsbs_task',
  'pretrain_task',
  't5_vocabulary',
]
