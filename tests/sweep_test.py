"""Tests of slt_tf.sweep: run grid, commands, aggregation, tables and the plot, on fake metrics."""

import csv
import io
import os
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

import slt_tf  # pylint: disable=unused-import
from slt_tf import errors
from slt_tf import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_result(group, seed, fid, **extra):
  result = {"group": group, "seed": seed, "step": 200, "num_samples": 2000, "num_real": 300,
            "fid": fid, "kid": fid / 100, "inception_score": 5.0 + seed, "precision": 0.5,
            "recall": 0.4, "density": 0.3, "coverage": 0.2 + 0.1 * seed,
            "samples_per_second": 100.0, "peak_memory_mb": 900.0}
  result.update(extra)
  return result


def fake_results():
  results = []
  for seed, (dense, keep01, keep03, floor) in enumerate(
      [(50.0, 52.0, 40.0, 150.0), (60.0, 58.0, 44.0, 160.0), (55.0, 61.0, 42.0, 155.0)]):
    results += [fake_result("dense", seed, dense), fake_result("keep 0.1", seed, keep01),
                fake_result("keep 0.3", seed, keep03), fake_result("untrained", seed, floor)]
  return results


def test_grid_is_seed_major_with_dense_first_and_names_per_run():
  runs = sweep.grid([0, 1], [0.1, 0.3])
  assert [run.name for run in runs] == ["dense_s0", "keep0.1_s0", "keep0.3_s0",
                                        "dense_s1", "keep0.1_s1", "keep0.3_s1"]
  assert [run.group for run in runs[:3]] == ["dense", "keep 0.1", "keep 0.3"]


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_grid_rejects_keep_fractions_outside_zero_one(keep):
  with pytest.raises(errors.SltError, match=r"keep_fraction must be in \(0, 1\]"):
    sweep.grid([0], [keep])


def test_grid_rejects_no_seeds():
  with pytest.raises(errors.SltError, match="at least one seed"):
    sweep.grid([], [0.1])


def test_train_command_sets_method_seed_keep_fraction_then_the_rows_overrides():
  every_run = ["--config=configs/digits.py", "--config.num_steps=300"]
  ticket = sweep.train_command(sweep.Run("edge_popup", 0.05, 2), config_arguments=every_run,
                               workdir="/w")
  assert ticket[:3] == [sys.executable, "-m", "bin.find_ticket"]
  assert ticket[3:] == ["--config=configs/digits.py", "--config.num_steps=300", "--workdir=/w",
                        "--config.method=edge_popup", "--config.seed=2",
                        "--config.keep_fraction=0.05"]
  dense = sweep.train_command(sweep.Run("dense", None, 0), config_arguments=["--config=c.py"],
                              workdir="/d", overrides=["learning_rate=1e-3"])
  assert dense[3:] == ["--config=c.py", "--workdir=/d", "--config.method=dense",
                       "--config.seed=0", "--config.learning_rate=1e-3"]


