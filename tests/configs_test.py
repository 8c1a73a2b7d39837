"""Every shipped config loads by path (as `slt_tf.load_config` loads it, not as the `configs`
package), passes validation and builds its generator spec."""

import glob
import os

import pytest

import slt_tf  # pylint: disable=unused-import
from slt_tf import config_schema
from slt_tf import train
from slt_tf import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def load(name):
  return config_schema.load_file(os.path.join(ROOT, "configs", f"{name}.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_resolves_its_generator(name):
  config = load(name)
  train.validate_config(config)
  spec = workdir_lib.spec_from_config(config, channels=3)
  assert len(spec.resolved_filters()) >= 1
