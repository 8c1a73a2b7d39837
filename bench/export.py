r"""Export benchmark: ticket size, baked vs dense SavedModel latency, local samples per second.

  python -m bench.export [--generator=resnet32 --keep_fraction=0.1 --batch_size=16]

Measured side by side in one run (these machines are noisy):
  1. ticket file bytes / float32 weight bytes (design target <= 1/30), for a ticket with the
     generator's own random scores (their top-k is a random mask: a size bench);
  2. latency of `serving_default` of the baked SavedModel (kernels W * M, 90% zeros at keep
     0.1) / that of a dense SavedModel of the same plain twin (random dense kernels), all
     loaded in this process; repetitions interleave the models and report medians of the
     wall-clock minimum and median and of the process CPU time (target <= 1.05: baking adds
     no op). A second dense model is an A/A control: its ratio to the first is the machine's
     noise (on a shared machine wall-clock medians wander by 10-40%; the minimum and CPU time
     much less);
  3. samples per second through the baked SavedModel's `generate_uint8` (seeds in, uint8 out).
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order
import tensorflow as tf

from slt_tf.export import bake
from slt_tf.export import servable
from slt_tf import generators
from slt_tf import sampling
from slt_tf import ticket as ticket_lib

_GENERATOR = flags.DEFINE_enum("generator", "resnet32", list(generators.GENERATORS),
                               "Architecture (its default widths).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Image size; default the architecture's (dcgan: 32).")
_KEEP_FRACTION = flags.DEFINE_float("keep_fraction", 0.1, "Fraction of weights kept.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Latency batch.", lower_bound=1)
_REPETITIONS = flags.DEFINE_integer(
    "repetitions", 9, "Interleaved repetitions (the model order reverses every time).",
    lower_bound=1)
_CALLS = flags.DEFINE_integer("calls", 3, "Calls per repetition and model.", lower_bound=1)
_SAMPLES_BATCH_SIZE = flags.DEFINE_integer(
    "samples_batch_size", 64, "Seeds per generate_uint8 call for samples/s.", lower_bound=1)


def _seconds_per_call(function, calls: int) -> tuple[float, float]:
  """(wall-clock, process CPU) seconds per call; CPU time sums all of TF's threads."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(calls):
    function()
  return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def ticket_size(generator: generators.Generator) -> tuple[int, int]:
  """(ticket file bytes, float32 weight bytes) of the generator's current masks."""
  blob = ticket_lib.to_bytes(ticket_lib.from_generator(generator))
  return len(blob), ticket_lib.dense_fp32_bytes(generator)


def interleaved_latency(functions: dict, repetitions: int, calls: int) -> dict[str, dict]:
  """{name: {"wall_min", "wall_median", "cpu_median": seconds per call}}.

  The order of the functions alternates every repetition. On a shared machine the wall clock
  of a repetition jumps whenever other processes take the cores, so its minimum is the
  cleanest wall-clock figure; the process CPU time barely moves.
  """
  names = list(functions)
  for name in names:  # Warm up (tracing, allocations).
    _seconds_per_call(functions[name], 2)
  times = {name: [] for name in names}
  for repetition in range(repetitions):
    order = names if repetition % 2 == 0 else names[::-1]
    for name in order:
      times[name].append(_seconds_per_call(functions[name], calls))
  return {name: {"wall_min": min(wall for wall, _ in values),
                 "wall_median": statistics.median(wall for wall, _ in values),
                 "cpu_median": statistics.median(cpu for _, cpu in values)}
          for name, values in times.items()}


