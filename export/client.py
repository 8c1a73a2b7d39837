"""Moved to slt_tf/export/client.py (installed with the package); `export.client` is the same module."""

import sys

from slt_tf.export import client as _module

sys.modules[__name__] = _module
