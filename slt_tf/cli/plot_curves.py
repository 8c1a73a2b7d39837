"""Plots the periodic evaluation of several runs against the training step (one PNG).

  python -m bin.plot_curves --runs="dense lr 1e-3=runs/tune/dense_lr1e-3,..." --out=curve.png

Reads each run's `eval/<metric>` TensorBoard scalars (written with config.eval.every_steps).
"""

from absl import flags

import slt_tf  # pylint: disable=unused-import
from slt_tf.cli import common as cli

_RUNS = flags.DEFINE_list("runs", None, "LABEL=WORKDIR pairs, comma-separated.")
_OUT = flags.DEFINE_string("out", None, "PNG file to write.")
_METRIC = flags.DEFINE_string("metric", "fid", "Metric of the eval/<metric> scalars.")
_TITLE = flags.DEFINE_string("title", "", "Title of the plot.")
_CSV = flags.DEFINE_string("csv", None, "Also write the curves as CSV (label, step, value).")
flags.mark_flags_as_required(["runs", "out"])


def main(argv):
  del argv
  from slt_tf import errors  # pylint: disable=g-import-not-at-top
  from slt_tf import sweep  # pylint: disable=g-import-not-at-top
  curves = {}
  for pair in _RUNS.value:
    label, separator, workdir = pair.partition("=")
    if not separator:
      raise errors.SltError(f"--runs takes LABEL=WORKDIR pairs, got {pair!r}")
    curves[label] = sweep.read_eval_curve(workdir, _METRIC.value)
    if not curves[label]:
      raise errors.SltError(f"{workdir} has no eval/{_METRIC.value} scalars (train it with "
                            "--config.eval.every_steps=N)")
    print(f"{label}: " + ", ".join(f"{step}: {value:.4g}" for step, value in curves[label]))
  if _CSV.value:
    with open(_CSV.value, "w", encoding="utf-8") as f:
      f.write(f"label,step,{_METRIC.value}\n")
      f.writelines(f"{label},{step},{value}\n" for label, points in curves.items()
                   for step, value in points)
  sweep.plot_curves(curves, _OUT.value, title=_TITLE.value,
                    ylabel=f"{_METRIC.value} (periodic evaluation)")
  print(f"Wrote {_OUT.value}")


def run() -> None:
  """The `slt-plot-curves` console script (and `python -m bin.plot_curves`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
