"""Describes the ticket of a workdir: kept weights per layer, sizes, frozen-weight check.

  python -m bin.inspect_ticket --workdir=runs/digits [--json]
"""

import json
from absl import flags

import slt_tf  # pylint: disable=unused-import
from slt_tf.cli import common as cli
from slt_tf import inspection

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by bin/find_ticket.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
_INIT_CHECKPOINT = flags.DEFINE_string(
    "init_checkpoint", None, "For a ticket found inside a trained generator: its source "
    "checkpoint (default: the path the ticket records).")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  report = inspection.inspect_workdir(_WORKDIR.value, _INIT_CHECKPOINT.value)
  print(json.dumps(report, indent=2) if _JSON.value else inspection.format_table(report))


def run() -> None:
  """The `slt-inspect-ticket` console script (and `python -m bin.inspect_ticket`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
