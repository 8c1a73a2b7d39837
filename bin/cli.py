"""Moved to slt_tf/cli/common.py (installed with the package); `bin.cli` is the same module."""

import sys

from slt_tf.cli import common as _module

sys.modules[__name__] = _module
