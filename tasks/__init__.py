"""seqio tasks for distilling step-by-step; importing this registers them.

Modules: `parsing` (input formats, teacher-completion parsers), `arithmetic`
(safe svamp evaluator), `sources` (files and splits), `synthetic` (a generated
dataset), `preprocessors` (paired examples), `feature_converters` (per-token
task ids), `metrics`, `registry` (`dsbs_task` and the named tasks).
"""

from tasks.feature_converters import DistillStepByStepFeatureConverter
from tasks.registry import NAMED_TASKS
from tasks.registry import dsbs_task
from tasks.registry import t5_vocabulary

__all__ = [
  'DistillStepByStepFeatureConverter',
  'NAMED_TASKS',
  'dsbs_task',
  't5_vocabulary',
]
