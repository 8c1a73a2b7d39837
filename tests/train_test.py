"""End to end: bin/find_ticket on configs/test.py, resume, inspect_ticket, and bad input."""

import json
import os
import shutil

import pytest

import slt_tf  # pylint: disable=unused-import
from configs import test as test_config
from slt_tf import classifiers
from slt_tf import data
from slt_tf import errors
from slt_tf import features
from slt_tf import generators
from slt_tf import masking
from slt_tf import train


@pytest.fixture(scope="module")
def find_ticket(run_binary, shared_dirs):
  """`find_ticket(workdir, *flags)`: bin/find_ticket on configs/test.py with the session's data."""
  def run(workdir, *flags):
    return run_binary("bin.find_ticket", "--config=configs/test.py", f"--workdir={workdir}",
                      *flags, f"--config.dataset.data_dir={shared_dirs[0]}",
                      f"--config.features.cache_dir={shared_dirs[1]}")
  return run


@pytest.fixture(scope="module")
def finished_run(find_ticket, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run") / "w")
  return workdir, find_ticket(workdir).check()


def snapshot(directory):
  """{relative path: bytes} of every file under directory."""
  files = {}
  for parent, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


@pytest.mark.e2e
def test_find_ticket_on_test_config_writes_every_artifact(finished_run):
  workdir, _ = finished_run
  for relative in ("config.json", "ticket.slt", "samples/final.png", "checkpoints/checkpoint",
                   "samples/step_0000020.png"):
    assert os.path.exists(os.path.join(workdir, relative)), relative
  events = os.listdir(os.path.join(workdir, "tensorboard", "train"))
  assert any(name.startswith("events.out.tfevents") for name in events)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["num_steps"] == test_config.get_config().num_steps


@pytest.mark.e2e
def test_inspect_ticket_json_reports_exact_k_and_verified_frozen_weights(run_binary, finished_run):
  workdir, _ = finished_run
  result = run_binary("bin.inspect_ticket", f"--workdir={workdir}", "--json").check()
  report = json.loads(result.stdout)
  keep = test_config.get_config().keep_fraction
  assert report["layers"]
  for layer in report["layers"]:
    assert set(layer) >= {"name", "num_weights", "num_kept", "frozen_weights_verified"}
    assert layer["num_kept"] == masking.num_kept(layer["num_weights"], keep)
    assert layer["frozen_weights_verified"] is True
  assert 0 < report["ticket_bytes"] < report["dense_fp32_bytes"]


@pytest.mark.e2e
def test_rerun_with_more_steps_resumes_from_the_last_checkpoint(finished_run, find_ticket):
  source, _ = finished_run
  workdir = source + "_resumed"
  shutil.copytree(source, workdir)
  result = find_ticket(workdir, "--config.num_steps=50").check()
  assert "Resumed from" in result.stderr and "at step 40" in result.stderr
  assert os.path.exists(os.path.join(workdir, "checkpoints", "ckpt-50.index"))


@pytest.mark.e2e
def test_workdir_with_a_different_config_is_refused_and_left_untouched(finished_run, find_ticket):
  workdir, _ = finished_run
  before = snapshot(workdir)
  find_ticket(workdir, "--config.keep_fraction=0.3").error_line(
      "different config", "keep_fraction")
  assert snapshot(workdir) == before


@pytest.mark.e2e
def test_corrupt_checkpoint_gives_one_line_error_and_overwrites_nothing(finished_run, find_ticket):
  source, _ = finished_run
  workdir = source + "_corrupt"
  shutil.copytree(source, workdir)
  data_file = os.path.join(workdir, "checkpoints", "ckpt-40.data-00000-of-00001")
  with open(data_file, "r+b") as f:
    f.truncate(16)
  before = snapshot(workdir)
  find_ticket(workdir).error_line("ckpt-40")
  assert snapshot(workdir) == before


@pytest.mark.e2e
@pytest.mark.parametrize("flag, fragments", [
    ("--config.not_a_key=1", ("not_a_key",)),
    ("--config.method=magic", ("method", "edge_popup")),
    ("--config.dataset.name=no_such_dataset", ("no_such_dataset",)),
])
def test_bad_config_gives_one_line_error(flag, fragments, tmp_path, find_ticket):
  workdir = str(tmp_path / "w")
  find_ticket(workdir, flag).error_line(*fragments)
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_unknown_key_added_in_a_config_file_is_rejected():
  config = test_config.get_config()
  config.unlock()
  config.dataset.typo_size = 3
  with pytest.raises(errors.SltError, match="dataset.typo_size"):
    train.validate_config(config)


def test_bad_native_size_is_rejected_before_anything_is_built():
  config = test_config.get_config()
  config.generator.native_size = 3
  with pytest.raises(errors.SltError, match=r"native_size must be 0 \(off\) or a power of two "
                     r"below image_size \d+, got 3"):
    train.validate_config(config)
  config.generator.native_size = config.dataset.image_size // 2
  train.validate_config(config)


def test_copies_of_a_loss_network_are_prepared_from_their_own_seeds(monkeypatch):
  config = test_config.get_config()
  config.seed = 4
  config.features.name = "digits_cnn_deep+digits_cnn+digits_cnn_deep#1+digits_cnn#2"
  train.validate_config(config)
  prepared = []
  monkeypatch.setattr(data, "prepare", lambda *args: None)
  monkeypatch.setattr(classifiers, "prepare",
                      lambda name, size, *, seed, **kwargs: prepared.append((name, seed)))
  train.prepare_inputs(config)
  assert prepared == [("digits_cnn_deep", 4), ("digits_cnn", 4), ("digits_cnn_deep", 1004),
                      ("digits_cnn", 2004)]


@pytest.mark.parametrize("key, value, owner_check", [
    ("method", "magic", masking.validate_method),
    ("generator.name", "stylegan", generators.validate_name),
    ("features.name", "resnet50", features.validate_name),
    ("eval.split", "train", data.validate_evaluation_split),
])
def test_each_choice_is_checked_by_the_module_that_defines_it(key, value, owner_check):
  config = test_config.get_config()
  section, _, leaf = key.rpartition(".")
  (config[section] if section else config)[leaf] = value
  with pytest.raises(errors.SltError) as from_config:
    train.validate_config(config)
  with pytest.raises(errors.SltError) as from_owner:
    owner_check(value)
  assert str(from_config.value) == str(from_owner.value)
  assert repr(value) in str(from_config.value) and "choose" in str(from_config.value)


def test_end_of_run_summary_names_the_ticket_its_size_kept_weights_samples_and_next_commands():
  summary = {"step": 40, "workdir": "runs/w", "ticket": "runs/w/ticket.slt", "ticket_bytes": 2000,
             "num_weights": 10000, "num_kept": 1000, "ticket_sha256": "ab" * 32,
             "dense_fp32_bytes": 40000, "samples": "runs/w/samples/final.png",
             "prepare_seconds": 12.3, "search_seconds": 95.0}
  text = train.format_summary(summary)
  assert "Time: 12 s preparing the inputs" in text and "95 s building and searching" in text
  assert "Ticket: runs/w/ticket.slt (2,000 bytes, 20x smaller than the 40,000 bytes" in text
  assert "keeping 1,000 of 10,000 weights (10.0%)" in text
  assert f"ticket_sha256 {'ab' * 32}" in text
  assert "Samples: runs/w/samples/final.png" in text
  for command in ("bin.evaluate --workdir=runs/w", "bin.export_saved_model --workdir=runs/w",
                  "bin.inspect_ticket --workdir=runs/w"):
    assert command in text
  dense = train.format_summary({"step": 40, "workdir": "runs/d", "dense_fp32_bytes": 40000,
                                "samples": "runs/d/samples/final.png"})
  assert "Dense generator: runs/d/checkpoints" in dense and "inspect_ticket" not in dense
  assert "{" not in text + dense  # A summary for people, not a dict.
