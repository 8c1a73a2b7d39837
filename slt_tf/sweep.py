"""The dense-vs-ticket sweep: grid of runs, their commands, the results table and the plot.

The comparison of docs/method.md ("The claim we reproduce"): the dense generator trained with the
moment-matching loss, tickets at several keep fractions, each over several seeds with the
same step budget, and the untrained random generator as the floor. `bin/sweep.py` runs it;
this module holds what can be tested without training: run names, commands, aggregation,
the CSV / Markdown tables and the figure.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
import textwrap
from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import masking
from slt_tf import workdir as workdir_lib

DENSE = "dense"
FLOOR = "untrained"
REAL = "real data"  # Real training images scored like a generator: what a perfect one reaches.
GLOBAL = "global_edge_popup"
# Metrics in the tables (lower is better for fid and kid, higher for the others).
TABLE_METRICS = ("fid", "kid", "inception_score", "precision", "recall", "density", "coverage")


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the sweep: dense, or a ticket keeping `keep_fraction` of the weights."""
  method: str            # "dense", "edge_popup" or "global_edge_popup"
  keep_fraction: float | None
  seed: int

  @property
  def group(self) -> str:
    """The table row the run belongs to ("dense", "keep 0.1" or "global 0.1")."""
    if self.method == DENSE:
      return DENSE
    return f"{'global' if self.method == GLOBAL else 'keep'} {self.keep_fraction:g}"

  @property
  def name(self) -> str:
    """Its workdir name under the sweep's base directory."""
    if self.method == DENSE:
      return f"dense_s{self.seed}"
    return f"{'global' if self.method == GLOBAL else 'keep'}{self.keep_fraction:g}_s{self.seed}"


def grid(seeds: Sequence[int], keep_fractions: Sequence[float],
         global_keep_fractions: Sequence[float] = ()) -> list[Run]:
  """Seed-major order: every row's first seed comes before any second seed, so a sweep cut
  short still has one run per row. Per seed: dense, edge-popup tickets, global edge-popup."""
  for keep in list(keep_fractions) + list(global_keep_fractions):
    masking.validate_keep_fraction(keep)
  if not seeds:
    raise errors.SltError("the sweep needs at least one seed.")
  runs = []
  for seed in seeds:
    runs.append(Run(DENSE, None, int(seed)))
    runs.extend(Run("edge_popup", float(keep), int(seed)) for keep in keep_fractions)
    runs.extend(Run(GLOBAL, float(keep), int(seed)) for keep in global_keep_fractions)
  return runs


# Config keys the sweep sets for each run (--seeds, --keep_fractions, --global_keep_fractions).
PER_RUN_KEYS = ("method", "seed", "keep_fraction")


def config_arguments(flag_values, name: str = "config") -> list[str]:
  """`--config=PATH` and the `--config.KEY=VALUE` overrides parsed into `flag_values` (an
  ml_collections config flag), as bin/find_ticket takes them; SltError for a PER_RUN_KEYS key."""
  config_flag = flag_values[name]
  arguments = [f"--{name}={config_flag.config_filename}"]
  for key, value in config_flag.override_values.items():
    if key in PER_RUN_KEYS:
      raise errors.SltError(f"--{name}.{key} is set for each run by the sweep; drop it (use "
                            "--seeds, --keep_fractions, --global_keep_fractions)")
    if isinstance(value, tuple) and not value:
      arguments.append(f"--{name}.{key}=()")
    else:  # A tuple serialises as one --config.KEY=ITEM line per item.
      arguments.extend(flag_values[f"{name}.{key}"].serialize().split("\n"))
  return arguments


def train_command(run: Run, *, config_arguments: Sequence[str], workdir: str,
                  overrides: Sequence[str] = ()) -> list[str]:
  """The bin/find_ticket command line of `run` (a rerun resumes from its checkpoint).

  Args:
    run: the run.
    config_arguments: `--config=PATH` and the `--config.KEY=VALUE` flags of every run.
    workdir: the run's workdir.
    overrides: KEY=VALUE config overrides of this run's row (e.g. the dense runs'), applied
      after config_arguments.
  """
  command = [sys.executable, "-m", "bin.find_ticket", *config_arguments, f"--workdir={workdir}",
             f"--config.method={run.method}", f"--config.seed={run.seed}"]
  if run.method != DENSE:
    command.append(f"--config.keep_fraction={run.keep_fraction:g}")
  return command + [f"--config.{override}" for override in overrides]


