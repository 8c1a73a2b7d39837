"""Masks coded near n * H(k) bits, decoded bit-exactly, hostile codes bounded."""

import os
import time
import tracemalloc

import numpy as np
import pytest

from slt_tf import mask_coding
from slt_tf.errors import SltError


def _round_trip(mask):
  coded = mask_coding.encode(mask)
  decoded = mask_coding.decode(coded.data, count=mask.size, num_kept=coded.num_kept,
                               rice_parameter=coded.rice_parameter, inverted=coded.inverted)
  return coded, decoded


def test_round_trip_is_bit_exact_for_every_small_mask_and_fraction():
  rng = np.random.default_rng(0)
  for count in range(0, 40):
    for _ in range(20):
      mask = rng.random(count) < rng.random()
      coded, decoded = _round_trip(mask)
      np.testing.assert_array_equal(decoded, mask)
      assert coded.num_kept == int(mask.sum())


@pytest.mark.parametrize("mask", [
    np.zeros(1000, bool), np.ones(1000, bool), np.eye(64, dtype=bool).reshape(-1),
    np.arange(5000) % 977 == 3, np.arange(5000) < 2500, np.arange(4097) >= 1,
])
def test_round_trip_of_structured_masks(mask):
  np.testing.assert_array_equal(_round_trip(mask)[1], mask)


@pytest.mark.parametrize("keep", [0.05, 0.1, 0.3, 0.5, 0.7, 0.95])
def test_a_random_mask_is_within_3_percent_of_its_entropy_bound(keep):
  rng = np.random.default_rng(1)
  count = 300_000
  mask = np.zeros(count, bool)
  mask[rng.choice(count, int(keep * count), replace=False)] = True
  coded, decoded = _round_trip(mask)
  np.testing.assert_array_equal(decoded, mask)
  bound = mask_coding.entropy_bound_bytes(count, coded.num_kept)
  assert bound <= len(coded.data) <= 1.03 * bound, (len(coded.data), bound)


def test_a_resnet32_sized_mask_codes_and_decodes_in_well_under_a_second_or_two():
  rng = np.random.default_rng(2)
  mask = rng.random(3_500_000) < 0.1
  start = time.perf_counter()
  coded = mask_coding.encode(mask)
  middle = time.perf_counter()
  decoded = mask_coding.decode(coded.data, count=mask.size, num_kept=coded.num_kept,
                               rice_parameter=coded.rice_parameter, inverted=coded.inverted)
  end = time.perf_counter()
  np.testing.assert_array_equal(decoded, mask)
  # About 0.04 s and 0.02 s on an idle core; the bound leaves room for a loaded machine.
  assert middle - start < 2 and end - middle < 2, (middle - start, end - middle)


def _decode(data, count, num_kept, r=0, inverted=False):
  return mask_coding.decode(data, count=count, num_kept=num_kept, rice_parameter=r,
                            inverted=inverted)


@pytest.mark.parametrize("data,count,num_kept,r,inverted,message", [
    (b"\x00" * 100, 8, 1, 0, False, r"100 coded bytes cannot code 1 gaps"),  # Long stream.
    (b"\x00", 8, 1, 0, False, r"unary part holds 0 codes"),        # No terminating one.
    (b"\xff", 8, 1, 0, False, r"unary part holds 8 codes"),        # Too many codes.
    (b"\x80\x00", 64, 1, 0, False, r"1 codes ending in the last byte"),  # Trailing zero byte.
    (b"\x01\x01", 9, 2, 0, False, r"run past the 9 weights"),       # Gaps past the end.
    (b"\x80\x7f", 8, 1, 3, False, r"padding bits after its remainders"),
    (b"", 8, 9, 0, False, r"num_kept=9 is not in \[0, 8\]"),
    (b"", 8, 1, 9, False, r"Rice parameter 9 is not in \[0, 4\]"),
    (b"", 8, 6, 0, False, r"'inverted' must be true exactly"),
])
def test_bad_codes_are_one_line_errors(data, count, num_kept, r, inverted, message):
  with pytest.raises(SltError, match=message) as error:
    _decode(data, count, num_kept, r, inverted)
  assert "\n" not in str(error.value)


def test_a_hostile_code_never_allocates_past_the_mask_size_nor_loops():
  # A 16 MB stream of zero bits claims one code for a 1000-weight mask (an endless unary run).
  count = 1000
  cases = [(bytes(16 << 20), 1, 0), (b"\xff" * (16 << 20), 500, 0),
           (os.urandom(1 << 20), 100, 3)]
  tracemalloc.start()
  start = time.monotonic()
  for data, num_kept, r in cases:
    with pytest.raises(SltError):
      _decode(data, count, num_kept, r)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 1 << 20 and time.monotonic() - start < 5, peak


def test_random_bytes_either_decode_to_a_valid_mask_or_are_refused():
  rng = np.random.default_rng(3)
  for _ in range(300):
    count = int(rng.integers(1, 200))
    num_kept = int(rng.integers(0, count // 2 + 1))
    r = int(rng.integers(0, mask_coding.max_rice_parameter(count) + 1))
    data = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
    try:
      mask = _decode(data, count, num_kept, r)
    except SltError:
      continue
    assert mask.shape == (count,) and int(mask.sum()) == num_kept


def test_v1_inflation_is_bounded():
  import zlib  # pylint: disable=g-import-not-at-top
  with pytest.raises(SltError, match="does not inflate to exactly 2 bytes"):
    mask_coding.inflate_zlib_bits(zlib.compress(bytes(1000)), 16)
  np.testing.assert_array_equal(
      mask_coding.inflate_zlib_bits(zlib.compress(b"\x80\x00"), 9), [1] + [0] * 8)
