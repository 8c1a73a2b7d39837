"""Evaluates a run's latest checkpoint (ticket or dense): FID, KID, IS, PRDC on held-out data.

  python -m bin.evaluate --workdir=runs/digits
  python -m bin.evaluate --workdir=runs/digits --num_samples=2000
  python -m bin.evaluate --workdir=runs/digits --untrained   # the random generator: the floor

Writes W/metrics.json (W/metrics_untrained.json with --untrained) and TensorBoard scalars in
W/tensorboard/eval, then prints the metrics, the throughput and the peak memory.
"""

from absl import flags

import slt_tf  # pylint: disable=unused-import
from slt_tf.cli import common as cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by bin/find_ticket.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Generated samples (default: the "
                                    "run config's eval.num_samples).", lower_bound=2)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Images per generator and eval network "
                                   "call.", lower_bound=1)
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache of the eval network and real "
                                 "activations (default: the config's, else ~/.cache/slt_tf).")
_UNTRAINED = flags.DEFINE_bool("untrained", False, "Evaluate the generator as initialised "
                               "(step 0, no checkpoint) and write metrics_untrained.json.")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  from slt_tf import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from slt_tf import workdir_evaluation  # pylint: disable=g-import-not-at-top
  metrics = workdir_evaluation.evaluate_workdir(
      _WORKDIR.value, num_samples=_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value,
      cache_dir=_CACHE_DIR.value, untrained=_UNTRAINED.value, progress=True)
  values = ", ".join(f"{name}={metrics[name]:.4g}" for name in
                     ("fid", "kid", "inception_score", "precision", "recall", "density",
                      "coverage") if metrics[name] is not None)
  print(f"step {metrics['step']} ({metrics['eval_network']}, {metrics['num_samples']} generated "
        f"vs {metrics['num_real']} real {metrics['split']}): {values}")
  if metrics["confident_fraction"] is not None:
    print(f"judge confidence: {metrics['confident_fraction']:.1%} of samples classified with "
          f"p >= {metrics_lib.CONFIDENCE_THRESHOLD}, in {metrics['confident_classes']} classes")
  print(f"throughput {metrics['samples_per_second']:.1f} samples/s, peak memory "
        f"{metrics['peak_memory_mb']:.0f} MiB, {metrics['seconds']:.1f} s in total")


def run() -> None:
  """The `slt-evaluate` console script (and `python -m bin.evaluate`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
