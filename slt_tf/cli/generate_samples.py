r"""Samples images from a served generator and writes a PNG grid or an .npz.

Exactly one source:
  python -m bin.generate_samples --server=http://localhost:8501 --model_name=slt --out=grid.png
  python -m bin.generate_samples --grpc=localhost:8500 --model_name=slt --out=samples.npz
  python -m bin.generate_samples --saved_model=exported/slt/1 --num_samples=16 --out=grid.png

Seeds are --seed .. --seed+--num_samples-1; the same seeds give the same images from every
source. Serve the export with TensorFlow Serving (docs/serving.md).
"""

from absl import flags

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
from slt_tf.cli import common as cli
from slt_tf.export import client

_SERVER = flags.DEFINE_string(
    "server", None, "TF Serving REST address, e.g. http://localhost:8501 (default port 8501).")
_GRPC = flags.DEFINE_string(
    "grpc", None, "TF Serving gRPC address HOST:PORT, e.g. localhost:8500 (default port 8500).")
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "Local SavedModel: a version dir E/<model>/<version> or the model base "
    "path E/<model> (highest version); no server needed.")
_MODEL_NAME = flags.DEFINE_string("model_name", "slt",
                                  "Model name on the server (--server, --grpc).")
_VERSION = flags.DEFINE_integer(
    "version", None, "Model version to use; default: the latest one the server (or directory) has.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 64, "Number of images (requests of at most the model's max_batch_size each).",
    lower_bound=1, upper_bound=65536)
_SEED = flags.DEFINE_integer("seed", 0, "First seed; images use seeds seed .. "
                             "seed+num_samples-1 (int64, >= 0).", lower_bound=0)
_SIGNATURE = flags.DEFINE_enum(
    "signature", None, list(client.SEED_SIGNATURES),
    "Signature to call; default generate_png over REST (base64 PNGs, little JSON), "
    "generate_uint8 over gRPC and locally. Both give the same images.")
_OUT = flags.DEFINE_string("out", "samples.png", "Output: *.png writes a grid, *.npz the arrays "
                           "'images' uint8 [N, H, W, C] and 'seeds'.")
_TIMEOUT = flags.DEFINE_float("timeout", 60.0, "Seconds to wait for the server.")


def main(argv):
  del argv
  client.check_output_path(_OUT.value, existing_directory=True)
  seeds = client.seed_range(_SEED.value, _NUM_SAMPLES.value)
  images = client.generate(seeds=seeds, server=_SERVER.value, grpc_address=_GRPC.value,
                           saved_model=_SAVED_MODEL.value, model_name=_MODEL_NAME.value,
                           signature=_SIGNATURE.value, version=_VERSION.value,
                           timeout=_TIMEOUT.value)
  client.save_images(images, _OUT.value, seeds=seeds)
  print(f"Wrote {len(images)} images {list(images.shape[1:])} to {_OUT.value}")


def run() -> None:
  """The `slt-generate-samples` console script (and `python -m bin.generate_samples`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
