"""`pip install .`: the pins of requirements.txt, the console scripts, only the slt_tf package;
an installed slt-find-ticket runs from outside the repository; the Keras backend check."""

import configparser
import glob
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = ("find_ticket", "evaluate", "export_saved_model", "export_tflite",
            "generate_samples", "inspect_ticket", "sweep")


def pyproject() -> dict:
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def test_dependencies_are_the_pins_of_requirements_txt():
  with open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8") as f:
    pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  project = pyproject()
  assert sorted(project["dependencies"] + project["optional-dependencies"]["test"]) == sorted(pins)


def test_every_binary_is_a_console_script_and_a_bin_wrapper():
  scripts = pyproject()["scripts"]
  assert scripts == {f"slt-{b.replace('_', '-')}": f"slt_tf.cli.{b}:run" for b in BINARIES}
  for binary in BINARIES:
    with open(os.path.join(REPO_ROOT, "bin", f"{binary}.py"), encoding="utf-8") as f:
      assert f"from slt_tf.cli import {binary}\n" in f.read()


@pytest.mark.e2e
@pytest.mark.parametrize("binary", BINARIES)
def test_another_keras_backend_stops_every_binary_with_one_line(run_binary, binary):
  result = run_binary(f"bin.{binary}", "--help", KERAS_BACKEND="jax")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"{binary}: error: slt_tf needs the TensorFlow backend of Keras, but "
      "KERAS_BACKEND='jax'; unset it or set KERAS_BACKEND=tensorflow"]


@pytest.mark.e2e
def test_wheel_installs_only_slt_tf_and_its_scripts_run_outside_the_repo(tmp_path):
  source = tmp_path / "src"  # A copy: pip builds in the tree and leaves build/ there.
  shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
      ".*", "bazel-*", "runs", "build", "*.egg-info", "__pycache__", "third_party"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                 check=True, capture_output=True, timeout=600)
  wheel, = glob.glob(str(tmp_path / "dist" / "slt_tf-*.whl"))
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    entry_points = configparser.ConfigParser()
    entry_points.read_string(archive.read(next(
        n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode())
  assert {n.split("/")[0] for n in names} == {"slt_tf", os.path.basename(wheel).split("-")[0]
                                              + "-" + os.path.basename(wheel).split("-")[1]
                                              + ".dist-info"}
  assert "slt_tf/cli/find_ticket.py" in names and "slt_tf/config_schema.py" in names
  assert sorted(entry_points["console_scripts"]) == sorted(
      f"slt-{b.replace('_', '-')}" for b in BINARIES)

  # A fresh venv; the dependencies come from this interpreter's site-packages (offline).
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  venv_site, = glob.glob(str(venv / "lib" / "python*" / "site-packages"))
  with open(os.path.join(venv_site, "deps.pth"), "w", encoding="utf-8") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                  "install", "-q", "--no-deps", wheel], check=True, capture_output=True,
                 timeout=600)
  assert not {"bin", "configs", "tests", "bench"} & set(os.listdir(venv_site))
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  # A fresh $HOME: the default caches, writable where the real one is not (Bazel's sandbox).
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
             HOME=str(tmp_path / "home"))
  env.pop("PYTHONPATH", None)
  result = subprocess.run(
      [str(venv / "bin" / "slt-find-ticket"), f"--config={REPO_ROOT}/configs/test.py",
       f"--workdir={tmp_path / 'run'}", "--config.features.weights=none",
       "--config.num_steps=2"], cwd=outside, env=env, capture_output=True, text=True,
      timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(tmp_path / "run" / "ticket.slt")
  help_text = subprocess.run([str(venv / "bin" / "slt-inspect-ticket"), "--help"], cwd=outside,
                             env=env, capture_output=True, text=True, timeout=300).stdout
  assert "Describes the ticket of a workdir" in help_text and "--workdir" in help_text
