"""TF-GAN's evaluation functions on TensorFlow >= 2.16, where `import tensorflow_gan` fails.

`tensorflow_gan/__init__.py` imports its Estimator code, which needs the removed
`tf.estimator` (tensorflow/gan#55). The two modules we need,
`tensorflow_gan/python/eval/classifier_metrics.py` and `eval_utils.py`, only need
TensorFlow, TensorFlow Probability and NumPy. We load them with their parent packages
(`tensorflow_gan`, `tensorflow_gan.python`, `tensorflow_gan.python.eval`) replaced by empty
packages that carry the real `__path__`, so no package `__init__` runs (the `eval` package's
would also import tensorflow_hub and TF1 summaries). Once both modules are loaded, the empty
packages are taken out of `sys.modules` again, so a later real `import tensorflow_gan`
behaves exactly as it would without this module (it still fails on TF >= 2.16).

The loading happens on first use, not at import time, and only once per process.
"""

import functools
import importlib
import importlib.util
import os
import sys
import types
from typing import Any

_PARENT_PACKAGES = ("tensorflow_gan", "tensorflow_gan.python", "tensorflow_gan.python.eval")


def _package_directory() -> str:
  """Returns the directory of the installed `tensorflow_gan` package, without importing it."""
  spec = importlib.util.find_spec("tensorflow_gan")  # Only reads finders; runs no __init__.
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("tensorflow_gan is not installed; install tensorflow-gan==2.1.0 "
                      "(with tensorflow-probability and tf-keras), see requirements.txt.")
  return list(spec.submodule_search_locations)[0]


@functools.cache
def _eval_modules() -> tuple[types.ModuleType, types.ModuleType]:
  """Imports and returns TF-GAN's (classifier_metrics, eval_utils) modules."""
  if "tensorflow_gan.python.eval.classifier_metrics" in sys.modules:  # e.g. TF < 2.16.
    return (sys.modules["tensorflow_gan.python.eval.classifier_metrics"],
            sys.modules["tensorflow_gan.python.eval.eval_utils"])
  directory = _package_directory()
  stubs = []
  for depth, name in enumerate(_PARENT_PACKAGES):
    if name in sys.modules:  # A real (or partially imported) package: leave it alone.
      continue
    package = types.ModuleType(name)
    package.__path__ = [os.path.join(directory, *name.split(".")[1:depth + 1])]
    package.__package__ = name
    sys.modules[name] = package
    stubs.append(name)
  try:
    classifier_metrics = importlib.import_module(
        "tensorflow_gan.python.eval.classifier_metrics")
    eval_utils = importlib.import_module("tensorflow_gan.python.eval.eval_utils")
  finally:
    for name in reversed(stubs):
      del sys.modules[name]
  return classifier_metrics, eval_utils


def frechet_classifier_distance_from_activations(activations1: Any, activations2: Any) -> Any:
  """TF-GAN's FID from activations [N, D] (Heusel et al. 2017); float64 inside."""
  return _eval_modules()[0].frechet_classifier_distance_from_activations(
      activations1, activations2)


def kernel_classifier_distance_and_std_from_activations(
    activations1: Any, activations2: Any, max_block_size: int = 1024,
    dtype: Any = None) -> Any:
  """TF-GAN's block KID estimate and its standard error (Binkowski et al. 2018)."""
  return _eval_modules()[0].kernel_classifier_distance_and_std_from_activations(
      activations1, activations2, max_block_size=max_block_size, dtype=dtype)


def classifier_score_from_logits(logits: Any) -> Any:
  """TF-GAN's Inception score exp(E_x KL(p(y|x) || p(y))) of logits [N, K] (one split)."""
  return _eval_modules()[0].classifier_score_from_logits(logits)


def image_grid(input_tensor: Any, grid_shape: Any, image_shape: Any = (32, 32),
               num_channels: int = 3) -> Any:
  """TF-GAN's image_grid: [rows*cols, H, W, C] -> [1, rows*H, cols*W, C]."""
  return _eval_modules()[1].image_grid(
      input_tensor, grid_shape, image_shape=image_shape, num_channels=num_channels)
