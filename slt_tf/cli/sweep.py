r"""Dense baseline vs tickets at several keep fractions, several seeds, same step budget.

  python -m bin.sweep --config=configs/digits.py --base_dir=runs/sweep \
    --config.num_steps=200 --num_samples=2000

`--config` and its `--config.KEY=VALUE` overrides work as in bin/find_ticket and apply to every
run; the sweep sets `method`, `seed` and `keep_fraction` of each run itself. For each seed: the
dense run (method=dense) and one ticket per keep fraction, each trained with
`python -m bin.find_ticket` in BASE_DIR/<name> (a rerun resumes or skips finished runs), then
evaluated with slt_tf.workdir_evaluation (metrics.json, skipped when already done for the same
step and sample count). The untrained random generator of each dense run is the floor row.
Writes BASE_DIR/results.csv (mean and std per row), runs.csv, results.md and
fid_vs_keep_fraction.png.
"""

import os
import subprocess
import time

from absl import flags
from absl import logging
from ml_collections import config_flags

import slt_tf  # pylint: disable=unused-import
from slt_tf.cli import common as cli

_BASE_DIR = flags.DEFINE_string("base_dir", "runs/sweep", "Directory of the runs and results.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file of every run (configs/*.py[:variant]); --config.KEY=VALUE "
    "overrides apply to every run.", lock_config=True)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (comma-separated integers).")
_KEEP_FRACTIONS = flags.DEFINE_list("keep_fractions", ["0.05", "0.1", "0.3", "0.5"],
                                    "Keep fractions of the tickets (comma-separated).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2000, "Generated samples per evaluation.",
                                    lower_bound=2)
_TRAIN = flags.DEFINE_bool("train", True, "Train unfinished runs; with --notrain only finished "
                           "runs are evaluated and tabulated.")
_DENSE_OVERRIDES = flags.DEFINE_list("dense_overrides", [], "Config overrides KEY=VALUE for the "
                                     "dense runs only (e.g. learning_rate=5e-4).")
_DENSE_BASE_DIR = flags.DEFINE_string("dense_base_dir", None, "Directory of the dense runs "
                                      "(default: --base_dir), e.g. for a dense learning-rate "
                                      "variant next to the same tickets.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", None, "Where the tables and the plot go "
                                   "(default: --base_dir).")
_FLOOR = flags.DEFINE_bool("floor", True, "Evaluate the untrained generator of each dense run.")
_GLOBAL_KEEP_FRACTIONS = flags.DEFINE_list("global_keep_fractions", [], "Keep fractions of "
                                           "global edge-popup tickets (comma-separated).")
_REAL_REFERENCE = flags.DEFINE_bool("real_reference", True, "Also score num_samples real "
                                    "training images: the row a perfect generator reaches.")
_GLOBAL_OVERRIDES = flags.DEFINE_list("global_overrides", [], "Config overrides KEY=VALUE for "
                                      "the global edge-popup runs only (e.g. "
                                      "generator.score_init=uniform_01).")
_SHARD = flags.DEFINE_string("shard", "0/1", "INDEX/COUNT: train and evaluate only every "
                             "COUNT-th run from INDEX, to run COUNT sweep processes side by "
                             "side; tabulate afterwards with --notrain (COUNT 1 only).")
_SPLIT = flags.DEFINE_string("split", "test", "Real images the runs are scored against: test "
                             "(reported numbers) or validation (tuning).")
flags.mark_flags_as_required(["config"])


def _parse(values, kind, what):
  from slt_tf import errors  # pylint: disable=g-import-not-at-top
  try:
    return [kind(v) for v in values]
  except ValueError as e:
    raise errors.SltError(f"--{what} must be a comma-separated list of numbers, got "
                          f"{','.join(values)!r}") from e


def _installed(command: list[str]) -> list[str]:
  """Runs find_ticket as slt_tf.cli.find_ticket (what bin/find_ticket runs), which is
  importable from any directory once slt_tf is installed."""
  return ["slt_tf.cli.find_ticket" if part == "bin.find_ticket" else part for part in command]


