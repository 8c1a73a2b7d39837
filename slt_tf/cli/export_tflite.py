r"""Exports a ticket (masks baked into plain kernels) or a dense run as a LiteRT / TFLite model.

  python -m bin.export_tflite --workdir=runs/digits --out=digits.tflite
  python -m bin.export_tflite --ticket=runs/digits/ticket.slt --out=digits_int8.tflite \
      --quantize=dynamic --sparsity

The model: `z` float32 [B, latent_dim] -> `images` float32 [B, H, W, C] in [-1, 1] (resize the
interpreter's input for B != 1). --quantize=dynamic stores int8 weights, float16 float16 ones;
--sparsity adds tf.lite.Optimize.EXPERIMENTAL_SPARSITY (sparse weight format where the
converter supports it). Sizes, latency and agreement with the SavedModel: bench/tflite.py and
docs/serving.md ("Edge export").
"""

from absl import flags

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
from slt_tf.cli import common as cli  # pylint: disable=g-bad-import-order
from slt_tf.export import tflite

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory written by bin/find_ticket: its latest checkpoint is "
    "exported. Exactly one of --workdir and --ticket.")
_TICKET = flags.DEFINE_string(
    "ticket", None, "A ticket file (e.g. W/ticket.slt), exported on its own.")
_OUT = flags.DEFINE_string("out", None, "Output file, *.tflite.")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", tflite.QUANTIZATIONS,
                              "none: float32 weights; dynamic: int8 weights (dynamic-range "
                              "quantisation); float16: float16 weights.")
_SPARSITY = flags.DEFINE_bool("sparsity", False, "Add tf.lite.Optimize.EXPERIMENTAL_SPARSITY "
                              "(sparse storage of mostly-zero weights where supported).")
flags.mark_flag_as_required("out")


def main(argv):
  del argv
  info = tflite.export(_OUT.value, workdir=_WORKDIR.value, ticket_path=_TICKET.value,
                       quantize=_QUANTIZE.value, sparsity=_SPARSITY.value)
  print(f"Wrote {info['path']} ({info['bytes']} bytes; {info['method']}, step {info['step']}, "
        f"quantize={info['quantize']}, sparsity={info['sparsity']})")


def run() -> None:
  """The `slt-export-tflite` console script (and `python -m bin.export_tflite`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
