"""Finds a strong lottery ticket in a random generator (or trains it densely: method=dense).

  python -m bin.find_ticket --config=configs/digits.py --workdir=runs/digits
  python -m bin.find_ticket --config=configs/test.py --workdir=/tmp/t --config.keep_fraction=0.3

A rerun with the same workdir resumes from the latest checkpoint (or --resume_from=ckpt-N). One
run per workdir (W/.lock). SIGTERM or Ctrl-C saves a checkpoint of the current step and exits
(exit status 1 / 130). Several GPUs, several hosts (TF_CONFIG), preemption: docs/scaling.md.
"""

from absl import flags
from ml_collections import config_flags
import tensorflow as tf

import slt_tf  # pylint: disable=unused-import
from slt_tf.cli import common as cli
from slt_tf import distribution

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]); override keys with --config.KEY=VALUE.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard, "
                               "samples, ticket. Rerunning with it resumes.")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", distribution.STRATEGIES,
                              "auto: multi_worker if TF_CONFIG names several tasks, else "
                              "mirrored; mirrored: all local GPUs (else CPU); multi_worker: "
                              "from TF_CONFIG; one_device: one GPU or the CPU.")
_CPU_REPLICAS = flags.DEFINE_integer("cpu_replicas", 0, "Split the CPU into N logical devices "
                                     "and mirror over them (testing on CPU).", lower_bound=0)
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False, "tf.config.experimental."
                                   "enable_op_determinism(): bit-identical reruns on GPUs too "
                                   "(CPU runs already are; see docs/scaling.md).")
_RESUME_FROM = flags.DEFINE_string(
    "resume_from", None, "Resume from this checkpoint of the workdir (ckpt-N) instead of the "
    "latest, e.g. when the latest is damaged (the run then says so and names the newest usable "
    "one). Newer checkpoints are moved to W/checkpoints/superseded-<time>/, never overwritten.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  distribution.split_cpu(_CPU_REPLICAS.value)
  if _DETERMINISTIC.value:
    tf.config.experimental.enable_op_determinism()
  from slt_tf import train  # pylint: disable=g-import-not-at-top
  strategy = distribution.make_strategy(_STRATEGY.value, _CPU_REPLICAS.value)
  summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, strategy=strategy,
                                     resume_from=_RESUME_FROM.value)
  if distribution.is_chief(strategy):
    print(train.format_summary(summary))


def run() -> None:
  """The `slt-find-ticket` console script (and `python -m bin.find_ticket`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