def trained_step(workdir: str) -> int:
  """The step of the latest checkpoint in W/checkpoints (0 when there is none)."""
  latest = workdir_lib.latest_checkpoint(workdir)
  return latest.step if latest else 0


def train_seconds(workdir: str) -> float | None:
  """Wall seconds the sweep spent training `workdir` (all resumptions added), if recorded."""
  recorded = workdir_lib.read_json(os.path.join(workdir, workdir_lib.TRAIN_SECONDS_FILE))
  return None if recorded is None else float(recorded["seconds"])


def add_train_seconds(workdir: str, seconds: float) -> None:
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.TRAIN_SECONDS_FILE),
                         {"seconds": (train_seconds(workdir) or 0.0) + seconds})


def _row_order(group: str) -> tuple[int, float]:
  fixed = {DENSE: 0, FLOOR: 3, REAL: 4}
  if group in fixed:
    return (fixed[group], 0.0)
  kind, keep = group.split()
  return (1 if kind == "keep" else 2, float(keep))


def _keep_fraction(group: str) -> float | None:
  return None if group in (DENSE, FLOOR, REAL) else float(group.split()[1])


def summarize(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and sample std (ddof=1; 0 for one run) of each metric per row.

  Args:
    results: per-run dicts with "group" (e.g. "dense", "keep 0.1", "untrained"), "seed" and
      the metrics of TABLE_METRICS (None values are skipped).

  Returns:
    One dict per row, dense first, then tickets by keep fraction, then the floor: group,
    keep_fraction (None for dense and floor), num_runs, seeds, and <metric>_mean, <metric>_std.
  """
  groups: dict[str, list[dict[str, Any]]] = {}
  for result in results:
    groups.setdefault(result["group"], []).append(result)
  rows = []
  for group in sorted(groups, key=_row_order):
    members = groups[group]
    row = {"group": group,
           "keep_fraction": _keep_fraction(group),
           "num_runs": len(members),
           "seeds": " ".join(str(m["seed"]) for m in sorted(members, key=lambda m: m["seed"]))}
    for metric in TABLE_METRICS:
      values = np.array([m[metric] for m in members if m.get(metric) is not None], np.float64)
      row[f"{metric}_mean"] = float(values.mean()) if len(values) else None
      row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else (
          0.0 if len(values) else None)
    rows.append(row)
  return rows


def summary_csv(rows: Sequence[dict[str, Any]]) -> str:
  """The summary rows as CSV text (one line per row, mean and std columns per metric)."""
  columns = ["group", "keep_fraction", "num_runs", "seeds"] + [
      f"{metric}_{stat}" for metric in TABLE_METRICS for stat in ("mean", "std")]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, columns, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
  return buffer.getvalue()


def runs_csv(results: Sequence[dict[str, Any]]) -> str:
  """Per-run results as CSV text."""
  columns = ["group", "seed", "step", "num_samples", "num_real"] + list(TABLE_METRICS) + [
      "train_seconds", "samples_per_second", "peak_memory_mb"]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
  writer.writeheader()
  for result in sorted(results, key=lambda r: (_row_order(r["group"]), r["seed"])):
    writer.writerow({c: ("" if result.get(c) is None else result[c]) for c in columns})
  return buffer.getvalue()


def _mean_std(row: dict[str, Any], metric: str, digits: int) -> str:
  mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
  if mean is None:
    return "-"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_markdown(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table: one line per row, `mean ± std` over its seeds, plus FID / dense FID."""
  dense = next((r for r in rows if r["group"] == DENSE), None)
  header = ("| row | runs | FID | FID / dense | KID | IS | precision | recall | density | "
            "coverage |")
  lines = [header, "|" + "---|" * 10]
  for row in rows:
    ratio = "-"
    if dense is not None and dense["fid_mean"] and row["fid_mean"] is not None:
      ratio = f"{row['fid_mean'] / dense['fid_mean']:.2f}"
    lines.append(
        f"| {row['group']} | {row['num_runs']} | {_mean_std(row, 'fid', 2)} | {ratio} | "
        f"{_mean_std(row, 'kid', 4)} | {_mean_std(row, 'inception_score', 2)} | "
        f"{_mean_std(row, 'precision', 3)} | {_mean_std(row, 'recall', 3)} | "
        f"{_mean_std(row, 'density', 3)} | {_mean_std(row, 'coverage', 3)} |")
  return "\n".join(lines) + "\n"


def claim_verdict(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The claim (docs/method.md) as targets checked on the means: keep 0.1 <= 1.1 x dense,
  keep 0.3 <= dense."""
  by_group = {row["group"]: row for row in rows}
  dense = by_group.get(DENSE)
  if dense is None or dense["fid_mean"] is None:
    return ["no dense baseline: the claim cannot be checked."]
  verdicts = []
  for group, factor in (("keep 0.1", 1.1), ("keep 0.3", 1.0)):
    row = by_group.get(group)
    if row is None or row["fid_mean"] is None:
      verdicts.append(f"{group}: not run.")
      continue
    bound = factor * dense["fid_mean"]
    holds = row["fid_mean"] <= bound
    verdicts.append(
        f"{group}: mean FID {row['fid_mean']:.2f} vs {factor:g} x dense "
        f"{dense['fid_mean']:.2f} = {bound:.2f}: {'holds' if holds else 'does NOT hold'}.")
  return verdicts


def significance(rows: Sequence[dict[str, Any]], metric: str = "fid") -> list[str]:
  """Each ticket row against dense: Welch's two-sample t-test on the per-seed values (from the
  rows' means, sample stds and counts; unequal variances), two-sided p-value."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  by_group = {row["group"]: row for row in rows}
  dense = by_group.get(DENSE)
  if dense is None or dense["num_runs"] < 2:
    return ["fewer than 2 dense runs: no significance test."]
  lines = []
  for row in rows:
    if row["keep_fraction"] is None or row[f"{metric}_mean"] is None:
      continue
    if row["num_runs"] < 2:
      lines.append(f"{row['group']}: 1 run, no test.")
      continue
    result = stats.ttest_ind_from_stats(
        row[f"{metric}_mean"], row[f"{metric}_std"], row["num_runs"], dense[f"{metric}_mean"],
        dense[f"{metric}_std"], dense["num_runs"], equal_var=False)
    difference = row[f"{metric}_mean"] - dense[f"{metric}_mean"]
    verdict = ("larger than the seed spread (p < 0.05)" if result.pvalue < 0.05
               else "within the seed spread (p >= 0.05)")
    lines.append(f"{row['group']} - dense: {metric} {difference:+.2f}, Welch t-test p = "
                 f"{result.pvalue:.3f} ({row['num_runs']} vs {dense['num_runs']} seeds): "
                 f"{verdict}.")
  return lines


def plot(rows: Sequence[dict[str, Any]], path: str, *, title: str = "") -> None:
  """FID against keep fraction: tickets with seed std error bars, dense as a band (mean ± std),
  the untrained floor as a dashed line. Writes a PNG (matplotlib, Agg backend)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # Only when plotting.
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  tickets = sorted((r for r in rows if r["group"].startswith("keep ")
                    and r["fid_mean"] is not None), key=lambda r: r["keep_fraction"])
  global_rows = [r for r in rows if r["group"].startswith("global ") and r["fid_mean"] is not None]
  by_group = {row["group"]: row for row in rows}
  figure, axes = pyplot.subplots(figsize=(6, 4), dpi=120)
  lo, hi = 0.03, 1.0
  if tickets:
    lo = min(lo, 0.8 * tickets[0]["keep_fraction"])
  dense = by_group.get(DENSE)
  if dense is not None and dense["fid_mean"] is not None:
    mean, std = dense["fid_mean"], dense["fid_std"] or 0.0
    axes.axhspan(mean - std, mean + std, color="tab:orange", alpha=0.25)
    axes.axhline(mean, color="tab:orange", label=f"dense ({dense['num_runs']} seeds)")
  floor = by_group.get(FLOOR)
  if floor is not None and floor["fid_mean"] is not None:
    axes.axhline(floor["fid_mean"], color="tab:gray", linestyle="--",
                 label="untrained random generator")
  real = by_group.get(REAL)
  if real is not None and real["fid_mean"] is not None:
    axes.axhline(real["fid_mean"], color="tab:green", linestyle=":",
                 label="real training images (perfect generator)")
  if global_rows:
    axes.errorbar([r["keep_fraction"] for r in global_rows], [r["fid_mean"] for r in global_rows],
                  yerr=[r["fid_std"] or 0.0 for r in global_rows], marker="s", linestyle="none",
                  capsize=4, color="tab:purple", label="global edge-popup, mean ± std")
  if tickets:
    axes.errorbar([r["keep_fraction"] for r in tickets], [r["fid_mean"] for r in tickets],
                  yerr=[r["fid_std"] or 0.0 for r in tickets], marker="o", capsize=4,
                  color="tab:blue", label="ticket (edge-popup), mean ± std")
  axes.set_xscale("log")
  axes.set_xlim(lo, hi)
  axes.set_xticks([r["keep_fraction"] for r in tickets] or [0.1])
  axes.set_xticklabels([f"{r['keep_fraction']:g}" for r in tickets] or ["0.1"])
  axes.set_xlabel("keep fraction (fraction of weights kept)")
  axes.set_ylabel("FID (lower is better, log scale)")
  axes.set_yscale("log")  # The floor and the real-data row are orders of magnitude apart.
  if title:
    axes.set_title(textwrap.fill(title, 90), fontsize=7)
  axes.legend(fontsize=8)
  axes.grid(alpha=0.3)
  figure.tight_layout()
  _save_figure(figure, path)


def _save_figure(figure, path: str) -> None:
  """Writes a matplotlib figure (format from the extension, e.g. .png) through tf.io.gfile,
  atomically, and closes it."""
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top  # Only when plotting.
  buffer = io.BytesIO()
  figure.savefig(buffer, format=os.path.splitext(path)[1][1:] or "png")
  pyplot.close(figure)
  workdir_lib.atomic_write(path, buffer.getvalue())


def write_results(results: Sequence[dict[str, Any]], base_dir: str, *, title: str = "") -> dict:
  """Writes results.csv (summary), runs.csv (per run), results.md and fid_vs_keep_fraction.png.

  Returns:
    {"rows": summary rows, "verdict": claim_verdict lines, "paths": written files}.
  """
  if not results:
    raise errors.SltError(f"no evaluated runs under {base_dir}: nothing to tabulate.")
  rows = summarize(results)
  paths = {name: os.path.join(base_dir, name) for name in
           ("results.csv", "runs.csv", "results.md", "fid_vs_keep_fraction.png")}
  verdict = claim_verdict(rows) + significance(rows)
  texts = {
      "results.csv": summary_csv(rows),
      "runs.csv": runs_csv(results),
      "results.md": (summary_markdown(rows) + "\n" + "\n".join(f"- {v}" for v in verdict)
                     + "\n"),
  }
  for name, text in texts.items():
    workdir_lib.atomic_write(paths[name], text)
  plot(rows, paths["fid_vs_keep_fraction.png"], title=title)
  return {"rows": rows, "verdict": verdict, "paths": paths}


def read_eval_curve(workdir: str, metric: str = "fid") -> list[tuple[int, float]]:
  """(step, value) of the periodic evaluation's `eval/<metric>` scalars in W/tensorboard/eval,
  sorted by step (the last value written for a step wins)."""
  values = {}
  pattern = os.path.join(workdir_lib.tensorboard_dir(workdir, "eval"), "events.out.tfevents.*")
  for path in sorted(tf.io.gfile.glob(pattern)):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == f"eval/{metric}":
          values[int(event.step)] = float(tf.make_ndarray(value.tensor))
  return sorted(values.items())


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str, *, title: str = "",
                ylabel: str = "validation FID (lower is better)") -> None:
  """One line per label: metric against training step (e.g. the dense learning rates)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # Only when plotting.
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  figure, axes = pyplot.subplots(figsize=(6, 4), dpi=120)
  for label, points in curves.items():
    if points:
      axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                label=label)
  axes.set_xlabel("training step")
  axes.set_ylabel(ylabel)
  axes.set_yscale("log")
  if title:
    axes.set_title(title, fontsize=9)
  axes.legend(fontsize=8)
  axes.grid(alpha=0.3, which="both")
  figure.tight_layout()
  _save_figure(figure, path)


def side_by_side(grids: dict[str, str], path: str, *, title: str = "") -> None:
  """The sample-grid PNGs of several runs next to each other, each titled with its label."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # Only when plotting.
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  figure, axes = pyplot.subplots(1, len(grids), figsize=(4 * len(grids), 4.4), dpi=120,
                                 squeeze=False)
  for axis, (label, grid_path) in zip(axes[0], grids.items()):
    with tf.io.gfile.GFile(grid_path, "rb") as f:
      image = tf.io.decode_png(f.read()).numpy()
    axis.imshow(image.squeeze(), cmap="gray", interpolation="nearest", vmin=0, vmax=255)
    axis.set_title(label, fontsize=10)
    axis.axis("off")
  if title:
    figure.suptitle(title, fontsize=9)
  figure.tight_layout()
  _save_figure(figure, path)
