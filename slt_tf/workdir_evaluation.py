"""Evaluates a run directory: its latest checkpoint (ticket or dense) on the held-out split.

Workdir files it reads and writes (`slt_tf.workdir` names them all):
  config.json, generator.json  read: dataset, generator, eval network, eval.num_samples
  checkpoints/                 read: the latest checkpoint's generator (scores or kernels, BN stats)
  metrics.json                 written: the final metrics of the latest checkpoint
  metrics_untrained.json       written with untrained=True: the random generator at step 0
  tensorboard/eval/            written: TensorBoard scalars eval/<metric> at the evaluated step
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging

from slt_tf import data
from slt_tf import evaluation
from slt_tf import generators
from slt_tf import workdir as workdir_lib


def evaluate_workdir(workdir: str, *, num_samples: int | None = None, batch_size: int = 250,
                     cache_dir: str | None = None, untrained: bool = False,
                     progress: bool = False, split: str = "test") -> dict[str, Any]:
  """Evaluates the run in `workdir` and writes its metrics file and TensorBoard scalars.

  The generator runs in inference mode (batch-norm moving statistics) on the fixed latents of
  `evaluation.EVAL_LATENT_STREAM`; images are quantised to uint8 like the real ones, and
  only their activations are kept (`activations.generated_activations`). Real activations of
  the held-out split are cached (`activations.real_activations`).

  Args:
    workdir: a run directory of bin/find_ticket.
    num_samples: generated samples (None: the config's eval.num_samples).
    batch_size: images per generator / eval network call.
    cache_dir: cache of the eval network and real activations (None: the config's
      features.cache_dir, else ~/.cache/slt_tf).
    untrained: evaluate the generator as initialised (step 0, nothing restored; a ticket
      uses its initial scores' mask) and write metrics_untrained.json: the floor.
    progress: show progress bars.
    split: "test" (reported numbers) or "validation" (tuning; written to
      metrics_validation.json).

  Returns:
    The metrics dict that was written (see `evaluation.Evaluator.__call__`, plus step,
    checkpoint, method, keep_fraction, seed, untrained and seconds).
  """
  start_time = time.perf_counter()
  config = workdir_lib.read_config(workdir)
  spec = workdir_lib.generator_spec(workdir, fallback_channels=data.num_channels)
  if untrained:
    generator = generators.build(spec)
    checkpoint, step = None, 0
  else:
    generator, (checkpoint, step) = workdir_lib.restore_generator(
        workdir, spec, advice="train first (bin/find_ticket) or pass --untrained")
  evaluator = evaluation.evaluator_from_config(config, num_samples=num_samples,
                                               batch_size=batch_size, cache_dir=cache_dir,
                                               progress=progress, split=split)
  metrics = evaluator(generator, progress=progress)
  metrics.update(step=step, checkpoint=checkpoint, untrained=untrained, method=config.method,
                 keep_fraction=config.keep_fraction, seed=config.seed,
                 seconds=time.perf_counter() - start_time)
  path = workdir_lib.metrics_path(workdir, untrained=untrained, split=split)
  workdir_lib.write_json(path, metrics)
  evaluation.write_scalars(workdir_lib.tensorboard_dir(workdir, "eval"), step, metrics)
  logging.info("Wrote %s: fid=%.4g kid=%.4g; %d samples at %.1f samples/s, peak memory %.0f MiB.",
               path, metrics["fid"], metrics["kid"], metrics["num_samples"],
               metrics["samples_per_second"], metrics["peak_memory_mb"])
  return metrics


def real_reference(workdir: str, *, num_samples: int, split: str = "test",
                   batch_size: int = 250) -> dict[str, Any]:
  """`num_samples` real TRAINING images of the run's dataset scored like a generator against
  the evaluation split (`evaluation.real_reference_metrics`): the floor a perfect generator
  reaches under the same eval network and sample count."""
  config = workdir_lib.read_config(workdir)
  evaluator = evaluation.evaluator_from_config(config, num_samples=num_samples,
                                               batch_size=batch_size, split=split)
  name = config.dataset.name
  images = data.load_images(name, data.training_split(name),
                            image_size=int(config.dataset.image_size), batch_size=batch_size,
                            data_dir=config.dataset.data_dir or None)
  metrics = evaluation.real_reference_metrics(evaluator, images, num_samples)
  metrics.update(training_split=data.training_split(name))
  return metrics
