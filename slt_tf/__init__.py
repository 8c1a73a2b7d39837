"""slt_tf: strong lottery tickets in generative models, in TensorFlow/Keras 3.

The Python API (`slt_tf.find_ticket`, `slt_tf.load_generator`, `slt_tf.generate`,
`slt_tf.evaluate`, `slt_tf.export_saved_model`, `slt_tf.export_tflite`, `slt_tf.load_config`)
lives in slt_tf/api.py and is imported on first use, so `import slt_tf` stays light.
"""

from __future__ import annotations

import importlib
import os

# Keras 3 must run on the TensorFlow backend: the custom train_step, tf.distribute and
# SavedModel export all rely on it. Set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_API = ("find_ticket", "load_config", "load_generator", "generate", "evaluate",
        "export_saved_model", "export_tflite")


def keras_backend_error() -> str | None:
  """None on the TensorFlow backend; else one line saying what is wrong and what is allowed."""
  backend = os.environ.get("KERAS_BACKEND", "tensorflow")
  if backend == "tensorflow":
    return None
  return (f"slt_tf needs the TensorFlow backend of Keras, but KERAS_BACKEND={backend!r}; "
          "unset it or set KERAS_BACKEND=tensorflow")


def __getattr__(name: str):
  if name in _API:
    return getattr(importlib.import_module(f"{__name__}.api"), name)  # Lazy: TF, Keras.
  raise AttributeError(f"module 'slt_tf' has no attribute {name!r}")
