"""Sample-quality metrics on activations: FID, KID, Inception score, PRDC, judge confidence.

Pure functions of activation matrices (an evaluation network's embeddings [N, D] and logits
[N, K], see `slt_tf.activations`), never of images. FID, KID and the Inception score are
TF-GAN's (`slt_tf.tfgan_compat`), computed in float64; PRDC is blocked NumPy in float64. Each
is checked against an independent NumPy/SciPy reference in tests/metrics_test.py.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from slt_tf import tfgan_compat
from slt_tf.errors import SltError

# Rows of a pairwise-distance block are chosen so that one float64 block is about this big.
_DISTANCE_BLOCK_BYTES = 128 * 2**20
METRIC_NAMES = ("fid", "kid", "kid_std", "inception_score", "precision", "recall", "density",
                "coverage", "confident_fraction", "confident_classes")
# A sample the judge classifies with at least this top-class probability counts as "confident":
# on the dataset classifiers, a stand-in for "a person reads it as one class".
CONFIDENCE_THRESHOLD = 0.9


def _check_features(name: str, features: Any, min_rows: int = 2) -> np.ndarray:
  """Returns `features` as an array after checking it is a finite [N >= min_rows, D] matrix."""
  features = np.asarray(features)
  if features.ndim != 2 or features.shape[0] < min_rows or features.shape[1] < 1:
    raise SltError(f"{name} must be a matrix [num_samples >= {min_rows}, dim >= 1], "
                   f"got shape {features.shape}.")
  if not np.issubdtype(features.dtype, np.floating):
    features = features.astype(np.float64)
  if not np.all(np.isfinite(features)):
    raise SltError(f"{name} contains nan or inf values; activations must be finite.")
  return features


def _check_pair(real: Any, fake: Any, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
  real = _check_features("real activations", real, min_rows)
  fake = _check_features("fake activations", fake, min_rows)
  if real.shape[1] != fake.shape[1]:
    raise SltError(f"real and fake activations must have the same dimension, got "
                   f"{real.shape[1]} and {fake.shape[1]}.")
  return real, fake


def fid(real_activations: np.ndarray, fake_activations: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two activation sets, via TF-GAN.

  FID = |mu_r - mu_f|^2 + Tr(C_r + C_f - 2 (C_r C_f)^(1/2)) (Heusel et al. 2017, eq. 6),
  with unbiased sample covariances, computed in float64.

  Args:
    real_activations: [N_r, D].
    fake_activations: [N_f, D].

  Returns:
    The FID (lower is better).
  """
  real, fake = _check_pair(real_activations, fake_activations)
  distance = tfgan_compat.frechet_classifier_distance_from_activations(
      tf.constant(real, tf.float64), tf.constant(fake, tf.float64))
  return float(distance)


def kid(real_activations: np.ndarray, fake_activations: np.ndarray,
        max_block_size: int = 1024) -> tuple[float, float]:
  """Kernel Inception distance (Binkowski et al. 2018) and its standard error, via TF-GAN.

  The unbiased MMD^2 estimate with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3,
  averaged over blocks (TF-GAN's block estimator, Zaremba et al. 2013): both sets are cut,
  in their given order, into ceil(max(N_r, N_f) / max_block_size) blocks of nearly equal
  size, so the sets should be in random order. Computed in float64.

  Args:
    real_activations: [N_r, D].
    fake_activations: [N_f, D].
    max_block_size: largest block; the default 1024 is TF-GAN's.

  Returns:
    (kid, standard error of the block mean). The standard error is nan with one block.
  """
  real, fake = _check_pair(real_activations, fake_activations)
  if max_block_size < 2:
    raise SltError(f"max_block_size must be an integer >= 2, got {max_block_size}.")
  num_blocks = math.ceil(max(len(real), len(fake)) / max_block_size)
  if min(len(real), len(fake)) < 2 * num_blocks:
    raise SltError(f"KID needs at least 2 samples per block: {num_blocks} blocks of at most "
                   f"{max_block_size}, got {len(real)} real and {len(fake)} fake samples.")
  mean, std = tfgan_compat.kernel_classifier_distance_and_std_from_activations(
      tf.constant(real, tf.float64), tf.constant(fake, tf.float64),
      max_block_size=max_block_size)
  return float(mean), float(std)


