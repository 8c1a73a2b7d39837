"""Evaluation memory and speed: streaming N generated samples vs holding them, and PRDC blocks.

  python -m bench.evaluation [--num_samples=10000 --image_size=32 --prdc_samples=10000]

1. Streams `num_samples` images of a random DCGAN generator (a ticket at keep 0.1) through a
   random-weight digits_eval_cnn with `activations.generated_activations`, and prints the
   samples per second and the growth of peak resident memory next to the bytes that holding
   every image at once would take. Streaming keeps the growth independent of num_samples
   (only the activations grow); for tiny digits images the growth is TensorFlow's working
   memory and can exceed the images' bytes, the saving shows at large sizes (10,000
   Inception inputs of 299x299x3 float32 are 10 GiB).
2. PRDC on random 2048-d features of `prdc_samples` real and fake points: time and peak memory
   growth with the default block size next to the full N x N float64 distance matrix it avoids.
3. FID and KID times on the same features.
Ratios, measured in one process; not a test.
"""

import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import slt_tf  # pylint: disable=unused-import
from slt_tf import activations
from slt_tf import evaluation
from slt_tf import features
from slt_tf import generators
from slt_tf import metrics
from slt_tf import sampling

_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10000, "Generated samples to stream.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Generated image size.")
_BATCH = flags.DEFINE_integer("batch_size", 250, "Images per generator / eval network call.")
_PRDC_SAMPLES = flags.DEFINE_integer("prdc_samples", 10000, "Real and fake points for PRDC.")
_DIM = flags.DEFINE_integer("dim", 2048, "Feature dimension for PRDC / FID / KID.")


def _mib(num_bytes: float) -> float:
  return num_bytes / 2**20


def bench_streaming() -> None:
  spec = generators.GeneratorSpec("dcgan", image_size=_IMAGE_SIZE.value, channels=1,
                                  keep_fraction=0.1)
  generator = generators.build(spec)
  network = features.build_eval_network("digits_eval_cnn", image_size=_IMAGE_SIZE.value,
                                        channels=1, weights=None)

  @tf.function
  def generate(indices):
    return generator(sampling.latents(indices, spec.latent_dim, evaluation.EVAL_LATENT_STREAM),
                     training=False)

  def generate_batch(start, size):
    return generate(tf.range(start, start + size, dtype=tf.int64))

  generate_batch(0, _BATCH.value)  # Traces outside the measurement.
  before = evaluation.peak_memory_mb()
  start = time.perf_counter()
  embeddings, _ = activations.generated_activations(
      generate_batch, network, num_samples=_NUM_SAMPLES.value, batch_size=_BATCH.value,
      progress=False)
  seconds = time.perf_counter() - start
  growth = evaluation.peak_memory_mb() - before
  all_images = _mib(4 * _NUM_SAMPLES.value * _IMAGE_SIZE.value ** 2)
  print(f"streaming: {_NUM_SAMPLES.value} samples {_IMAGE_SIZE.value}x{_IMAGE_SIZE.value} in "
        f"{seconds:.1f} s = {_NUM_SAMPLES.value / seconds:.0f} samples/s; peak RSS growth "
        f"{growth:.0f} MiB (activations {_mib(embeddings.nbytes):.0f} MiB) vs {all_images:.0f} "
        f"MiB for all float32 images at once; peak RSS {evaluation.peak_memory_mb():.0f} MiB")


def bench_metrics() -> None:
  rng = np.random.default_rng(0)
  n, dim = _PRDC_SAMPLES.value, _DIM.value
  real = np.abs(rng.standard_normal((n, dim), dtype=np.float32))
  fake = np.abs(rng.standard_normal((n, dim), dtype=np.float32)) + np.float32(0.01)
  before = evaluation.peak_memory_mb()
  start = time.perf_counter()
  result = metrics.prdc(real, fake, 5)
  seconds = time.perf_counter() - start
  print(f"prdc: n={n} dim={dim} in {seconds:.1f} s; peak RSS growth "
        f"{evaluation.peak_memory_mb() - before:.0f} MiB vs {_mib(8 * n * n):.0f} MiB for one "
        f"full float64 distance matrix; {result}")
  start = time.perf_counter()
  fid = metrics.fid(real, fake)
  fid_seconds = time.perf_counter() - start
  start = time.perf_counter()
  kid, _ = metrics.kid(real, fake)
  print(f"fid={fid:.4f} in {fid_seconds:.1f} s; kid={kid:.5f} in "
        f"{time.perf_counter() - start:.1f} s")


def main(argv):
  del argv
  bench_streaming()
  bench_metrics()


if __name__ == "__main__":
  app.run(main)
