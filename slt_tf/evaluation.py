"""Evaluating a generator: FID, KID, IS and PRDC on fixed latents against held-out real images.

`Evaluator` holds an evaluation network (`slt_tf.features.build_eval_network`) and the real
activations of the held-out split (`slt_tf.activations.real_activations`, cached); called on a
generator it streams the generated images' activations (`slt_tf.activations`) and scores them
(`slt_tf.metrics`). `build_evaluator` / `evaluator_from_config` build it from the dataset and
config; `PeriodicEvaluation` runs it during training.
"""

import os
import resource
import time
from typing import Any, Mapping

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import activations
from slt_tf import classifiers
from slt_tf import data
from slt_tf import features
from slt_tf import images as images_lib
from slt_tf import metrics as metrics_lib
from slt_tf import sampling
from slt_tf import summaries
from slt_tf.errors import SltError

# Latent stream of the evaluation samples: sample i uses latent `sampling.latents([i], stream)`.
# Training draws from stream `config.seed` and the sample grids from stream 0, so this one is
# disjoint from both, and every run (any seed, dense or ticket) is scored on the same latents.
EVAL_LATENT_STREAM = 1_000_003
# Real held-out images used at most (docs/method.md: FID against 10,000 held-out real images).
MAX_REAL_EXAMPLES = 10_000


