"""slt_tf's transposed convolution / TensorFlow's, forward and backward, measured side by side.

  python -m bench.transposed_conv [--batch_size=64 --rounds=9]

For each transposed convolution of the 16x16 digits generator (dcgan, filters (256, 128, 64):
4x4x256 -> 8x8x128 -> 16x16x64, kernel 4, stride 2; the default, whose layers stop at 8x8, has
the first only), one step computes the output and the gradients of a loss with respect to the
inputs and the kernel (what the ticket search needs). Every round runs both implementations in
turn, so machine noise hits both alike; the medians are printed with their ratio. Target: at
most 0.75, aim 0.6.
"""

import statistics
import time

from absl import app
from absl import flags
import keras
import tensorflow as tf

import slt_tf  # pylint: disable=unused-import
from slt_tf import transposed_conv

_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch.")
_ROUNDS = flags.DEFINE_integer("rounds", 9, "Alternating measurement rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 10, "Steps per implementation per round.")
# (input size, input channels, output channels) of the digits generator's two layers.
LAYERS = ((4, 256, 128), (8, 128, 64))


def make_step(op, size, in_channels, out_channels):
  x = tf.random.stateless_normal((_BATCH.value, size, size, in_channels), seed=(0, 1))
  kernel = tf.random.stateless_normal((4, 4, out_channels, in_channels), seed=(0, 2))

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch([x, kernel])
      y = op(x, kernel)
      loss = tf.reduce_sum(y * y)
    return tape.gradient(loss, [x, kernel])

  def run(num_steps):
    for _ in range(num_steps):
      grads = step()
    float(tf.reduce_sum(grads[1]))  # wait for the last step

  return run


def main(argv):
  del argv
  ops = {"tensorflow": lambda x, k: keras.ops.conv_transpose(x, k, strides=2, padding="same"),
         "slt_tf": lambda x, k: transposed_conv.conv_transpose(x, k, 2)}
  totals = {name: 0.0 for name in ops}
  for size, in_channels, out_channels in LAYERS:
    runs = {name: make_step(op, size, in_channels, out_channels) for name, op in ops.items()}
    for run in runs.values():
      run(2)  # trace and warm up
    wall = {name: [] for name in runs}
    for _ in range(_ROUNDS.value):
      for name, run in runs.items():
        start = time.perf_counter()
        run(_STEPS.value)
        wall[name].append((time.perf_counter() - start) / _STEPS.value)
    medians = {name: statistics.median(times) for name, times in wall.items()}
    for name, value in medians.items():
      totals[name] += value
    print(f"{size}x{size}x{in_channels} -> {2 * size}x{2 * size}x{out_channels}, batch "
          f"{_BATCH.value}: tensorflow {medians['tensorflow'] * 1000:6.1f} ms, slt_tf "
          f"{medians['slt_tf'] * 1000:6.1f} ms (forward + backward, medians of {_ROUNDS.value} "
          f"rounds x {_STEPS.value})")
  print(f"both layers: tensorflow {totals['tensorflow'] * 1000:.1f} ms, slt_tf "
        f"{totals['slt_tf'] * 1000:.1f} ms, ratio slt_tf/tensorflow "
        f"{totals['slt_tf'] / totals['tensorflow']:.3f} (target <= 0.75, aim 0.6)")


if __name__ == "__main__":
  app.run(main)
