"""What every binary shares: flag parsing and SltError reported as one line, no traceback."""

import os
import sys

from absl import app
from absl import flags


def _program() -> str:
  return os.path.splitext(os.path.basename(sys.argv[0]))[0]


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad --config.KEY (ml_collections raises KeyError/AttributeError/
  TypeError/ValueError) also ends in one line naming the problem."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"{_program()}: error: {e} (see --help)")
  except (KeyError, AttributeError) as e:
    key = str(e).strip("\"'")
    sys.exit(f"{_program()}: error: unknown config key {key}; the known keys and their "
             "defaults are in configs/default.py")
  except (TypeError, ValueError) as e:
    sys.exit(f"{_program()}: error: bad config override: {e}")


def run(main) -> None:
  """app.run(main) with one-line errors for bad flags and for slt_tf.errors.SltError."""
  from slt_tf import errors  # pylint: disable=g-import-not-at-top

  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
      main(argv)
    except errors.SltError as e:
      sys.exit(f"{_program()}: error: {e}")

  app.run(guarded, flags_parser=parse_flags)
