r"""Exports a ticket (masks baked into plain kernels) or a dense run as a TF Serving model.

  python -m bin.export_saved_model --workdir=runs/digits --export_dir=/tmp/export
  python -m bin.export_saved_model --ticket=runs/digits/ticket.slt --export_dir=/tmp/export \
      --model_name=slt --version=2

Writes E/<model_name>/<version>/ (saved_model.pb, variables/, assets.extra/ with TF Serving
warmup requests and slt_metadata.json); serve it with
  docker run -p 8500:8500 -p 8501:8501 -v E/<model_name>:/models/<model_name> \
      -e MODEL_NAME=<model_name> tensorflow/serving
(docs/serving.md).
"""

from absl import flags

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
from slt_tf.cli import common as cli
from slt_tf.export import bake
from slt_tf.export import servable

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory written by bin/find_ticket: its latest checkpoint is "
    "exported (ticket methods or method=dense). Exactly one of --workdir and --ticket.")
_TICKET = flags.DEFINE_string(
    "ticket", None, "A ticket file (e.g. W/ticket.slt) exported on its own: frozen weights "
    "regenerated from its seed, masks from its bits; no checkpoint needed.")
_INIT_CHECKPOINT = flags.DEFINE_string(
    "init_checkpoint", None, "For a ticket found inside a trained generator "
    "(generator.init_checkpoint): its source checkpoint, a dense run's workdir or ckpt-N "
    "(default: the path the ticket records); refused unless its weights have the recorded "
    "sha256.")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Base directory E; the model is written to E/<model_name>/<version>/.")
_MODEL_NAME = flags.DEFINE_string(
    "model_name", "slt", "TF Serving model name (REST path /v1/models/<model_name>).")
_VERSION = flags.DEFINE_integer(
    "version", 1, "Version directory number; an existing version is never overwritten.",
    lower_bound=0)
_NUM_WARMUP_RECORDS = flags.DEFINE_integer(
    "num_warmup_records", 3, "PredictionLog records in assets.extra/tf_serving_warmup_requests "
    "(TF Serving replays them at load time; at most 1000).", lower_bound=0)
_MAX_BATCH_SIZE = flags.DEFINE_integer(
    "max_batch_size", None, "Most seeds (or z rows) one request may ask for; checked in the "
    "served graph (INVALID_ARGUMENT / HTTP 400 in TF Serving too). Default: 256 up to 32x32 "
    "images, fewer in proportion to the pixels above (64 at 64x64).",
    lower_bound=1, upper_bound=65536)
flags.mark_flag_as_required("export_dir")


def main(argv):
  del argv
  version_dir = bake.export(
      export_base=_EXPORT_DIR.value, workdir=_WORKDIR.value, ticket_path=_TICKET.value,
      model_name=_MODEL_NAME.value, version=_VERSION.value,
      num_warmup_records=_NUM_WARMUP_RECORDS.value, max_batch_size=_MAX_BATCH_SIZE.value,
      init_checkpoint=_INIT_CHECKPOINT.value)
  metadata = servable.read_metadata(version_dir)["metadata"]
  print(f"Wrote {version_dir} ({metadata['method']}, step {metadata['step']}, "
        f"{metadata['num_kernel_nonzero']} of {metadata['num_kernel_weights']} kernel weights "
        "nonzero)")


def run() -> None:
  """The `slt-export-saved-model` console script (and `python -m bin.export_saved_model`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