def parse_config_flags(argv):
  """A fresh absl FlagValues with an ml_collections `--config` flag, parsed from argv."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values


def test_config_arguments_give_find_ticket_the_sweeps_config_and_overrides():
  config = os.path.join(ROOT, "configs", "test.py")
  argv = ["sweep", f"--config={config}", "--config.num_steps=7", "--config.learning_rate=1e-3",
          "--config.generator.filters=(24, 12)", "--config.generator.mask_bias=true",
          "--config.features.weights=none", "--config.eval.network="]
  given = parse_config_flags(argv)
  arguments = sweep.config_arguments(given)
  assert arguments[0] == f"--config={config}"
  forwarded = parse_config_flags(["find_ticket", *arguments]).config.to_dict()
  assert forwarded == given.config.to_dict()
  assert forwarded["num_steps"] == 7 and forwarded["generator"]["filters"] == (24, 12)
  assert forwarded != parse_config_flags(["find_ticket", f"--config={config}"]).config.to_dict()


@pytest.mark.parametrize("key", sweep.PER_RUN_KEYS)
def test_config_arguments_refuse_the_keys_the_sweep_sets_per_run(key):
  given = parse_config_flags(["sweep", f"--config={os.path.join(ROOT, 'configs', 'test.py')}",
                              f"--config.{key}=1"])
  with pytest.raises(errors.SltError, match=rf"--config.{key} is set for each run by the sweep"):
    sweep.config_arguments(given)


def test_trained_step_reads_the_latest_checkpoint_number(tmp_path):
  assert sweep.trained_step(str(tmp_path)) == 0
  checkpoints = tmp_path / "checkpoints"
  checkpoints.mkdir()
  (checkpoints / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-200"\nall_model_checkpoint_paths: "ckpt-100"\n'
      'all_model_checkpoint_paths: "ckpt-200"\n')
  (checkpoints / "ckpt-200.index").write_bytes(b"")
  assert sweep.trained_step(str(tmp_path)) == 200


def test_summarize_gives_mean_and_sample_std_per_row_in_table_order():
  rows = sweep.summarize(fake_results())
  assert [row["group"] for row in rows] == ["dense", "keep 0.1", "keep 0.3", "untrained"]
  dense = rows[0]
  assert dense["num_runs"] == 3 and dense["seeds"] == "0 1 2"
  assert dense["keep_fraction"] is None and rows[1]["keep_fraction"] == 0.1
  np.testing.assert_allclose(dense["fid_mean"], np.mean([50.0, 60.0, 55.0]))
  np.testing.assert_allclose(dense["fid_std"], np.std([50.0, 60.0, 55.0], ddof=1))
  np.testing.assert_allclose(rows[2]["coverage_mean"], 0.3)


def test_summarize_single_run_has_zero_std_and_missing_metric_is_none():
  rows = sweep.summarize([fake_result("keep 0.5", 0, 10.0, inception_score=None)])
  assert rows[0]["fid_std"] == 0.0
  assert rows[0]["inception_score_mean"] is None and rows[0]["inception_score_std"] is None


def test_keep_rows_sort_by_numeric_keep_fraction_not_text():
  rows = sweep.summarize([fake_result("keep 0.5", 0, 1.0), fake_result("keep 0.05", 0, 1.0),
                          fake_result("keep 0.3", 0, 1.0)])
  assert [row["group"] for row in rows] == ["keep 0.05", "keep 0.3", "keep 0.5"]


def test_summary_csv_round_trips_means_and_stds():
  rows = sweep.summarize(fake_results())
  parsed = list(csv.DictReader(io.StringIO(sweep.summary_csv(rows))))
  assert [row["group"] for row in parsed] == ["dense", "keep 0.1", "keep 0.3", "untrained"]
  assert float(parsed[1]["fid_mean"]) == pytest.approx(rows[1]["fid_mean"])
  assert float(parsed[1]["fid_std"]) == pytest.approx(rows[1]["fid_std"])
  assert parsed[0]["keep_fraction"] == ""


def test_runs_csv_has_one_line_per_run():
  parsed = list(csv.DictReader(io.StringIO(sweep.runs_csv(fake_results()))))
  assert len(parsed) == 12
  assert parsed[0]["group"] == "dense" and parsed[0]["seed"] == "0"


def test_markdown_table_shows_mean_plus_minus_std_and_ratio_to_dense():
  rows = sweep.summarize(fake_results())
  table = sweep.summary_markdown(rows)
  lines = table.strip().splitlines()
  assert len(lines) == 2 + 4
  keep01 = next(line for line in lines if line.startswith("| keep 0.1 |"))
  mean, std = np.mean([52.0, 58.0, 61.0]), np.std([52.0, 58.0, 61.0], ddof=1)
  assert f"{mean:.2f} ± {std:.2f}" in keep01
  assert f"| {mean / 55.0:.2f} |" in keep01


def test_claim_verdict_compares_keep01_with_1_1_dense_and_keep03_with_dense():
  verdict = sweep.claim_verdict(sweep.summarize(fake_results()))
  # keep 0.1 mean 57 <= 1.1 * 55 = 60.5 holds; keep 0.3 mean 42 <= 55 holds.
  assert verdict[0].startswith("keep 0.1: mean FID 57.00") and verdict[0].endswith("holds.")
  assert "60.50" in verdict[0]
  worse = [fake_result("dense", 0, 10.0), fake_result("keep 0.1", 0, 11.5),
           fake_result("keep 0.3", 0, 10.5)]
  verdict = sweep.claim_verdict(sweep.summarize(worse))
  assert verdict[0].endswith("does NOT hold.") and verdict[1].endswith("does NOT hold.")


def test_claim_verdict_without_dense_says_so():
  assert "no dense baseline" in sweep.claim_verdict(
      sweep.summarize([fake_result("keep 0.1", 0, 1.0)]))[0]


def test_write_results_writes_tables_and_a_png_plot(tmp_path):
  written = sweep.write_results(fake_results(), str(tmp_path), title="fake")
  for path in written["paths"].values():
    assert os.path.getsize(path) > 0, path
  with open(written["paths"]["fid_vs_keep_fraction.png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(written["paths"]["results.md"], encoding="utf-8") as f:
    text = f.read()
  assert "| dense | 3 |" in text and "- keep 0.3: mean FID" in text


def test_plot_without_dense_or_floor_still_draws_the_tickets(tmp_path):
  path = str(tmp_path / "plot.png")
  sweep.plot(sweep.summarize([fake_result("keep 0.1", 0, 3.0), fake_result("keep 0.1", 1, 4.0)]),
             path)
  assert os.path.getsize(path) > 0


def test_write_results_refuses_no_results(tmp_path):
  with pytest.raises(errors.SltError, match="no evaluated runs"):
    sweep.write_results([], str(tmp_path))


def test_grid_adds_global_edge_popup_runs_after_the_per_layer_tickets():
  runs = sweep.grid([0], [0.1], [0.1])
  assert [run.name for run in runs] == ["dense_s0", "keep0.1_s0", "global0.1_s0"]
  assert runs[2].method == "global_edge_popup" and runs[2].group == "global 0.1"
  assert "--config.method=global_edge_popup" in sweep.train_command(
      runs[2], config_arguments=["--config=c.py"], workdir="/w")


def test_rows_order_dense_tickets_global_floor_then_real_data():
  results = [fake_result(group, 0, 1.0) for group in
             ("real data", "untrained", "global 0.1", "keep 0.3", "dense", "keep 0.1")]
  rows = sweep.summarize(results)
  assert [row["group"] for row in rows] == ["dense", "keep 0.1", "keep 0.3", "global 0.1",
                                            "untrained", "real data"]
  assert rows[3]["keep_fraction"] == 0.1 and rows[5]["keep_fraction"] is None


def test_significance_matches_scipy_welch_test_on_the_per_seed_values():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  lines = sweep.significance(sweep.summarize(fake_results()))
  expected = stats.ttest_ind([52.0, 58.0, 61.0], [50.0, 60.0, 55.0], equal_var=False).pvalue
  keep01 = next(line for line in lines if line.startswith("keep 0.1 - dense"))
  assert f"p = {expected:.3f}" in keep01 and keep01.endswith("within the seed spread (p >= 0.05).")
  keep03 = next(line for line in lines if line.startswith("keep 0.3 - dense"))
  expected03 = stats.ttest_ind([40.0, 44.0, 42.0], [50.0, 60.0, 55.0], equal_var=False).pvalue
  assert f"p = {expected03:.3f}" in keep03
  assert ("larger than" in keep03) == (expected03 < 0.05)


def test_train_seconds_add_up_over_resumptions(tmp_path):
  assert sweep.train_seconds(str(tmp_path)) is None
  sweep.add_train_seconds(str(tmp_path), 10.5)
  sweep.add_train_seconds(str(tmp_path), 2.0)
  assert sweep.train_seconds(str(tmp_path)) == 12.5


def test_eval_curve_reads_back_the_periodic_evaluation_scalars_and_plots_them(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writer = tf.summary.create_file_writer(str(tmp_path / "tensorboard" / "eval"))
  with writer.as_default():
    for step, fid in ((250, 40.0), (500, 30.0), (750, 33.0)):
      tf.summary.scalar("eval/fid", fid, step=step)
      tf.summary.scalar("eval/kid", fid / 100, step=step)
  writer.close()
  curve = sweep.read_eval_curve(str(tmp_path))
  assert curve == [(250, 40.0), (500, 30.0), (750, 33.0)]
  path = str(tmp_path / "curve.png")
  sweep.plot_curves({"dense": curve}, path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_side_by_side_puts_two_grids_in_one_png(tmp_path):
  from slt_tf import images  # pylint: disable=g-import-not-at-top
  paths = {}
  for label, value in (("dense", 0), ("ticket", 255)):
    paths[label] = str(tmp_path / f"{label}.png")
    images.save_grid_png(paths[label], np.full((4, 8, 8, 1), value, np.uint8))
  out = str(tmp_path / "both.png")
  sweep.side_by_side(paths, out, title="t")
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
