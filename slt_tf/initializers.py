"""Frozen-weight and score initialisers that regenerate bit for bit from (seed, layer, tensor).

The frozen weights of a ticket are never stored: they are regenerated from the run's seed, so
they are drawn with NumPy's counter-free `Generator` (PCG64 seeded by a SeedSequence over the
run seed and a stable hash of the layer and tensor names), which gives the same float32 bits on
every platform and TensorFlow version.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from slt_tf import errors

WEIGHT_INITS = ("signed_kaiming_constant", "kaiming_normal", "normal_002")
SCORE_INITS = ("kaiming_uniform", "uniform_01", "unit_uniform")


def _rng(seed: int, layer_name: str, tensor_name: str) -> np.random.Generator:
  entropy = [int(seed), zlib.crc32(layer_name.encode()), zlib.crc32(tensor_name.encode())]
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def frozen_weight(kind: str, shape: tuple[int, ...], fan_in: int, *, seed: int,
                  layer_name: str, tensor_name: str = "kernel",
                  keep_fraction: float = 1.0, scale_fan: bool = False) -> np.ndarray:
  """Frozen random weights (float32), as in docs/method.md.

  Args:
    kind: `signed_kaiming_constant`: sign(r) * sqrt(2 / fan_in) (edge-popup, Sec. 4.1);
      `kaiming_normal`: N(0, 2 / fan_in), with fan_in scaled by keep_fraction when `scale_fan`
      (edge-popup's "scaled" variant, which keeps the masked layer's variance); `normal_002`:
      N(0, 0.02) (what the paper's released code ends up using).
    shape: tensor shape.
    fan_in: inputs feeding one output unit.
    seed, layer_name, tensor_name: identify the stream; same triple, same bits.
    keep_fraction: fraction of weights kept (only with scale_fan).
    scale_fan: scale fan_in by keep_fraction.
  """
  rng = _rng(seed, layer_name, tensor_name)
  fan = fan_in * keep_fraction if scale_fan else fan_in
  if kind == "signed_kaiming_constant":
    values = np.where(rng.random(shape) < 0.5, -1.0, 1.0) * math.sqrt(2.0 / fan)
  elif kind == "kaiming_normal":
    values = rng.standard_normal(shape) * math.sqrt(2.0 / fan)
  elif kind == "normal_002":
    values = rng.standard_normal(shape) * 0.02
  else:
    raise errors.SltError(f"unknown weight init {kind!r}; choose one of {', '.join(WEIGHT_INITS)}")
  return values.astype(np.float32)


def frozen_bias(shape: tuple[int, ...], fan_in: int, *, seed: int, layer_name: str) -> np.ndarray:
  """Frozen bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default bias init."""
  bound = 1.0 / math.sqrt(fan_in)
  return _rng(seed, layer_name, "bias").uniform(-bound, bound, shape).astype(np.float32)


def score(kind: str, shape: tuple[int, ...], fan_in: int, *, seed: int, layer_name: str,
          tensor_name: str = "kernel_scores") -> np.ndarray:
  """Initial scores (float32).

  Args:
    kind: `kaiming_uniform`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. PyTorch's
      kaiming_uniform_(a=sqrt(5)) used by edge-popup; `uniform_01`: U(-0.1, 0.1) (paper code);
      `unit_uniform`: U(0, 1), Gem-Miner's scores (probabilities, thresholded at 0.5).
  """
  rng = _rng(seed, layer_name, tensor_name)
  if kind == "unit_uniform":
    return rng.uniform(0.0, 1.0, shape).astype(np.float32)
  if kind == "kaiming_uniform":
    bound = 1.0 / math.sqrt(fan_in)
  elif kind == "uniform_01":
    bound = 0.1
  else:
    raise errors.SltError(f"unknown score init {kind!r}; choose one of {', '.join(SCORE_INITS)}")
  return rng.uniform(-bound, bound, shape).astype(np.float32)
