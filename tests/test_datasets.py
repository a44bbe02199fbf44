"""Every registered dataset has every fact, and an unknown name is an error."""

import importlib.resources

import pytest

from dsbs_jax import gin_utils
from dsbs_tasks import datasets
from dsbs_tasks import preprocessors
from dsbs_tasks import prompting
from dsbs_tasks.examples import Example

# A label each dataset's metric must score right against itself.
LABELS = {'svamp': '( 84.0 / 2.0 )'}
INPUTS = {'cqa': 'Where?\nAnswer Choices:\n(a) x\n(b) home\n(c) y'}


@pytest.mark.parametrize('name', sorted(datasets.DATASETS))
def test_every_dataset_has_every_fact(name):
  spec = datasets.get(name)
  assert spec.name == name
  assert spec.source in (datasets.RELEASE, datasets.GENERATED, datasets.JSONL)
  assert spec.named_vocabulary in (
    datasets.T5_VOCABULARY,
    datasets.BYTE_VOCABULARY,
  )
  label = LABELS.get(name, 'home')
  assert spec.metric([label], [label]) == {'accuracy': 1.0}
  assert spec.metric([label], ['nothing']) == {'accuracy': 0.0}
  # The single-task target gives its label back to the dataset's parser.
  target = spec.single_task_target(INPUTS.get(name, 'x'), 'Because.', label)
  assert target.startswith('Because.')
  assert spec.parse_single_task(target).label == label

  release = spec.source == datasets.RELEASE
  assert (spec.format_record is not None) == release
  assert (spec.parse_completion is not None) == release
  assert spec.builtin_prompt == release
  if spec.builtin_prompt:
    prompts = importlib.resources.files('dsbs_tasks') / 'prompts'
    assert (prompts / f'{name}.txt').is_file()
    assert (prompts / f'{name}_shots.jsonl').is_file()
    assert name in prompting.BUILTIN_PROMPTS
    assert prompting.PARSERS[name] is spec.parse_completion
  assert (spec.generate is not None) == (spec.source == datasets.GENERATED)
  if spec.source != datasets.JSONL:
    # Its lengths and batch (README's table of gin files).
    assert (gin_utils.project_gin_dir() / 'data' / f'{name}.gin').is_file()


@pytest.mark.parametrize('name', datasets.names(datasets.GENERATED))
def test_generated_datasets_make_every_split(name):
  splits = datasets.get(name).generate()
  assert set(splits) == {'train', 'validation', 'test'}
  for examples in splits.values():
    assert examples and all(isinstance(e, Example) for e in examples)


def test_an_unknown_dataset_is_an_error_not_a_default():
  with pytest.raises(ValueError, match="unknown dataset 'nope'.*cqa, svamp"):
    datasets.get('nope')
  with pytest.raises(ValueError, match="unknown release dataset 'synthetic'"):
    datasets.get('synthetic', datasets.RELEASE)
  # The single-task baseline does not fall back to a generic parser.
  with pytest.raises(ValueError, match="unknown dataset 'nope'"):
    preprocessors.single_task_postprocess('So the answer is 7.', dataset='nope')