def inception_score(logits: np.ndarray, num_splits: int = 10) -> float:
  """Inception score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), via TF-GAN.

  Like the original implementation, the samples are cut into `num_splits` contiguous parts
  (sizes differing by at most one, `np.array_split`), p(y) is the mean prediction within a
  part, and the score is the mean of the per-part scores. TF-GAN's
  `classifier_score_from_logits` scores one part (float64 inside); `num_splits=1` is exactly
  TF-GAN's value on all samples. More splits give a lower score on the same samples, so
  compare scores only at the same number of splits and samples.

  Args:
    logits: [N, K] classifier logits of generated images.
    num_splits: number of parts, 1 <= num_splits <= N.

  Returns:
    The mean score over the parts (between 1 and K; higher is better).
  """
  logits = _check_features("logits", logits, min_rows=1)
  if not 1 <= num_splits <= len(logits):
    raise SltError(f"num_splits must be between 1 and the number of samples "
                   f"({len(logits)}), got {num_splits}.")
  scores = [float(tfgan_compat.classifier_score_from_logits(tf.constant(part, tf.float64)))
            for part in np.array_split(logits, num_splits)]
  return float(np.mean(scores))


def judge_confidence(logits: np.ndarray,
                     threshold: float = CONFIDENCE_THRESHOLD) -> tuple[float, int]:
  """How many samples the evaluation classifier reads as one class, and how many classes.

  Args:
    logits: [N, K] classifier logits of generated (or real) images.
    threshold: the top-class softmax probability from which a sample counts as confident.

  Returns:
    (the fraction of samples whose top-class probability is >= threshold, the number of
    distinct top classes among those samples).
  """
  logits = _check_features("logits", logits, min_rows=1)
  exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
  probabilities = exponentials / exponentials.sum(axis=1, keepdims=True)
  confident = probabilities.max(axis=1) >= threshold
  classes = np.unique(probabilities[confident].argmax(axis=1))
  return float(confident.mean()), int(classes.size)