def peak_memory_mb() -> float:
  """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Evaluator:
  """Scores generators against fixed real activations on fixed evaluation latents.

  Build it once (it holds the eval network and the real activations), call it on any
  generator mapping latents [B, latent_dim] to images in [-1, 1].
  """

  def __init__(self, eval_network: activations.EvalNetwork, real_embeddings: np.ndarray,
               real_logits: np.ndarray | None, *, num_samples: int, batch_size: int,
               info: Mapping[str, Any] | None = None):
    if num_samples < 2 or batch_size < 1:
      raise SltError(f"num_samples must be an integer >= 2 and batch_size >= 1, got "
                     f"{num_samples} and {batch_size}.")
    self.eval_network = eval_network
    self.real_embeddings = real_embeddings
    self.real_logits = real_logits
    self.num_samples = num_samples
    self.batch_size = batch_size
    self.info = dict(info or {})

  def __call__(self, generator: keras.Model, *, progress: bool = False) -> dict[str, Any]:
    """Metrics of `generator` (inference mode: batch-norm moving statistics).

    Returns:
      The `metrics.compute_metrics` values plus num_samples, num_real, eval_network,
      eval_network_fingerprint, samples_per_second (generation + embedding),
      peak_memory_mb and the evaluator's `info` (dataset, split, ...).
    """
    latent_dim = int(generator.spec.latent_dim)

    @tf.function
    def generate(indices):  # (B,) int64 -> (B, H, W, C)
      return generator(sampling.latents(indices, latent_dim, EVAL_LATENT_STREAM),
                       training=False)

    def generate_batch(start: int, size: int) -> tf.Tensor:
      return generate(tf.range(start, start + size, dtype=tf.int64))

    start_time = time.perf_counter()
    fake_embeddings, fake_logits = activations.generated_activations(
        generate_batch, self.eval_network, num_samples=self.num_samples,
        batch_size=self.batch_size, progress=progress)
    seconds = time.perf_counter() - start_time
    if not np.all(np.isfinite(fake_embeddings)):
      raise SltError("the generator's images give nan or inf activations; the generator "
                     "outputs non-finite values.")
    result: dict[str, Any] = dict(self.info)
    result.update(metrics_lib.compute_metrics(self.real_embeddings, self.real_logits,
                                              fake_embeddings, fake_logits))
    result.update(
        num_samples=self.num_samples, num_real=int(len(self.real_embeddings)),
        eval_network=self.eval_network.name,
        eval_network_fingerprint=self.eval_network.fingerprint,
        samples_per_second=self.num_samples / max(seconds, 1e-9),
        peak_memory_mb=peak_memory_mb())
    return result


_DEFAULT_EVAL_NETWORKS = {data.DIGITS: "digits_eval_cnn", data.FASHION_MNIST: "fashion_eval_cnn"}


def real_reference_metrics(evaluator: Evaluator, images_dataset: tf.data.Dataset,
                           num_samples: int) -> dict[str, Any]:
  """The metrics of `num_samples` REAL images (e.g. training images; all of them when there are
  fewer) against the evaluator's real set: what a perfect generator reaches with that many
  samples. Images are quantised to uint8 like generated ones."""
  quantised = activations.image_batches(images_dataset).unbatch().take(num_samples).batch(
      250).map(lambda x: activations.dequantize(images_lib.to_uint8(x)))
  embeddings, logits = activations.real_activations(
      quantised, evaluator.eval_network, num_samples=None, cache_dir=None, key_parts={},
      progress=False)
  num_samples = int(len(embeddings))
  result: dict[str, Any] = dict(evaluator.info)
  result.update(metrics_lib.compute_metrics(evaluator.real_embeddings, evaluator.real_logits,
                                            embeddings, logits))
  result.update(num_samples=num_samples, num_real=int(len(evaluator.real_embeddings)),
                eval_network=evaluator.eval_network.name)
  return result


def default_eval_network(dataset_name: str) -> str:
  """The eval network when the config leaves it empty: the dataset's own classifier where it
  has one (digits, fashion_mnist), else Inception."""
  return _DEFAULT_EVAL_NETWORKS.get(dataset_name, "inception_v3")


def build_evaluator(*, dataset_name: str, image_size: int, data_dir: str | None = None,
                    eval_network: str = "", weights: str | None = "default",
                    cache_dir: str | None = None, num_samples: int, batch_size: int = 250,
                    progress: bool = False, split: str = "test",
                    source_dir: str = "") -> Evaluator:
  """An Evaluator on the held-out (or validation) split of `dataset_name`.

  Args:
    dataset_name: 'digits' or a TFDS name.
    image_size: side of the generated (and real) images.
    data_dir: TFDS data directory (None: the TFDS default).
    eval_network: one of features.EVAL_NETWORKS, or "" for `default_eval_network`.
    weights: eval network weights, as in `features.build_eval_network`.
    cache_dir: cache of the dataset classifiers and the real activations
      (None: features.DEFAULT_CACHE_DIR).
    num_samples: generated samples per evaluation.
    batch_size: images per generator / eval network call.
    progress: show progress bars.
    split: "test" (`data.held_out_split`: reported numbers) or "validation"
      (`data.validation_split`: where hyperparameters are chosen).
    source_dir: local source files of the dataset (`data.prepare`).

  Returns:
    The Evaluator; its `info` holds dataset, split, image_size.
  """
  eval_network = eval_network or default_eval_network(dataset_name)
  cache_dir = os.path.expanduser(cache_dir or features.DEFAULT_CACHE_DIR)
  split = data.evaluation_split(dataset_name, split)
  data.prepare(dataset_name, data_dir, source_dir)
  if eval_network in classifiers.RECIPES and weights == "default":
    classifiers.prepare(eval_network, image_size, cache_dir=cache_dir, data_dir=data_dir)
  channels = data.num_channels(dataset_name)
  network = features.build_eval_network(eval_network, image_size=image_size, channels=channels,
                                        weights=weights, cache_dir=cache_dir)
  images = data.load_images(dataset_name, split, image_size=image_size, batch_size=batch_size,
                            data_dir=data_dir)
  images = images.unbatch().take(MAX_REAL_EXAMPLES).batch(batch_size)
  key_parts = {"dataset": dataset_name, "split": split, "image_size": image_size,
               "data_dir": os.path.abspath(data_dir) if data_dir else "",
               "max_examples": MAX_REAL_EXAMPLES}
  real_embeddings, real_logits = activations.real_activations(
      images, network, num_samples=None, cache_dir=cache_dir, key_parts=key_parts,
      progress=progress)
  return Evaluator(network, real_embeddings, real_logits, num_samples=num_samples,
                   batch_size=batch_size,
                   info={"dataset": dataset_name, "split": split, "image_size": image_size})


def evaluator_from_config(config: Any, *, num_samples: int | None = None,
                          batch_size: int = 250, cache_dir: str | None = None,
                          progress: bool = False, split: str | None = None) -> Evaluator:
  """`build_evaluator` with the arguments a run's config gives (ConfigDict or its JSON dict).

  Reads dataset.{name, image_size, data_dir}, eval.{network, weights, num_samples} and
  features.cache_dir ("" means the default cache); `num_samples`, `cache_dir` and `split`
  (default eval.split) override.
  """
  dataset, eval_config = config["dataset"], config["eval"]
  weights = eval_config["weights"]
  return build_evaluator(
      dataset_name=dataset["name"], image_size=int(dataset["image_size"]),
      data_dir=dataset["data_dir"] or None, eval_network=eval_config["network"],
      weights=None if weights == "none" else weights,
      cache_dir=cache_dir or config["features"]["cache_dir"] or None,
      num_samples=int(num_samples or eval_config["num_samples"]), batch_size=batch_size,
      progress=progress, split=split or eval_config.get("split", "test"),
      source_dir=dataset.get("source_dir", ""))


def write_scalars(log_dir: str, step: int, metrics: Mapping[str, Any]) -> None:
  """Writes the numeric metrics as TensorBoard scalars `eval/<name>` at `step`."""
  writer = summaries.writer(log_dir)  # One events file per run and process.
  with writer.as_default(step=step):
    for name in metrics_lib.METRIC_NAMES + ("samples_per_second",):
      value = metrics.get(name)
      if value is not None:
        tf.summary.scalar(f"eval/{name}", float(value))
  writer.flush()


class PeriodicEvaluation(keras.callbacks.Callback):
  """Evaluates `model.generator` every `every_steps` steps and at the end of training.

  Scalars go to TensorBoard (`log_dir`, usually W/tensorboard/eval). The curve is for
  watching a run; the number to report is the final one from `bin/evaluate` (docs/method.md:
  never select checkpoints on the reported split).
  """

  def __init__(self, evaluator: Evaluator, log_dir: str, every_steps: int):
    super().__init__()
    if every_steps < 1:
      raise SltError(f"every_steps must be an integer >= 1, got {every_steps}.")
    self.evaluator = evaluator
    self.log_dir = log_dir
    self.every_steps = every_steps
    self.last_step: int | None = None

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def evaluate(self) -> None:
    step = self._step()
    if step == self.last_step:
      return
    metrics = self.evaluator(self.model.generator)
    write_scalars(self.log_dir, step, metrics)
    self.last_step = step
    logging.info("step %d eval: fid=%.4g kid=%.4g precision=%.3f recall=%.3f (%.0f samples/s)",
                 step, metrics["fid"], metrics["kid"], metrics["precision"], metrics["recall"],
                 metrics["samples_per_second"])

  def on_train_batch_end(self, batch, logs=None):
    if self._step() % self.every_steps == 0:
      self.evaluate()

  def on_train_end(self, logs=None):
    self.evaluate()
