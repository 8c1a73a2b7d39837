"""The README's "Python API" block, run as it is written (configs/test.py, random feature and
eval network weights), in a fresh process from the repository root."""

import os
import re
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(section: str) -> str:
  with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", body, re.S).group(1)


@pytest.mark.e2e
def test_readme_python_api_block_runs_as_written(tmp_path):
  code = readme_block("Python API")
  assert "slt_tf.find_ticket(config, workdir)" in code
  # A fresh $HOME: the caches the README's defaults use, writable where the real one is not
  # (Bazel's sandbox), and no state from earlier runs.
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", HOME=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout  # Keras progress bars are interleaved: look for the printed lines.
  assert re.search(r"\b40 \d+ of \d+ weights kept\n", out), out[-2000:]
  assert "(16, 8, 8, 1) uint8\n" in out, out[-2000:]
  assert re.search(r"FID [\d.]+\n", out), out[-2000:]
  assert re.search(r"/export/slt/1 \d+ bytes\n", out), out[-2000:]


def test_load_config_applies_overrides_and_rejects_unknown_keys():
  import slt_tf  # pylint: disable=g-import-not-at-top
  from slt_tf import errors  # pylint: disable=g-import-not-at-top
  config = slt_tf.load_config(os.path.join(REPO_ROOT, "configs", "test.py"),
                              {"features.weights": "none", "num_steps": 3})
  assert (config.features.weights, config.num_steps) == ("none", 3)
  for bad in ({"features.nope": 1}, {"nope": 1}):
    try:
      slt_tf.load_config(os.path.join(REPO_ROOT, "configs", "test.py"), bad)
    except errors.SltError as e:
      assert "unknown config key" in str(e)
    else:
      raise AssertionError(f"{bad} was accepted")
