"""Every shipped gin combination parses and configures what it says."""

import functools
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsbs_jax import gin_utils
from dsbs_jax import network

GIN_DIR = Path(__file__).resolve().parents[1] / 'gin'


def _parse(*files: str, bindings=()) -> None:
  gin.clear_config()
  gin.add_config_file_search_path(str(GIN_DIR))
  gin.parse_config_files_and_bindings(
    list(files), list(bindings), finalize_config=False
  )


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def _param_count(config: network.T5Config) -> int:
  tokens = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(
    functools.partial(network.Transformer(config).init, enable_dropout=False),
    jax.random.PRNGKey(0),
    tokens,
    tokens,
    tokens,
  )['params']
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


# T5.1.1 sizes as published (parameters, in millions, within 3%).
@pytest.mark.parametrize(
  'size,millions',
  [('small', 77), ('base', 248), ('large', 783), ('xl', 2850), ('xxl', 11300)],
)
def test_model_files_configure_t5_1_1(size, millions):
  _parse(
    'runs/dsbs.gin',
    f'models/t5_1_1_{size}.gin',
    'data/cqa.gin',
    'meshes/tpu_pod_slice.gin',
  )
  config = gin.get_configurable(network.T5Config)()
  assert config.mlp_activations == ('gelu', 'linear')
  assert not config.logits_via_embedding
  assert _param_count(config) == pytest.approx(millions * 1e6, rel=0.03)
  checkpoint = gin.query_parameter('%INITIAL_CHECKPOINT_PATH')
  assert checkpoint.endswith(f't5_1_1_{size}/checkpoint_1000000')
  # data/cqa.gin: packed rows of the lengths dsbs-lengths suggests.
  assert gin.query_parameter('%PACK')
  assert gin.query_parameter('%TASK_FEATURE_LENGTHS') == {
    'inputs': 1024,
    'targets': 440,
  }


@pytest.mark.parametrize(
  'size,remat,dims',
  [
    ('base', 'minimal', 1),
    ('large', 'full', 2),
    ('xl', 'minimal', 2),
    ('xxl', 'full', 2),
  ],
)
def test_plan_files_configure_docs_scaling_plans(size, remat, dims):
  """meshes/plan_<size>.gin: the plan docs/scaling.md recommends for the
  size (measured with tools/aot_compile.py), on a multi-host TPU slice."""
  _parse(
    'runs/dsbs.gin', f'models/t5_1_1_{size}.gin', f'meshes/plan_{size}.gin'
  )
  config = gin.get_configurable(network.T5Config)()
  assert config.remat_policy == remat and config.scan_layers
  rules = gin.get_bindings('dsbs_jax.partitioning.standard_logical_axis_rules')
  assert rules.get('parameter_partitioning_dims', 1) == dims
  start_up = gin.get_bindings('dsbs_jax.partitioning.initialize_distributed')
  assert start_up['enabled']


@pytest.mark.parametrize(
  'run,mode,alpha,labels',
  [
    ('dsbs', 'dsbs', 0.5, 'llm'),
    ('finetune', 'finetune', 1.0, 'gt'),
    ('distill', 'distill', 1.0, 'llm'),
  ],
)
def test_run_files_pick_the_method(run, mode, alpha, labels):
  _parse(
    f'runs/{run}.gin',
    'runs/eval.gin',
    'runs/infer.gin',
    'models/t5_1_1_tiny.gin',
    'data/synthetic.gin',
    'meshes/single_host.gin',
  )
  assert gin.query_parameter('%MODE') == mode
  assert gin.query_parameter('%ALPHA') == alpha
  assert gin.query_parameter('%LABEL_SOURCE') == labels
  assert gin.query_parameter('%DATASET') == 'synthetic'


def test_misspelt_binding_is_a_short_configuration_error():
  with pytest.raises(ValueError, match='num_microbatchs'):
    _parse('runs/dsbs.gin', bindings=['trainer.Trainer.num_microbatchs = 2'])
  assert gin_utils.project_gin_dir() == GIN_DIR
