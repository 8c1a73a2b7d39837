"""End to end: bin/export_saved_model on trained workdirs and ticket files, the SavedModels
loaded in a fresh process, and the serving client against a baked export."""

import collections
import json
import os
import subprocess
import sys
import urllib.request

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from slt_tf import checkpoints
from slt_tf import errors
from slt_tf import images
from slt_tf import sampling
from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib
from slt_tf.export import bake
from slt_tf.export import client
from slt_tf.export import servable
from tests import serving_double

NUM_STEPS = 4  # Of short_run (tests/conftest.py).
SEEDS = np.array([0, 1, 2, 7, 123456789], np.int64)
# Top-k and the radix select behind it (masking.kth_largest: bitcast + bincount histograms).
MASKING_OPS = {"TopKV2", "TopK", "Bincount", "DenseBincount", "Bitcast", "Cumsum"}

pytestmark = pytest.mark.e2e  # Every test runs bin/export_saved_model or uses its export.

# Loads SavedModels in a process that never saw slt_tf: argv = out.npz z.npy seeds.npy dir...
FRESH_PROCESS_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
out, z, seeds, directories = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3]), sys.argv[4:]
arrays = {}
for index, directory in enumerate(directories):
  model = tf.saved_model.load(directory)
  signatures = model.signatures
  arrays[f"{index}/signatures"] = np.array(sorted(signatures))
  arrays[f"{index}/float"] = signatures["serving_default"](z=tf.constant(z))["images"].numpy()
  arrays[f"{index}/uint8"] = signatures["generate_uint8"](seeds=tf.constant(seeds))[
      "images"].numpy()
  pngs = signatures["generate_png"](seeds=tf.constant(seeds))["images_bytes"].numpy()
  arrays[f"{index}/png"] = np.stack([tf.io.decode_png(png).numpy() for png in pngs])
  arrays[f"{index}/variable_names"] = np.array([v.name for v in model.generator_variables])
  for number, variable in enumerate(model.generator_variables):
    arrays[f"{index}/variable/{number}"] = variable.numpy()
np.savez(out, **arrays)
"""


def graph_ops(version_dir: str) -> collections.Counter:
  """Op types of every node of the SavedModel's graph and of every function in its library."""
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  ops = collections.Counter()
  for meta_graph in saved_model.meta_graphs:
    ops.update(node.op for node in meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      ops.update(node.op for node in function.node_def)
  return ops


@pytest.fixture(scope="module")
def runs(run_binary, short_run, tmp_path_factory):
  """A ticket run and a dense run of configs/test.py, exported three ways."""
  base = tmp_path_factory.mktemp("runs")
  ticket_workdir, dense_workdir = short_run("edge_popup"), short_run("dense")
  export_base = str(base / "export")
  # The binary, from the workdir's latest checkpoint.
  result = run_binary("bin.export_saved_model", f"--workdir={ticket_workdir}",
                      f"--export_dir={export_base}").check()
  ticket_path = os.path.join(ticket_workdir, "ticket.slt")
  from_ticket = bake.export(export_base=export_base, ticket_path=ticket_path,
                            model_name="from_ticket")
  dense = bake.export(export_base=export_base, workdir=dense_workdir, model_name="dense")
  return {"ticket_workdir": ticket_workdir, "dense_workdir": dense_workdir,
          "ticket": ticket_lib.load(ticket_path), "ticket_path": ticket_path,
          "export_base": export_base, "stdout": result.stdout,
          "exports": {"checkpoint": os.path.join(export_base, "slt", "1"),
                      "ticket": from_ticket, "dense": dense}}


@pytest.fixture(scope="module")
def fresh(runs, tmp_path_factory):
  """What a fresh process gets from each export: {export: {signatures, float, uint8, png,
  variables}}, for z = latents(SEEDS)."""
  directory = tmp_path_factory.mktemp("fresh")
  latent_dim = runs["ticket"].spec.latent_dim
  z = sampling.latents(tf.constant(SEEDS), latent_dim, stream=0).numpy()
  np.save(directory / "z.npy", z)
  np.save(directory / "seeds.npy", SEEDS)
  labels = list(runs["exports"])
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(directory / "out.npz"),
       str(directory / "z.npy"), str(directory / "seeds.npy"),
       *[runs["exports"][label] for label in labels]],
      capture_output=True, text=True, env=environment, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = {}
  with np.load(directory / "out.npz") as arrays:
    for index, label in enumerate(labels):
      names = [str(name) for name in arrays[f"{index}/variable_names"]]
      loaded[label] = {
          "signatures": [str(name) for name in arrays[f"{index}/signatures"]],
          "float": arrays[f"{index}/float"], "uint8": arrays[f"{index}/uint8"],
          "png": arrays[f"{index}/png"],
          "variables": {name: arrays[f"{index}/variable/{number}"]
                        for number, name in enumerate(names)},
      }
  return {"z": z, **loaded}


