"""TensorBoard of a configs/test.py run: sample grids as images, the config as text, HParams,
and one events file per directory."""

import json
import os

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from slt_tf import summaries


def accumulator(directory: str) -> event_accumulator.EventAccumulator:
  events = event_accumulator.EventAccumulator(directory, size_guidance={
      event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
  events.Reload()
  return events


@pytest.mark.e2e
def test_run_writes_sample_grids_config_text_and_hparams(short_run, tiny_config):
  config = tiny_config()
  workdir = short_run()  # 4 steps, logs and samples every 2.

  train_dir = os.path.join(workdir, "tensorboard", "train")
  assert len([f for f in os.listdir(train_dir) if "tfevents" in f]) == 1
  events = accumulator(train_dir)
  grids = events.Tensors("samples")  # TF2 image summaries: [width, height, PNG].
  assert [g.step for g in grids] == [2, 4]
  width, height, png = grids[0].tensor_proto.string_val
  assert int(width) > 0 and int(height) > 0 and png.startswith(b"\x89PNG")
  assert events.SummaryMetadata("samples").plugin_data.plugin_name == "images"
  assert "train/loss" in events.Tags()["tensors"]

  text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.loads(text) == json.load(f)

  hparams = events.PluginTagToContent("hparams")
  session = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
  values = session.session_start_info.hparams
  assert values["keep_fraction"].number_value == config.keep_fraction
  assert values["generator.name"].string_value == "dcgan"
  assert values["generator.filters"].string_value == "[32, 16]"
  assert session.session_start_info.group_name == "run"


def test_evaluations_of_one_process_share_one_events_file(tmp_path):
  from slt_tf import evaluation  # pylint: disable=g-import-not-at-top
  log_dir = str(tmp_path / "eval")
  for step in (1, 2, 3):
    evaluation.write_scalars(log_dir, step, {"fid": float(step)})
  assert len(os.listdir(log_dir)) == 1
  assert [float(tf.make_ndarray(e.tensor_proto))
          for e in accumulator(log_dir).Tensors("eval/fid")] == [1.0, 2.0, 3.0]
  assert summaries.writer(log_dir) is summaries.writer(log_dir)


def test_flatten_gives_hparams_values():
  assert summaries.flatten({"a": {"b": (1, 2), "c": 0.5}, "d": "x", "e": True}) == {
      "a.b": "[1, 2]", "a.c": 0.5, "d": "x", "e": True}
  assert np.isscalar(summaries.flatten({"a": 3})["a"])
