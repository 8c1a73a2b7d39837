"""The binaries (`python -m bin.<name>` and the `slt-<name>` console scripts run these modules).

Importing this package checks the Keras backend first: slt_tf needs TensorFlow's, and with
KERAS_BACKEND set to another one every binary stops here with one line, before Keras loads.
"""

import os
import sys

import slt_tf


def _check_backend() -> None:
  backend = slt_tf.keras_backend_error()
  if backend is not None:
    program = os.path.splitext(os.path.basename(sys.argv[0] or "slt_tf"))[0]
    sys.exit(f"{program}: error: {backend}")


_check_backend()
