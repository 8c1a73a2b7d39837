"""Moved to slt_tf/export/bake.py (installed with the package); `export.bake` is the same module."""

import sys

from slt_tf.export import bake as _module

sys.modules[__name__] = _module
