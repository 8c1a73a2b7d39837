"""Mask bits coded near their entropy: Rice codes of the gaps between kept positions.

A mask of n weights that keeps k of them carries at most log2(C(n, k)) <= n * H(k / n) bits
(H the binary entropy: 0.469 bits per weight at k / n = 0.1, where one bit per weight plus
zlib is about 1.25x that bound). A uniformly random k-subset has geometric gaps between its
kept positions, for which Golomb-Rice codes are near optimal (within about 1.5% of the bound
at every keep fraction; docs/method.md, "The ticket file").

Code of one mask (format version 2 of `slt_tf.ticket`):
  - the coded symbol is the minority one: the kept positions, or the dropped positions when
    more than half are kept (`inverted`), m of them in all;
  - gap i = number of non-coded positions before coded position i since the previous one;
  - with Rice parameter r (the one of 0..bit_length(n) giving the fewest bits, found exactly),
    gap g is split into q = g >> r, coded in unary (q zero bits then a one), and the r low
    bits of g;
  - the bytes are `packbits(all unary codes)` followed by `packbits(all remainders, r bits
    each, most significant first)`; both parts are zero-padded to whole bytes.
Encoding and decoding are vectorised NumPy (no Python loop over weights or gaps).

`decode` trusts nothing: every length is checked against the count n before anything of that
size is allocated, the unary part must hold exactly m ones, every gap must land inside the
mask and padding bits must be zero; so memory stays O(n) and there is no data-driven loop.
Version-1 tickets (one bit per weight, zlib) are read by `inflate_zlib_bits`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from slt_tf import errors


@dataclasses.dataclass(frozen=True)
class CodedMask:
  """The code of one mask and what its decoder needs besides the mask's size."""
  data: bytes
  num_kept: int
  rice_parameter: int
  inverted: bool


def entropy_bound_bytes(count: int, num_kept: int) -> float:
  """n * H(k / n) / 8: the bytes an i.i.d. keep-k/n coder needs on average."""
  if count <= 0 or num_kept in (0, count):
    return 0.0
  p = num_kept / count
  return count * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8


def max_rice_parameter(count: int) -> int:
  """The largest Rice parameter a mask of `count` weights may use (gaps are < count)."""
  return max(1, count).bit_length()


def _gaps(positions: np.ndarray) -> np.ndarray:
  """Non-coded positions before each coded one since the previous (int64 [m])."""
  return np.diff(positions, prepend=-1) - 1


def _best_rice_parameter(gaps: np.ndarray, count: int) -> int:
  """The r of 0..max_rice_parameter(count) with the fewest bits: sum(g >> r) + m * (1 + r)."""
  best_bits, best = None, 0
  for r in range(max_rice_parameter(count) + 1):
    bits = int(np.sum(gaps >> r)) + gaps.size * (1 + r)
    if best_bits is None or bits < best_bits:
      best_bits, best = bits, r
  return best


def encode(mask: np.ndarray) -> CodedMask:
  """Codes a bool mask (any shape; flattened in C order)."""
  bits = np.asarray(mask, bool).reshape(-1)
  count, num_kept = bits.size, int(np.count_nonzero(bits))
  inverted = 2 * num_kept > count
  positions = np.flatnonzero(~bits if inverted else bits).astype(np.int64)
  gaps = _gaps(positions)
  r = _best_rice_parameter(gaps, count)
  quotients = gaps >> r
  unary = np.zeros(int(quotients.sum()) + gaps.size, np.uint8)
  unary[np.cumsum(quotients + 1) - 1] = 1
  shifts = np.arange(r - 1, -1, -1, dtype=np.int64)
  remainders = ((gaps[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
  data = np.packbits(unary).tobytes() + np.packbits(remainders).tobytes()
  return CodedMask(data, num_kept, r, inverted)


def decode(data, *, count: int, num_kept: int, rice_parameter: int,
           inverted: bool) -> np.ndarray:
  """The bool mask [count] of `encode`'s bytes; SltError (one line) if they are not a code.

  Args:
    data: the coded bytes (bytes or memoryview).
    count: weights in the mask (trusted: from the ticket's validated generator spec).
    num_kept: kept weights (from the header: checked against 0..count and the code).
    rice_parameter: r (checked against 0..max_rice_parameter(count)).
    inverted: whether the dropped positions are coded (must be num_kept > count / 2).
  """
  if not 0 <= num_kept <= count:
    raise errors.SltError(f"num_kept={num_kept} is not in [0, {count}]")
  if not 0 <= rice_parameter <= max_rice_parameter(count):
    raise errors.SltError(f"Rice parameter {rice_parameter} is not in "
                          f"[0, {max_rice_parameter(count)}]")
  if inverted != (2 * num_kept > count):
    raise errors.SltError("'inverted' must be true exactly when more than half is kept")
  r = rice_parameter
  m = count - num_kept if inverted else num_kept
  remainder_bytes = (m * r + 7) // 8
  # sum(g >> r) <= (sum g) >> r = (count - m) >> r: the most unary bits a valid code has.
  max_unary_bytes = (((count - m) >> r) + m + 7) // 8
  unary_bytes = len(data) - remainder_bytes
  if not 0 <= unary_bytes <= max_unary_bytes:
    raise errors.SltError(f"{len(data)} coded bytes cannot code {m} gaps with Rice parameter "
                          f"{r} in {count} weights (at most {max_unary_bytes + remainder_bytes})")
  raw = np.frombuffer(data, np.uint8)
  ones = np.flatnonzero(np.unpackbits(raw[:unary_bytes]))
  if ones.size != m or (m and unary_bytes != ones[-1] // 8 + 1):
    raise errors.SltError(f"its unary part holds {ones.size} codes in {unary_bytes} bytes; "
                          f"{m} codes ending in the last byte are needed")
  quotients = np.diff(ones, prepend=-1) - 1
  remainder_bits = np.unpackbits(raw[unary_bytes:])
  if remainder_bits[m * r:].any():
    raise errors.SltError("padding bits after its remainders are set")
  remainders = np.zeros(m, np.int64)
  for column in remainder_bits[:m * r].reshape(m, r).T.astype(np.int64):  # r <= 29 columns.
    remainders = (remainders << 1) | column
  positions = np.cumsum((quotients << r) + remainders + 1) - 1
  if m and positions[-1] >= count:
    raise errors.SltError(f"its gaps run past the {count} weights")
  bits = np.zeros(count, bool)
  bits[positions] = True
  return ~bits if inverted else bits


def inflate_zlib_bits(data, count: int) -> np.ndarray:
  """Version 1: zlib-compressed `np.packbits` bits -> bool [count]; never inflates past
  the expected size (SltError, one line, otherwise)."""
  packed_bytes = (count + 7) // 8
  if len(data) > packed_bytes + packed_bytes // 100 + 64:  # zlib's worst case is ~0.03% + 11.
    raise errors.SltError(f"it has {len(data)} compressed bytes for {count} bits")
  inflater = zlib.decompressobj()
  try:
    packed = inflater.decompress(data, packed_bytes + 1)
  except zlib.error as e:
    raise errors.SltError(f"it is not a valid zlib stream ({e})") from None
  if len(packed) != packed_bytes or not inflater.eof or inflater.unconsumed_tail:
    raise errors.SltError(f"it does not inflate to exactly {packed_bytes} bytes ({count} bits)")
  bits = np.unpackbits(np.frombuffer(packed, np.uint8))
  if bits[count:].any():
    raise errors.SltError(f"it has bits set past its {count} weights")
  return bits[:count].astype(bool)
