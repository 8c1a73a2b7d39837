"""Image helpers shared by training, evaluation and serving: quantisation, grids, PNG files."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from slt_tf import workdir


def to_uint8(images) -> tf.Tensor:
  """[-1, 1] float images -> uint8, as real images are stored: round((x + 1) * 127.5)."""
  images = tf.convert_to_tensor(images, tf.float32)
  return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def grid(images: np.ndarray, columns: int | None = None, padding: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*(H+p)+p, cols*(W+p)+p, C] image (white padding)."""
  images = np.asarray(images)
  count, height, width, channels = images.shape
  columns = columns or int(math.ceil(math.sqrt(count)))
  rows = int(math.ceil(count / columns))
  canvas = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding,
                    channels), 255, np.uint8)
  for index, image in enumerate(images):
    top = padding + (index // columns) * (height + padding)
    left = padding + (index % columns) * (width + padding)
    canvas[top:top + height, left:left + width] = image
  return canvas


def save_png(path: str, image: np.ndarray, upscale: int = 1) -> None:
  """Writes one uint8 [H, W, C] image as PNG (nearest-neighbour upscaled), atomically, on any
  filesystem tf.io.gfile knows."""
  image = np.asarray(image)
  if upscale > 1:
    image = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
  workdir.atomic_write(path, tf.io.encode_png(image).numpy())


def save_grid_png(path: str, images_uint8: np.ndarray, upscale: int = 1) -> None:
  save_png(path, grid(images_uint8), upscale=upscale)