def _distance_row_blocks(rows: np.ndarray, columns: np.ndarray, center: np.ndarray,
                         block_rows: int | None) -> Iterator[tuple[slice, np.ndarray]]:
  """Yields (row slice, squared Euclidean distances [rows in slice, N_columns]) in float64.

  Only `columns` (centered, float64) and one block are held at a time. Centering both sets
  at the same point leaves distances unchanged and keeps the expansion
  |x|^2 + |y|^2 - 2 x.y accurate.
  """
  columns = np.subtract(columns, center, dtype=np.float64)       # (N_c, D)
  column_norms = np.einsum("ij,ij->i", columns, columns)           # (N_c,)
  if block_rows is None:
    block_rows = max(1, _DISTANCE_BLOCK_BYTES // (8 * len(columns)))
  for start in range(0, len(rows), block_rows):
    block = slice(start, min(start + block_rows, len(rows)))
    row_chunk = np.subtract(rows[block], center, dtype=np.float64)  # (B, D)
    squared = row_chunk @ columns.T                                # (B, N_c)
    squared *= -2.0
    squared += np.einsum("ij,ij->i", row_chunk, row_chunk)[:, None]
    squared += column_norms[None, :]
    np.maximum(squared, 0.0, out=squared)
    yield block, squared


def _squared_knn_radii(features: np.ndarray, nearest_k: int, center: np.ndarray,
                       block_rows: int | None) -> np.ndarray:
  """Squared distance of each sample to its k-th nearest neighbour in the same set.

  As in Naeem et al.'s code, this is the (k+1)-th smallest distance of a row, the sample
  itself (distance 0) being the first.
  """
  radii = np.empty(len(features), np.float64)
  for block, squared in _distance_row_blocks(features, features, center, block_rows):
    radii[block] = np.partition(squared, nearest_k, axis=1)[:, nearest_k]
  return radii


def prdc(real_features: np.ndarray, fake_features: np.ndarray, nearest_k: int = 5, *,
         block_rows: int | None = None) -> dict[str, float]:
  """Precision, recall, density and coverage (Naeem et al. 2020, eqs. 1-4; Kynkaanniemi 2019).

  With B(x, r) the open ball around x and NND_k(x) the distance from x to its k-th nearest
  neighbour within its own set (real X_i, fake Y_j):
    precision = mean_j 1[exists i: Y_j in B(X_i, NND_k(X_i))]
    recall    = mean_i 1[exists j: X_i in B(Y_j, NND_k(Y_j))]
    density   = 1/k mean_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
    coverage  = mean_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]
  Euclidean distances in float64, same conventions as the authors' `prdc` package.

  Memory: the distance matrices are never held whole. They are computed in blocks of
  `block_rows` rows (default: about 128 MiB of float64 per block), so besides the inputs
  the peak is one float64 copy of one set plus a few blocks: O((N + block_rows) * D +
  block_rows * N), not O(N^2). Time is O(N^2 D) (three matrix products).

  Args:
    real_features: [N_r, D], N_r > nearest_k.
    fake_features: [N_f, D], N_f > nearest_k.
    nearest_k: k of the k-nearest-neighbour balls (the paper uses 5).
    block_rows: rows per distance block; None picks it from the memory budget.

  Returns:
    {"precision", "recall", "density", "coverage"} as floats. Precision, recall and coverage
    are in [0, 1]; density can exceed 1.
  """
  if nearest_k < 1:
    raise SltError(f"nearest_k must be an integer >= 1, got {nearest_k}.")
  if block_rows is not None and block_rows < 1:
    raise SltError(f"block_rows must be None or an integer >= 1, got {block_rows}.")
  real, fake = _check_pair(real_features, fake_features, min_rows=nearest_k + 1)
  center = real.mean(axis=0, dtype=np.float64)
  real_radii = _squared_knn_radii(real, nearest_k, center, block_rows)  # (N_r,)
  fake_radii = _squared_knn_radii(fake, nearest_k, center, block_rows)  # (N_f,)

  fake_in_some_real_ball = np.zeros(len(fake), bool)
  real_balls_per_fake = np.zeros(len(fake), np.int64)
  real_in_some_fake_ball = np.empty(len(real), bool)
  real_ball_holds_a_fake = np.empty(len(real), bool)
  for block, squared in _distance_row_blocks(real, fake, center, block_rows):
    # squared: (B real, N_f fake).
    inside_real_balls = squared < real_radii[block, None]
    fake_in_some_real_ball |= inside_real_balls.any(axis=0)
    real_balls_per_fake += inside_real_balls.sum(axis=0)
    real_ball_holds_a_fake[block] = inside_real_balls.any(axis=1)
    real_in_some_fake_ball[block] = (squared < fake_radii[None, :]).any(axis=1)
  return {
      "precision": float(fake_in_some_real_ball.mean()),
      "recall": float(real_in_some_fake_ball.mean()),
      "density": float(real_balls_per_fake.mean() / nearest_k),
      "coverage": float(real_ball_holds_a_fake.mean()),
  }


def compute_metrics(real_emb: np.ndarray, real_logits: np.ndarray | None,
                    fake_emb: np.ndarray, fake_logits: np.ndarray | None, *,
                    nearest_k: int = 5, inception_splits: int = 10) -> dict[str, float | None]:
  """All metrics of generated against real activations.

  Args:
    real_emb: [N_r, E] real embeddings.
    real_logits: [N_r, K] or None; only checked against fake_logits (the Inception score is
      a property of the generated samples alone).
    fake_emb: [N_f, E] generated embeddings.
    fake_logits: [N_f, K] or None.
    nearest_k: k of precision/recall/density/coverage.
    inception_splits: splits of the Inception score (at most N_f).

  Returns:
    {"fid", "kid", "kid_std", "inception_score", "precision", "recall", "density",
    "coverage", "confident_fraction", "confident_classes"}. The last two
    (`judge_confidence`) and inception_score are None without logits; kid_std is None when
    KID used a single block (fewer than 1025 samples).
  """
  if (real_logits is not None and fake_logits is not None and
      np.shape(real_logits)[1:] != np.shape(fake_logits)[1:]):
    raise SltError(f"real and fake logits must have the same number of classes, got "
                   f"{np.shape(real_logits)} and {np.shape(fake_logits)}.")
  kid_mean, kid_std = kid(real_emb, fake_emb)
  metrics = {
      "fid": fid(real_emb, fake_emb),
      "kid": kid_mean,
      "kid_std": None if math.isnan(kid_std) else kid_std,
      "inception_score": (None if fake_logits is None else
                          inception_score(fake_logits, inception_splits)),
  }
  confidence = (None, None) if fake_logits is None else judge_confidence(fake_logits)
  metrics.update(confident_fraction=confidence[0], confident_classes=confidence[1])
  metrics.update(prdc(real_emb, fake_emb, nearest_k))
  return metrics

