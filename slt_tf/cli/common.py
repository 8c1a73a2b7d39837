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
             "defaults are in slt_tf/config_schema.py")
  except (TypeError, ValueError) as e:
    sys.exit(f"{_program()}: error: bad config override: {e}")
  except (SyntaxError, ImportError, NameError, OSError) as e:  # Loading a --config file.
    where = f" ({e.filename}, line {e.lineno})" if isinstance(e, SyntaxError) else ""
    text = (e.msg if isinstance(e, SyntaxError) else str(e).splitlines()[0]) if str(e) else ""
    sys.exit(f"{_program()}: error: cannot load the config file: {type(e).__name__}: "
             f"{text}{where}; fix it (see slt_tf/config_schema.py) or pass another --config")


def _adopt_help(main) -> None:
  """`--help` of a console script (or of a bin/ wrapper) shows the binary's docstring and its
  flags, as when its module is run itself: absl looks both up under sys.argv[0]."""
  module = sys.modules.get(getattr(main, "__module__", ""))
  main_module = sys.modules.get("__main__")
  if module is None or module is main_module:
    return
  if main_module is not None and module.__doc__:
    main_module.__doc__ = module.__doc__
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(main) -> None:
  """app.run(main) with one-line errors for bad flags and for slt_tf.errors.SltError."""
  from slt_tf import errors  # pylint: disable=g-import-not-at-top
  _adopt_help(main)

  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
      main(argv)
    except errors.SltError as e:
      # Preempted (SIGTERM/SIGINT, checkpoint saved) exits 128 + the signal, as shells do.
      print(f"{_program()}: error: {e}", file=sys.stderr)
      sys.exit(getattr(e, "exit_code", 1))
    except OSError as e:  # A file system refusing a write (disk full, read-only, ...).
      where = f" ({e.filename})" if e.filename else ""
      print(f"{_program()}: error: {e.strerror or e}{where}; free space or fix permissions, "
            "then rerun", file=sys.stderr)
      sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves a checkpoint first).
      print(f"{_program()}: error: interrupted (SIGINT); nothing more was saved: rerun the "
            "same command to start again (a find_ticket run resumes from its latest checkpoint)",
            file=sys.stderr)
      sys.exit(130)

  app.run(guarded, flags_parser=parse_flags)
