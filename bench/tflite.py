r"""Edge export side by side: SavedModel vs each .tflite variant of one ticket.

  python -m bench.tflite --workdir=runs/digits            # or --ticket=runs/digits/ticket.slt

In one run: file sizes (raw and gzip) of the ticket, the SavedModel (all of it and its
variables/) and each .tflite; per-sample CPU latency (batch 1, median of --repetitions rounds
of --calls calls; the models take turns within a round) of the SavedModel's serving_default and
each .tflite through tf.lite.Interpreter; agreement with the SavedModel (max |difference| on
--num_agreement latents); and FID of each variant's samples against the held-out split and
against the SavedModel's own samples (--num_samples, the run's dataset eval network, e.g.
digits_eval_cnn), with slt_tf.evaluation's functions.
"""

import gzip
import io
import os
import statistics
import tarfile
import tempfile
import time

from absl import app
from absl import flags

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order
import tensorflow as tf

from slt_tf import activations
from slt_tf import evaluation
from slt_tf import metrics
from slt_tf import sampling
from slt_tf.export import bake
from slt_tf.export import servable
from slt_tf.export import tflite
from slt_tf import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (exactly one of --workdir, "
                               "--ticket).")
_TICKET = flags.DEFINE_string("ticket", None, "Ticket file.")
_DATASET = flags.DEFINE_string("dataset", "digits", "Dataset of the FID reference.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2000, "Samples per FID.", lower_bound=2)
_NUM_AGREEMENT = flags.DEFINE_integer("num_agreement", 256, "Latents of the max |diff|.",
                                      lower_bound=1)
_REPETITIONS = flags.DEFINE_integer("repetitions", 5, "Latency rounds.", lower_bound=1)
_CALLS = flags.DEFINE_integer("calls", 200, "Batch-1 calls per round and model.",
                              lower_bound=1)
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter threads (TF ops: inter/intra 1).")

# (name, quantize, sparsity)
VARIANTS = (("float32", "none", False), ("float32+sparsity", "none", True),
            ("dynamic", "dynamic", False), ("dynamic+sparsity", "dynamic", True),
            ("float16", "float16", False))


def gzip_size(data: bytes) -> int:
  return len(gzip.compress(data, compresslevel=9, mtime=0))


def directory_bytes(directory: str) -> tuple[int, int]:
  """(sum of file sizes, size of a gzipped tar of the directory)."""
  total = sum(os.path.getsize(os.path.join(root, name))
              for root, _, names in os.walk(directory) for name in names)
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as archive:
    archive.add(directory, arcname=".")
  return total, gzip_size(buffer.getvalue())


def main(argv):
  del argv
  tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
  tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
  plain, metadata = tflite.baked_generator(workdir=_WORKDIR.value, ticket_path=_TICKET.value)
  latent_dim = int(plain.spec.latent_dim)
  ticket_path = (_TICKET.value or os.path.join(_WORKDIR.value, workdir_lib.TICKET_FILE))
  rows = []  # (name, raw bytes, gzip bytes)
  if os.path.exists(ticket_path):
    with open(ticket_path, "rb") as f:
      ticket = f.read()
    rows.append(("ticket.slt", len(ticket), gzip_size(ticket)))

  work = tempfile.mkdtemp(prefix="bench_tflite_")
  version_dir = servable.write_servable(
      plain, latent_dim=latent_dim, export_base=work, model_name="slt", version=1,
      num_warmup_records=0, metadata=metadata)
  rows.append(("SavedModel (all)", *directory_bytes(version_dir)))
  variables_bytes = directory_bytes(os.path.join(version_dir, "variables"))
  rows.append(("SavedModel variables/", *variables_bytes))
  serving = tf.saved_model.load(version_dir).signatures["serving_default"]

  runners = {}
  for name, quantize, sparsity in VARIANTS:
    flatbuffer = tflite.convert(plain, quantize=quantize, sparsity=sparsity)
    rows.append((f"{name}.tflite", len(flatbuffer), gzip_size(flatbuffer)))
    runners[name] = tflite.Runner(flatbuffer, num_threads=_THREADS.value)

  print(f"source: {metadata['source_path']} ({metadata['method']}, step {metadata['step']}, "
        f"{metadata['num_kernel_nonzero']} of {metadata['num_kernel_weights']} kernel weights "
        "nonzero)")
  print("\n| file | bytes | gzip bytes | bytes / SavedModel variables |\n|---|---|---|---|")
  for name, raw, packed in rows:
    print(f"| {name} | {raw:,} | {packed:,} | {raw / variables_bytes[0]:.3f} |")

  # Agreement with the SavedModel.
  z = sampling.latents(tf.range(_NUM_AGREEMENT.value, dtype=tf.int64), latent_dim).numpy()
  reference = serving(z=tf.constant(z))["images"].numpy()
  diffs = {name: float(np.max(np.abs(runner(z) - reference))) for name, runner in
           runners.items()}

  # Latency, batch 1: the models take turns within each round.
  one = z[:1]
  calls = {"SavedModel": lambda: serving(z=tf.constant(one))["images"].numpy()}
  calls.update({name: (lambda r=runner: r(one)) for name, runner in runners.items()})
  for function in calls.values():
    for _ in range(10):
      function()
  times = {name: [] for name in calls}
  for _ in range(_REPETITIONS.value):
    for name, function in calls.items():
      start = time.perf_counter()
      for _ in range(_CALLS.value):
        function()
      times[name].append((time.perf_counter() - start) / _CALLS.value)

  # FID: each variant's samples vs the held-out split and vs the SavedModel's samples.
  evaluator = evaluation.build_evaluator(dataset_name=_DATASET.value,
                                         image_size=int(plain.spec.image_size),
                                         num_samples=_NUM_SAMPLES.value)

  def activations(generate):
    def generate_batch(start, size):
      indices = tf.range(start, start + size, dtype=tf.int64)
      return generate(sampling.latents(indices, latent_dim,
                                       evaluation.EVAL_LATENT_STREAM).numpy())
    return activations.generated_activations(
        generate_batch, evaluator.eval_network, num_samples=_NUM_SAMPLES.value,
        batch_size=250, progress=False)[0]

  saved_model_act = activations(lambda z: serving(z=tf.constant(z))["images"])
  fid_real = {"SavedModel": metrics.fid(evaluator.real_embeddings, saved_model_act)}
  fid_float = {"SavedModel": 0.0}
  for name, runner in runners.items():
    act = activations(runner)
    fid_real[name] = metrics.fid(evaluator.real_embeddings, act)
    fid_float[name] = metrics.fid(saved_model_act, act)

  print(f"\n| model | CPU latency per sample (ms, median of {_REPETITIONS.value} x "
        f"{_CALLS.value}) | max abs diff vs SavedModel ({_NUM_AGREEMENT.value} samples) | "
        f"FID vs held-out ({_NUM_SAMPLES.value} samples) | FID / SavedModel's | FID vs "
        "SavedModel's samples |\n|---|---|---|---|---|---|")
  for name in calls:
    print(f"| {name} | {1e3 * statistics.median(times[name]):.3f} | "
          f"{diffs.get(name, 0.0):.2e} | {fid_real[name]:.2f} | "
          f"{fid_real[name] / fid_real['SavedModel']:.3f} | {fid_float[name]:.3f} |")
  print(f"\nthreads: {_THREADS.value}; interpreter delegates: "
        + ", ".join(f"{name}={runner.delegate}" for name, runner in runners.items()))


if __name__ == "__main__":
  app.run(main)
