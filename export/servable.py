"""Moved to slt_tf/export/servable.py (installed with the package); `export.servable` is the same module."""

import sys

from slt_tf.export import servable as _module

sys.modules[__name__] = _module
