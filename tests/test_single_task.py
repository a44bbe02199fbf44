"""The single-task baseline: its targets, and the labels read back from
generated text (an unreadable generation counts wrong)."""

import pytest
import seqio

from dsbs_tasks import datasets
from dsbs_tasks import preprocessors
from dsbs_tasks import sources
from dsbs_tasks import synthetic
from dsbs_tasks.registry import dsbs_task

BYTES = seqio.ByteVocabulary()
CQA_INPUT = (
  'Where do you keep milk?\nAnswer Choices:\n(a) shelf\n(b) fridge\n'
  '(c) fridge door\n(d) oven\n(e) car'
)


@pytest.mark.parametrize(
  'dataset, input_text, label, target',
  [
    (
      'cqa',
      CQA_INPUT,
      'fridge',
      'Milk spoils. So the answer is (b) fridge.',
    ),
    # A teacher label that is no choice keeps the teacher's pattern.
    ('cqa', CQA_INPUT, 'cellar', 'Milk spoils. So the answer is (?) cellar.'),
    (
      'svamp',
      'Ann has 3 and gets 4.',
      '(3 + 4)',
      'Milk spoils. The answer is (3 + 4).',
    ),
    ('esnli', 'p </s> h', 'neutral', 'Milk spoils.\nAnswer: neutral'),
    (
      'anli1',
      'p </s> h',
      'entailment',
      'Milk spoils. So the answer is entailment.',
    ),
    ('synthetic', 'Tom has 3.', '7', 'Milk spoils. So the answer is 7.'),
    ('jsonl', 'x', 'yes', 'Milk spoils. So the answer is yes.'),
  ],
)
def test_targets_follow_the_teacher_pattern_and_parse_back(
  dataset, input_text, label, target
):
  spec = datasets.get(dataset)
  made = spec.single_task_target(input_text, 'Milk spoils.', label)
  assert made == target
  assert spec.parse_single_task(made).label == label


@pytest.mark.parametrize(
  'dataset, generation',
  [
    ('cqa', 'Milk spoils. The fridge.'),  # no answer sentence
    ('cqa', 'So the answer is fridge.'),  # no option marker
    ('cqa', 'So the answer is (b) a. So the answer is (c) b.'),  # twice
    ('svamp', 'The answer is 7.'),  # no parenthesised expression
    ('esnli', 'neutral'),
    ('anli1', 'It is neutral.'),
    ('synthetic', 'So the answer is .'),  # empty label
    ('synthetic', ''),
  ],
)
def test_generations_without_a_label_score_wrong(dataset, generation):
  assert datasets.get(dataset).parse_single_task(generation).label is None
  predicted = preprocessors.single_task_postprocess(
    generation, dataset=dataset, is_target=False
  )
  assert predicted == ''
  task = seqio.get_mixture_or_task(dsbs_task('svamp', 'single_task'))
  [metric] = task.metric_fns
  assert metric(['(3 + 4)'], [predicted]) == {'accuracy': 0.0}


@pytest.mark.parametrize(
  'dataset, file_split',
  [
    ('cqa', 'train'),
    ('svamp', 'train'),
    ('esnli', 'valid'),
    ('anli1', 'valid'),
  ],
)
def test_every_teacher_completion_round_trips(
  any_data_dir, dataset, file_split
):
  """On the release's own completions, the dataset's parser gives back the
  teacher's label from every single-task target made of its parts."""
  split = sources.load_release_split(dataset, file_split, any_data_dir)
  complete = [e for e in split.examples if e.rationale and e.teacher_label]
  assert complete
  for example in complete:
    spec = datasets.get(dataset)
    target = spec.single_task_target(
      example.input, example.rationale, example.teacher_label
    )
    assert spec.parse_single_task(target).label == example.teacher_label
    assert target.startswith(example.rationale)


def test_synthetic_single_task_examples_and_metric():
  name = dsbs_task('synthetic', 'single_task', vocabulary=BYTES)
  assert name == 'single_task_synthetic_byte'
  task = seqio.get_mixture_or_task(name)
  lengths = {'inputs': 64, 'targets': 64}
  train = list(
    task.get_dataset(lengths, split='train', shuffle=False).as_numpy_iterator()
  )
  source = synthetic.synthetic_splits()['train']
  assert len(train) == len(source)
  for example, teacher in zip(train, source):
    assert example['task'] == 1  # one task: the label task's id
    assert example['inputs_pretokenized'].decode() == '[label] ' + teacher.input
    assert example['targets_pretokenized'].decode() == (
      f'{teacher.rationale} So the answer is {teacher.teacher_label}.'
    )
  # Evaluation: ground-truth labels, scored on the label read back.
  test = list(
    task.get_dataset(lengths, split='test', shuffle=False).as_numpy_iterator()
  )
  targets = [ex['targets_pretokenized'].decode() for ex in test[:3]]
  generations = [
    f'Some steps. So the answer is {targets[0]}.',  # right
    'Some steps. So the answer is 1000.',  # wrong
    'Some steps, and no answer.',  # unreadable: wrong
  ]
  predictions = [
    task.postprocess_fn(g, example=ex, is_target=False)
    for g, ex in zip(generations, test)
  ]
  assert predictions == [targets[0], '1000', '']
  scored_targets = [
    task.postprocess_fn(t, example=ex, is_target=True)
    for t, ex in zip(targets, test)
  ]
  assert scored_targets == targets
  [metric] = task.metric_fns
  assert metric(scored_targets, predictions) == {
    'accuracy': pytest.approx(1 / 3)
  }


def test_single_task_trains_on_teacher_labels_only():
  with pytest.raises(ValueError, match="for 'gt' labels use mode 'dsbs'"):
    dsbs_task('synthetic', 'single_task', 'gt', vocabulary=BYTES)