# ------------------------------------------------------------------------------- the export


def test_binary_writes_tf_serving_layout_with_warmup_and_metadata(runs):
  version_dir = runs["exports"]["checkpoint"]
  for relative in ("saved_model.pb", "variables/variables.index",
                   "assets.extra/tf_serving_warmup_requests", "assets.extra/slt_metadata.json"):
    assert os.path.isfile(os.path.join(version_dir, relative)), relative
  assert sorted(os.listdir(runs["export_base"])) == ["dense", "from_ticket", "slt"]
  assert os.listdir(os.path.join(runs["export_base"], "slt")) == ["1"]
  assert f"Wrote {version_dir} (edge_popup, step {NUM_STEPS}," in runs["stdout"]


def test_metadata_has_keep_fraction_method_seed_spec_and_step(runs):
  ticket = runs["ticket"]
  description = servable.read_metadata(runs["exports"]["checkpoint"])
  metadata = description["metadata"]
  assert metadata["keep_fraction"] == 0.1 and metadata["method"] == "edge_popup"
  assert metadata["seed"] == ticket.spec.seed and metadata["spec"] == ticket.spec.to_dict()
  assert metadata["step"] == NUM_STEPS and metadata["source"] == "checkpoint"
  assert description["latent_dim"] == ticket.spec.latent_dim
  assert description["image_shape"] == [8, 8, 1]
  dense = servable.read_metadata(runs["exports"]["dense"])["metadata"]
  assert dense["method"] == "dense" and dense["keep_fraction"] == 1.0


def test_serving_default_in_a_fresh_process_equals_the_in_memory_ticket_generator(runs, fresh):
  generator = ticket_lib.build_generator(runs["ticket"])
  expected = generator(fresh["z"], training=False).numpy()
  served = fresh["checkpoint"]["float"]
  assert fresh["checkpoint"]["signatures"] == ["generate_png", "generate_uint8",
                                               "serving_default"]
  assert served.shape == (len(SEEDS), 8, 8, 1) and served.dtype == np.float32
  assert expected.std() > 1e-3
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_uint8_and_png_signatures_agree_with_serving_default(fresh):
  for label in ("checkpoint", "ticket", "dense"):
    served = fresh[label]
    quantised = images.to_uint8(served["float"]).numpy()
    assert served["uint8"].dtype == np.uint8 and served["uint8"].shape == quantised.shape
    # The same graph on the same z; a value on a .5 boundary could move by one level.
    assert np.abs(served["uint8"].astype(int) - quantised.astype(int)).max() <= 1, label
    assert np.mean(served["uint8"] == quantised) > 0.99, label
    np.testing.assert_array_equal(served["png"], served["uint8"], err_msg=label)


