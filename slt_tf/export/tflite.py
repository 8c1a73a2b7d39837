"""Edge export: the baked generator (masks in plain kernels) as a LiteRT / TFLite flatbuffer.

The model maps `z` float32 [B, latent_dim] (B dynamic; resize the interpreter's input) to
`images` float32 [B, H, W, C] in [-1, 1], the SavedModel's `serving_default`. Variants:

  quantize=none     float32 weights
  quantize=dynamic  int8 weights, float activations (dynamic-range quantisation)
  quantize=float16  float16 weights, dequantised at load
  sparsity=True     tf.lite.Optimize.EXPERIMENTAL_SPARSITY: weights that are mostly zero (a
                    ticket's kernels) stored in TFLite's sparse format where the converter
                    supports it for the op; a no-op elsewhere. With none or dynamic only:
                    float16 + sparsity converts, but the model's outputs are wrong (TF 2.21).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import

from slt_tf import errors
from slt_tf import generators
from slt_tf import workdir as workdir_lib
from slt_tf.export import bake

QUANTIZATIONS = ("none", "dynamic", "float16")
INPUT_NAME = "z"
OUTPUT_NAME = "images"


def convert(plain: generators.Generator, *, quantize: str = "none",
            sparsity: bool = False) -> bytes:
  """The TFLite flatbuffer of a baked (plain) generator.

  Args:
    plain: `bake.bake(...)`'s generator (no score variables, no top-k ops).
    quantize: one of QUANTIZATIONS.
    sparsity: add tf.lite.Optimize.EXPERIMENTAL_SPARSITY.

  Returns:
    The .tflite bytes (one signature, serving_default: z -> images).
  """
  if quantize not in QUANTIZATIONS:
    raise errors.SltError(f"unknown quantize {quantize!r}; choose one of "
                          f"{', '.join(QUANTIZATIONS)}")
  if sparsity and quantize == "float16":
    raise errors.SltError("sparsity applies to quantize=none or dynamic; with float16 TF 2.21's "
                          "converter writes a model whose outputs are wrong")
  if not plain.plain:
    raise errors.SltError("convert a baked generator (bake.bake(...)), not a scored one")
  latent_dim = int(plain.spec.latent_dim)

  @tf.function(input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name=INPUT_NAME)])
  def serving_default(z):
    return {OUTPUT_NAME: plain(z, training=False)}

  # Variables folded into constants first: given the function (or a SavedModel of it), TF
  # 2.21's converter kept Keras 3's variables as uninitialised resource variables (NaN out).
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      serving_default.get_concrete_function())
  converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
  optimizations = []
  if quantize != "none":
    optimizations.append(tf.lite.Optimize.DEFAULT)
  if sparsity:
    optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
  converter.optimizations = optimizations
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


def baked_generator(*, workdir: str | None = None, ticket_path: str | None = None
                    ) -> tuple[generators.Generator, dict]:
  """(baked generator, export metadata) of a workdir's latest checkpoint or a ticket file."""
  if (workdir is None) == (ticket_path is None):
    raise errors.SltError("give exactly one source: --workdir=W (latest checkpoint) or "
                          "--ticket=PATH (a ticket file alone)")
  if workdir is not None:
    return bake.from_workdir(workdir)
  return bake.from_ticket_file(ticket_path)


def export(out_path: str, *, workdir: str | None = None, ticket_path: str | None = None,
           quantize: str = "none", sparsity: bool = False) -> dict:
  """Bakes a workdir's latest checkpoint or a ticket file and writes a .tflite file.

  Returns:
    The export metadata plus `path`, `bytes`, `quantize` and `sparsity`.
  """
  if not out_path.endswith(".tflite"):
    raise errors.SltError(f"--out={out_path} must end in .tflite")
  plain, metadata = baked_generator(workdir=workdir, ticket_path=ticket_path)
  flatbuffer = convert(plain, quantize=quantize, sparsity=sparsity)
  workdir_lib.atomic_write(out_path, flatbuffer)
  return dict(metadata, path=out_path, bytes=len(flatbuffer), quantize=quantize,
              sparsity=sparsity)


class Runner:
  """Runs a .tflite generator with tf.lite.Interpreter: `runner(z)` -> images (numpy).

  With TF's default delegate (XNNPack) where it can run the model; int8 weights in the sparse
  format (quantize=dynamic with sparsity) fail XNNPack's FULLY_CONNECTED preparation, and then
  run on the builtin kernels (`self.delegate` says which).
  """

  def __init__(self, model: str | bytes, num_threads: int | None = None):
    self.model = model
    self.num_threads = num_threads
    self.delegate = "xnnpack"
    self._make(tf.lite.experimental.OpResolverType.AUTO)
    self.latent_dim = int(self.input["shape"][-1])

  def _make(self, resolver) -> None:
    source = ({"model_content": self.model} if isinstance(self.model, bytes)
              else {"model_path": self.model})
    self.interpreter = tf.lite.Interpreter(**source, num_threads=self.num_threads,
                                           experimental_op_resolver_type=resolver)
    self.input = self.interpreter.get_input_details()[0]
    self.batch = None

  def _allocate(self, batch: int) -> None:
    try:
      self.interpreter.resize_tensor_input(self.input["index"], [batch, self.latent_dim])
      self.interpreter.allocate_tensors()
    except RuntimeError:
      if self.delegate != "xnnpack":
        raise
      self.delegate = "builtin"
      self._make(tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
      self.interpreter.resize_tensor_input(self.input["index"], [batch, self.latent_dim])
      self.interpreter.allocate_tensors()
    self.output = self.interpreter.get_output_details()[0]
    self.batch = batch

  def __call__(self, z) -> np.ndarray:
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise errors.SltError(f"z must be float32 [B, {self.latent_dim}], got shape {z.shape}")
    if self.batch != z.shape[0]:
      self._allocate(z.shape[0])
    self.interpreter.set_tensor(self.input["index"], z)
    self.interpreter.invoke()
    return self.interpreter.get_tensor(self.output["index"]).copy()