def _run_logged(command: list[str], log_path: str) -> int:
  """Runs `command`, appending its output to `log_path` through tf.io.gfile (any filesystem;
  a remote log is flushed at most every 10 s, not rewritten for every line); returns its exit
  status."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from slt_tf import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(os.path.dirname(log_path) or ".")
  interval = 0 if workdir_lib.is_local(log_path) else 10
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  with tf.io.gfile.GFile(log_path, "a") as log:
    flushed = time.time()
    for line in process.stdout:
      log.write(line)
      if time.time() - flushed >= interval:
        log.flush()
        flushed = time.time()
  return process.wait()


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from slt_tf import data  # pylint: disable=g-import-not-at-top
  from slt_tf import errors  # pylint: disable=g-import-not-at-top
  from slt_tf import sweep  # pylint: disable=g-import-not-at-top
  from slt_tf import train  # pylint: disable=g-import-not-at-top
  from slt_tf import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from slt_tf import workdir_evaluation  # pylint: disable=g-import-not-at-top

  config_arguments = sweep.config_arguments(flags.FLAGS)
  config_path = flags.FLAGS["config"].config_filename
  train.validate_config(_CONFIG.value)
  data.validate_evaluation_split(_SPLIT.value)
  num_steps = _CONFIG.value.num_steps
  runs = sweep.grid(_parse(_SEEDS.value, int, "seeds"),
                    _parse(_KEEP_FRACTIONS.value, float, "keep_fractions"),
                    _parse(_GLOBAL_KEEP_FRACTIONS.value, float, "global_keep_fractions"))

  try:
    shard_index, shard_count = (int(v) for v in _SHARD.value.split("/"))
    if not 0 <= shard_index < shard_count:
      raise ValueError
  except ValueError as e:
    raise errors.SltError(f"--shard must be INDEX/COUNT with 0 <= INDEX < COUNT, got "
                          f"{_SHARD.value!r}") from e
  if shard_count > 1:
    runs = runs[shard_index::shard_count]
  base_dir = _BASE_DIR.value
  tf.io.gfile.makedirs(base_dir)
  results, missing = [], []
  start_time = time.time()
  for run in runs:
    run_dir = (_DENSE_BASE_DIR.value or base_dir) if run.method == sweep.DENSE else base_dir
    workdir = os.path.join(run_dir, run.name)
    if _TRAIN.value and sweep.trained_step(workdir) < num_steps:
      overrides = {sweep.DENSE: _DENSE_OVERRIDES.value, sweep.GLOBAL: _GLOBAL_OVERRIDES.value}
      command = _installed(sweep.train_command(
          run, config_arguments=config_arguments, workdir=workdir,
          overrides=overrides.get(run.method, ())))
      logging.info("Training %s: %s", run.name, " ".join(command))
      train_start = time.time()
      log_path = os.path.join(run_dir, f"{run.name}.train.log")
      returncode = _run_logged(command, log_path)
      if returncode:
        raise errors.SltError(f"training {run.name} failed (exit status {returncode}); "
                              f"its output is in {log_path}")
      sweep.add_train_seconds(workdir, time.time() - train_start)
    step = sweep.trained_step(workdir)
    if step < num_steps:
      missing.append(f"{run.name} (step {step} of {num_steps})")
      continue
    metrics = workdir_lib.read_json(workdir_lib.metrics_path(workdir, split=_SPLIT.value))
    if (metrics is None or metrics["step"] != step
        or metrics["num_samples"] != _NUM_SAMPLES.value):
      metrics = workdir_evaluation.evaluate_workdir(workdir, num_samples=_NUM_SAMPLES.value,
                                                    split=_SPLIT.value)
    results.append(dict(metrics, group=run.group, seed=run.seed,
                        train_seconds=sweep.train_seconds(workdir)))
    if _FLOOR.value and run.method == sweep.DENSE:
      floor = workdir_lib.read_json(
          workdir_lib.metrics_path(workdir, untrained=True, split=_SPLIT.value))
      if floor is None or floor["num_samples"] != _NUM_SAMPLES.value:
        floor = workdir_evaluation.evaluate_workdir(workdir, num_samples=_NUM_SAMPLES.value,
                                                    untrained=True, split=_SPLIT.value)
      results.append(dict(floor, group=sweep.FLOOR, seed=run.seed))
  if shard_count > 1:
    print(f"Shard {_SHARD.value} done; tabulate with --notrain once every shard is.")
    return
  if _REAL_REFERENCE.value and results:
    path = os.path.join(base_dir, f"real_reference_{_SPLIT.value}.json")
    reference = workdir_lib.read_json(path)
    if reference is None or reference["num_samples"] != _NUM_SAMPLES.value:
      reference = workdir_evaluation.real_reference(
          os.path.join(base_dir, runs[0].name), num_samples=_NUM_SAMPLES.value,
          split=_SPLIT.value)
      workdir_lib.write_json(path, reference)
    results.append(dict(reference, group=sweep.REAL, seed=0))
  results_dir = _RESULTS_DIR.value or base_dir
  tf.io.gfile.makedirs(results_dir)
  dense_note = f", dense {' '.join(_DENSE_OVERRIDES.value)}" if _DENSE_OVERRIDES.value else ""
  written = sweep.write_results(
      results, results_dir,
      title=f"{config_path}, {num_steps} steps, {_NUM_SAMPLES.value} samples{dense_note}")
  first = {run.group: os.path.join((_DENSE_BASE_DIR.value or base_dir) if run.method ==
                                   sweep.DENSE else base_dir, run.name, "samples", "final.png")
           for run in reversed(runs)}  # The first seed's run of each row.
  shown = {label: first[group] for label, group in (("dense (GFMN, weights trained)", sweep.DENSE),
                                                    ("ticket, 10% of the weights kept", "keep 0.1"))
           if group in first and tf.io.gfile.exists(first[group])}
  if len(shown) == 2:
    sweep.side_by_side(shown, os.path.join(results_dir, "samples_dense_vs_ticket.png"),
                       title=f"{config_path}, seed {runs[0].seed}, {num_steps} steps")
  with tf.io.gfile.GFile(written["paths"]["results.md"]) as f:
    print(f.read())
  if missing:
    print("Not finished (left out of the table): " + ", ".join(missing))
  print(f"Wrote {', '.join(written['paths'].values())} in {time.time() - start_time:.0f} s.")


def run() -> None:
  """The `slt-sweep` console script (and `python -m bin.sweep`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