def main(argv):
  del argv
  name = _GENERATOR.value
  image_size = _IMAGE_SIZE.value or generators.IMAGE_SIZES.get(name, 32)
  spec = generators.GeneratorSpec(name=name, image_size=image_size, channels=3,
                                  keep_fraction=_KEEP_FRACTION.value, seed=0)
  generator = generators.build(spec)  # Scores drawn from the seed: a random top-k mask.
  num_weights = ticket_lib.dense_fp32_bytes(generator) // 4
  print(f"generator {name} {image_size}x{image_size}x3: {num_weights:,} weights, "
        f"keep_fraction {spec.keep_fraction}")

  ticket_bytes, dense_bytes = ticket_size(generator)
  print(f"ticket file {ticket_bytes:,} bytes / float32 weights {dense_bytes:,} bytes = "
        f"1/{dense_bytes / ticket_bytes:.1f} (target <= 1/30)")

  baked = bake.bake(generator)
  # The same plain twin with Keras' dense random kernels; a second one is the A/A control
  # (two models that must be equally fast: their ratio shows the machine's noise).
  dense = generators.build(spec, plain=True)
  dense_control = generators.build(spec, plain=True)
  models = (("baked", baked), ("dense", dense), ("dense_control", dense_control))
  with tempfile.TemporaryDirectory() as export_base:
    paths = {label: servable.write_servable(model, latent_dim=spec.latent_dim,
                                            export_base=export_base, model_name=label,
                                            num_warmup_records=0)
             for label, model in models}
    loaded = {label: tf.saved_model.load(path) for label, path in paths.items()}
    nonzero = sum(int(np.count_nonzero(np.asarray(layer.kernel)))
                  for layer in baked.weight_layers())
    total = sum(int(np.prod(layer.kernel.shape)) for layer in baked.weight_layers())
    print(f"baked SavedModel: {nonzero:,} of {total:,} kernel weights nonzero "
          f"({nonzero / total:.3f}); {_directory_bytes(paths['baked']):,} bytes on disk, "
          f"dense {_directory_bytes(paths['dense']):,}")

    z = sampling.latents(tf.range(_BATCH_SIZE.value, dtype=tf.int64), spec.latent_dim)
    functions = {label: (lambda m=model: m.signatures["serving_default"](z=z)["images"].numpy())
                 for label, model in loaded.items()}
    latency = interleaved_latency(functions, _REPETITIONS.value, _CALLS.value)
    print(f"serving_default, batch {_BATCH_SIZE.value}, {_REPETITIONS.value} interleaved "
          f"repetitions x {_CALLS.value} calls, ms per call:")
    print(f"  {'model':<14}{'wall min':>10}{'wall median':>13}{'CPU median':>12}")
    for label in loaded:
      print(f"  {label:<14}" + "".join(f"{1e3 * latency[label][key]:{width}.1f}" for key, width
                                       in (("wall_min", 10), ("wall_median", 13),
                                           ("cpu_median", 12))))
    for numerator, note in (("baked", "target <= 1.05"), ("dense_control", "A/A control")):
      ratios = {key: latency[numerator][key] / latency["dense"][key] for key in latency["dense"]}
      print(f"  {numerator} / dense: wall min {ratios['wall_min']:.3f}, wall median "
            f"{ratios['wall_median']:.3f}, CPU median {ratios['cpu_median']:.3f} ({note})")

    seeds = tf.range(_SAMPLES_BATCH_SIZE.value, dtype=tf.int64)
    uint8 = loaded["baked"].signatures["generate_uint8"]
    seconds = interleaved_latency({"baked": lambda: uint8(seeds=seeds)["images"].numpy()},
                                  _REPETITIONS.value, _CALLS.value)["baked"]
    print(f"local SavedModel generate_uint8, batch {_SAMPLES_BATCH_SIZE.value}: "
          f"{_SAMPLES_BATCH_SIZE.value / seconds['wall_min']:.1f} samples/s at the best "
          f"repetition, {_SAMPLES_BATCH_SIZE.value / seconds['wall_median']:.1f} at the median "
          "(wall clock)")
  logging.info("done")


def _directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(parent, name))
             for parent, _, names in os.walk(path) for name in names)


if __name__ == "__main__":
  app.run(main)
