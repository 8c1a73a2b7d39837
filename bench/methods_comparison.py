"""The table and plot of docs/results_methods.md from the runs of one comparison directory.

Each run is BASE/<method>_<keep> (or BASE/dense) written by bin/find_ticket and scored by
bin/evaluate (metrics.json); BASE/times.txt holds the wall seconds of training each run
(lines "<name> train rc=0 wall_s=<seconds> ..."). The number of weight updates is read from
the run's checkpoint step and method: tickets (edge-popup, global, Gem-Miner) update scores
only, never a weight; dense and IMP update every kept weight once per optimiser step.

  python -m bench.methods_comparison --base_dir=runs/methods --plot=docs/images/results_methods_fid.png

BASE/inside_dense_<keep> (optional) is edge-popup run inside the trained dense generator
(`generator.init_checkpoint=BASE/dense`).
"""

from __future__ import annotations

import json
import os
import re

from absl import app
from absl import flags

_BASE_DIR = flags.DEFINE_string("base_dir", "runs/methods", "Directory of the runs.")
_PLOT = flags.DEFINE_string("plot", "", "Where to write the FID bar plot (PNG); empty: none.")
_TITLE = flags.DEFINE_string("title", "digits, 300 steps, seed 0", "Title of the plot.")

ROWS = (("dense", "dense"), ("edge_popup", "edge-popup"),
        ("global_edge_popup", "global edge-popup"),
        ("global_edge_popup_u01", "global edge-popup, score_init uniform_01"),
        ("gem_miner", "Gem-Miner"),
        ("imp", "IMP (rewinding)"),
        ("inside_dense", "edge-popup inside the trained dense generator"))
KEEPS = (0.1, 0.3)


def _wall_seconds(base_dir: str) -> dict[str, float]:
  times = {}
  path = os.path.join(base_dir, "times.txt")
  if os.path.exists(path):
    for line in open(path):
      match = re.match(r"^(\S+) train rc=0 wall_s=([\d.]+)", line)
      if match:
        times[match.group(1)] = float(match.group(2))
  return times


def _kept(workdir: str, method: str) -> float | None:
  """The fraction of kernel weights the run keeps (ticket counts, IMP's masks)."""
  log = os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".train.log")
  if not os.path.exists(log):
    return None
  text = open(log).read()
  match = re.search(r"keeping ([\d,]+) of ([\d,]+) weights", text) or re.search(
      r"\(([\d,]+) of ([\d,]+) kept\)", text)
  if method == "dense":
    return 1.0
  if not match:
    return None
  return int(match.group(1).replace(",", "")) / int(match.group(2).replace(",", ""))


def collect(base_dir: str) -> list[dict]:
  times = _wall_seconds(base_dir)
  rows = []
  for method, label in ROWS:
    for keep in (None,) if method == "dense" else KEEPS:
      name = "dense" if keep is None else f"{method}_{keep:g}"
      workdir = os.path.join(base_dir, name)
      if method != "dense" and not os.path.isdir(workdir):
        continue  # A method this comparison did not run.
      row = {"name": name, "label": label, "keep_target": keep, "method": method}
      metrics_path = os.path.join(workdir, "metrics.json")
      if os.path.exists(metrics_path):
        metrics = json.load(open(metrics_path))
        row.update({k: metrics[k] for k in ("fid", "kid", "precision", "recall", "density",
                                            "coverage", "step", "eval_network", "num_samples")})
        row["weight_updates"] = row["step"] if method in ("dense", "imp") else 0
        row["kept"] = _kept(workdir, method)
      row["wall_s"] = times.get(name)
      rows.append(row)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| method | keep (target) | kept (reached) | FID | KID | precision | recall | density "
           "| coverage | optimiser steps | weight updates | train wall |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    keep = "1 (all)" if row["keep_target"] is None else f"{row['keep_target']:g}"
    if "fid" not in row:
      lines.append(f"| {row['label']} | {keep} | not run (see below) |" + " |" * 9)
      continue
    kept = "-" if row["kept"] is None else f"{row['kept']:.4f}"
    wall = "-" if row["wall_s"] is None else f"{row['wall_s'] / 60:.1f} min"
    lines.append(
        f"| {row['label']} | {keep} | {kept} | {row['fid']:.2f} | {row['kid']:.4f} | "
        f"{row['precision']:.3f} | {row['recall']:.3f} | {row['density']:.3f} | "
        f"{row['coverage']:.3f} | {row['step']} | {row['weight_updates']} | {wall} |")
  return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, axis = pyplot.subplots(figsize=(8, 4))
  methods = [(m, l) for m, l in ROWS
             if m != "dense" and any(r["method"] == m for r in rows)]
  width = 0.38
  for offset, keep in zip((-width / 2, width / 2), KEEPS):
    values = [next((r.get("fid", 0.0) for r in rows if r["name"] == f"{m}_{keep:g}"), 0.0)
              for m, _ in methods]
    bars = axis.bar([i + offset for i in range(len(methods))], values, width,
                    label=f"keep {keep:g}")
    for bar, value in zip(bars, values):
      if not value:
        axis.text(bar.get_x() + bar.get_width() / 2, 1, "not run", rotation=90, ha="center",
                  va="bottom", fontsize=7)
  dense = next((r.get("fid") for r in rows if r["name"] == "dense"), None)
  if dense:
    axis.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense {dense:.1f}")
  axis.set_xticks(range(len(methods)), [l.replace(", ", ",\n").replace(" (", "\n(")
                                         .replace("global ", "global\n")
                                         .replace(" inside", "\ninside") for _, l in methods],
                  fontsize=7)
  scored = next((r for r in rows if "fid" in r), {})
  axis.set_ylabel(f"FID ({scored.get('eval_network', '?')}, {scored.get('num_samples', '?')} "
                  "samples)")
  axis.set_title(_TITLE.value, fontsize=9)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def main(argv):
  del argv
  rows = collect(_BASE_DIR.value)
  print(markdown(rows))
  if _PLOT.value:
    plot(rows, _PLOT.value)
    print(f"wrote {_PLOT.value}")


if __name__ == "__main__":
  app.run(main)
