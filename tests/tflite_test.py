"""Edge export: a configs/test.py run as .tflite (each variant) loads in tf.lite.Interpreter
and matches the SavedModel (float32: tight; quantised: loose)."""

import os

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order
import pytest
import tensorflow as tf

from slt_tf import errors
from slt_tf import workdir as workdir_lib
from slt_tf.export import bake
from slt_tf.export import tflite

# (quantize, sparsity) -> max |tflite - SavedModel| allowed on images in [-1, 1].
VARIANTS = {("none", False): 1e-5, ("none", True): 1e-5, ("dynamic", False): 0.05,
            ("dynamic", True): 0.05, ("float16", False): 0.01}

pytestmark = pytest.mark.e2e  # Every test converts the generator of a 4-step search.


@pytest.fixture(scope="module")
def run(short_run, tmp_path_factory):
  """A 4-step configs/test.py ticket (random features) and its SavedModel's outputs."""
  root = tmp_path_factory.mktemp("tflite")
  workdir = short_run()
  version_dir = bake.export(export_base=str(root / "export"), workdir=workdir)
  latent_dim = workdir_lib.generator_spec(workdir).latent_dim
  z = np.random.default_rng(0).standard_normal((6, latent_dim)).astype(np.float32)
  signature = tf.saved_model.load(version_dir).signatures["serving_default"]
  expected = signature(z=tf.constant(z))["images"].numpy()
  return {"workdir": workdir, "root": root, "z": z, "expected": expected}


@pytest.mark.parametrize("quantize,sparsity", list(VARIANTS))
def test_variant_loads_and_matches_the_saved_model(run, quantize, sparsity):
  path = str(run["root"] / f"g_{quantize}_{sparsity}.tflite")
  info = tflite.export(path, workdir=run["workdir"], quantize=quantize, sparsity=sparsity)
  assert info["bytes"] == os.path.getsize(path) and info["step"] == 4
  runner = tflite.Runner(path)
  images = runner(run["z"])
  assert images.shape == run["expected"].shape and images.dtype == np.float32
  assert np.max(np.abs(images - run["expected"])) <= VARIANTS[(quantize, sparsity)]
  assert np.array_equal(runner(run["z"][:1]), images[:1])  # Resized to batch 1 and back.


def test_quantised_weights_make_the_file_smaller(run):
  plain, _ = bake.from_workdir(run["workdir"])
  sizes = {q: len(tflite.convert(plain, quantize=q)) for q in tflite.QUANTIZATIONS}
  assert sizes["dynamic"] < sizes["float16"] < sizes["none"]


def test_bad_requests_are_one_line_errors(run):
  plain, _ = bake.from_workdir(run["workdir"])
  with pytest.raises(errors.SltError, match="sparsity applies to quantize=none or dynamic"):
    tflite.convert(plain, quantize="float16", sparsity=True)
  with pytest.raises(errors.SltError, match="unknown quantize"):
    tflite.convert(plain, quantize="int4")
  with pytest.raises(errors.SltError, match="must end in .tflite"):
    tflite.export(str(run["root"] / "g.bin"), workdir=run["workdir"])
  with pytest.raises(errors.SltError, match="exactly one source"):
    tflite.export(str(run["root"] / "g.tflite"))


def test_binary_writes_the_ticket_as_tflite(run_binary, run):
  out = str(run["root"] / "cli.tflite")
  result = run_binary("bin.export_tflite", f"--ticket={os.path.join(run['workdir'], 'ticket.slt')}",
                      f"--out={out}", "--quantize=dynamic").check()
  assert result.stdout.startswith(f"Wrote {out} (")
  assert np.max(np.abs(tflite.Runner(out)(run["z"]) - run["expected"])) <= 0.05


def test_a_native_size_generator_exports_its_resize_to_both_formats(tiny_config, tmp_path):
  from slt_tf import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "native")
  config = tiny_config(num_steps=2, checkpoint_every_steps=2, log_every_steps=2,
                       sample_every_steps=2, **{"generator.native_size": 4})
  train.train_and_evaluate(config, workdir, strategy=tf.distribute.get_strategy())
  spec = workdir_lib.generator_spec(workdir)
  assert spec.native_size == 4
  generator, _ = workdir_lib.restore_generator(workdir, spec, advice="")
  z = np.random.default_rng(1).standard_normal((3, spec.latent_dim)).astype(np.float32)
  expected = generator(z, training=False).numpy()
  version_dir = bake.export(export_base=str(tmp_path / "export"), workdir=workdir)
  served = tf.saved_model.load(version_dir).signatures["serving_default"](z=tf.constant(z))
  np.testing.assert_allclose(served["images"].numpy(), expected, rtol=0, atol=1e-5)
  path = str(tmp_path / "native.tflite")
  tflite.export(path, workdir=workdir)
  np.testing.assert_allclose(tflite.Runner(path)(z), expected, rtol=0, atol=1e-5)