def checkpoint_keys(version_dir: str) -> list[str]:
  """The variables saved in the SavedModel (object paths; the object graph is not counted)."""
  return [key for key, _ in tf.train.list_variables(
      os.path.join(version_dir, "variables", "variables")) if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def test_no_exported_variable_name_contains_a_score(runs, fresh):
  for label, version_dir in runs["exports"].items():
    names = list(fresh[label]["variables"])
    assert len(names) == 8, names  # 3 kernels, 1 bias, 2 x (moving mean, moving variance).
    assert not [name for name in names if "score" in name.lower()], names
    # Nothing else is saved: no score tensor hides under another name.
    keys = checkpoint_keys(version_dir)
    assert len(keys) == 8 and not [key for key in keys if "score" in key.lower()], keys


def test_serving_graph_has_no_top_k_or_radix_select_ops(runs, tmp_path):
  for label, version_dir in runs["exports"].items():
    ops = graph_ops(version_dir)
    assert {"MatMul", "Conv2D", "Conv2DBackpropInput", "EncodePng"} <= set(ops), label
    assert not MASKING_OPS & set(ops), (label, MASKING_OPS & set(ops))
  # The checks can fail: the unbaked ticket generator, exported as is, computes its masks in
  # the graph and saves its three score tensors.
  unbaked = servable.write_servable(ticket_lib.build_generator(runs["ticket"]),
                                    latent_dim=runs["ticket"].spec.latent_dim,
                                    export_base=str(tmp_path), num_warmup_records=0)
  assert {"DenseBincount", "Bitcast"} <= set(graph_ops(unbaked))
  assert len(checkpoint_keys(unbaked)) == 8 + 3


def test_kept_fraction_of_every_exported_kernel_equals_the_tickets(runs, fresh):
  ticket = runs["ticket"]
  for label in ("checkpoint", "ticket"):
    kernels = {name.split("/")[0]: value for name, value in fresh[label]["variables"].items()
               if name.split("/")[1].startswith("kernel")}
    assert sorted(kernels) == sorted(key.split("/")[0] for key in ticket.masks)
    for name, kernel in kernels.items():
      mask = ticket.masks[f"{name}/kernel"]
      assert kernel.shape == mask.shape
      assert np.count_nonzero(kernel) / kernel.size == mask.sum() / mask.size, (label, name)
      assert not np.any(kernel[~mask]), (label, name)  # The zeros are where the mask is 0.


def test_export_from_the_ticket_file_alone_equals_export_from_the_checkpoint(fresh):
  from_checkpoint, from_ticket = fresh["checkpoint"], fresh["ticket"]
  for key in ("float", "uint8", "png"):
    np.testing.assert_array_equal(from_ticket[key], from_checkpoint[key], err_msg=key)
  assert list(from_ticket["variables"]) == list(from_checkpoint["variables"])
  for name, value in from_checkpoint["variables"].items():
    np.testing.assert_array_equal(from_ticket["variables"][name], value, err_msg=name)


def test_dense_checkpoint_exports_its_trained_generator(runs, fresh):
  workdir = runs["dense_workdir"]
  spec = workdir_lib.generator_spec(workdir)
  generator = checkpoints.restore_generator(spec, workdir_lib.latest_checkpoint(workdir)[0])
  np.testing.assert_allclose(fresh["dense"]["float"], generator(fresh["z"], training=False),
                             rtol=1e-5, atol=1e-6)
  kernels = [v for name, v in fresh["dense"]["variables"].items() if "kernel" in name]
  assert kernels and all(np.count_nonzero(k) == k.size for k in kernels)


# ---------------------------------------------------------------------------------- serving


def test_the_baked_export_serves_the_same_images_over_grpc_and_rest(runs, fresh):
  model_base_path = os.path.join(runs["export_base"], "slt")
  with serving_double.ModelServer(model_base_path, model_name="slt") as server:
    grpc_port, rest_port = server.start()
    seeds = SEEDS[:3]
    expected = client.generate(saved_model=model_base_path, seeds=seeds)
    np.testing.assert_array_equal(expected, fresh["checkpoint"]["uint8"][:3])
    for signature in client.SEED_SIGNATURES:
      for source in ({"grpc_address": f"127.0.0.1:{grpc_port}"},
                     {"server": f"http://127.0.0.1:{rest_port}"}):
        np.testing.assert_array_equal(
            client.generate(seeds=seeds, signature=signature, **source), expected)
    request = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}/v1/models/slt:predict", method="POST",
        data=json.dumps({"instances": fresh["z"][:2].tolist()}).encode())
    with urllib.request.urlopen(request, timeout=60) as answer:
      predictions = json.loads(answer.read())["predictions"]
    np.testing.assert_allclose(np.array(predictions), fresh["checkpoint"]["float"][:2],
                               rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------- errors


def test_tampered_ticket_file_is_a_one_line_checksum_error(run_binary, runs, tmp_path):
  with open(runs["ticket_path"], "rb") as f:
    blob = bytearray(f.read())
  blob[len(blob) // 2] ^= 0x10
  tampered = tmp_path / "tampered.slt"
  tampered.write_bytes(bytes(blob))
  run_binary("bin.export_saved_model", f"--ticket={tampered}",
             f"--export_dir={tmp_path / 'export'}").error_line(
                 f"{tampered} failed its SHA-256 checksum")
  assert not (tmp_path / "export").exists()


def test_existing_version_is_refused_and_both_sources_at_once_too(runs):
  with pytest.raises(errors.SltError, match="version 1 of model 'slt' already exists"):
    bake.export(export_base=runs["export_base"], ticket_path=runs["ticket_path"])
  with pytest.raises(errors.SltError, match="give exactly one source"):
    bake.export(export_base=runs["export_base"], ticket_path=runs["ticket_path"],
                workdir=runs["ticket_workdir"], version=2)


def test_help_documents_every_flag(run_binary):
  result = run_binary("bin.export_saved_model", "--help")
  assert "Traceback" not in result.stderr
  for flag in ("workdir", "ticket", "export_dir", "model_name", "version",
               "num_warmup_records"):
    assert f"--{flag}:" in result.stdout, flag
