"""Ticket format 2 (Rice-coded masks, frozen-weight source) and format 1 still read.

tests/testdata/ticket_v1.slt was written by the format-1 writer (zlib over packed bits) before
format 2 existed: a dcgan 8x8 (latent 16, filters 32, 16, mask_bias, seed 3, keep 0.1) with
its initial masks and random batch-norm statistics; ticket_v1_expected.npz holds those arrays
("/" in keys written as "__").
"""

import os
import struct

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest

from slt_tf import generators
from slt_tf import init_checkpoint
from slt_tf import mask_coding
from slt_tf import ticket as ticket_lib
from slt_tf.errors import SltError

_TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
_V1 = os.path.join(_TESTDATA, "ticket_v1.slt")


def _expected():
  with np.load(os.path.join(_TESTDATA, "ticket_v1_expected.npz")) as arrays:
    return {key.replace("__", "/"): arrays[key] for key in arrays.files}


def test_the_committed_v1_fixture_is_format_1():
  with open(_V1, "rb") as f:
    assert struct.unpack_from("<I", f.read(12), 8)[0] == 1


def test_a_version_1_ticket_still_loads_to_identical_masks():
  ticket = ticket_lib.load(_V1)
  expected = _expected()
  assert set(ticket.masks) | set(ticket.batch_norm) == set(expected)
  for key, mask in ticket.masks.items():
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected[key])
  for key, values in ticket.batch_norm.items():
    assert values.tobytes() == expected[key].astype(np.float32).tobytes()
  assert ticket.frozen_source is None and ticket.metadata == {"step": 40}
  assert ticket.spec.seed == 3 and ticket.spec.mask_bias
  ticket_lib.build_generator(ticket)  # Its masks are the seed's top-k: the generator computes it.


def test_a_v1_ticket_rewritten_as_v2_round_trips_bit_exactly_and_is_smaller(tmp_path):
  old = ticket_lib.load(_V1)
  path = os.path.join(tmp_path, "v2.slt")
  ticket_lib.save(old, path)
  with open(path, "rb") as f:
    assert struct.unpack_from("<I", f.read(12), 8)[0] == ticket_lib.FORMAT_VERSION == 2
  new = ticket_lib.load(path)
  assert new.spec == old.spec and new.metadata == old.metadata
  for key in old.masks:
    np.testing.assert_array_equal(new.masks[key], old.masks[key])
  for key in old.batch_norm:
    assert new.batch_norm[key].tobytes() == old.batch_norm[key].tobytes()
  assert ticket_lib.to_bytes(new) == ticket_lib.to_bytes(old)  # Deterministic bytes.


@pytest.mark.parametrize("keep,mask_bias", [(0.1, False), (0.5, True), (0.9, True), (1.0, False)])
def test_v2_round_trip_of_built_generators(keep, mask_bias):
  spec = generators.GeneratorSpec(name="resnet32", image_size=8, channels=3, latent_dim=8,
                                  filters=(16, 8), keep_fraction=keep, mask_bias=mask_bias,
                                  seed=5)
  ticket = ticket_lib.from_generator(generators.build(spec), {"step": 1})
  loaded = ticket_lib.from_bytes(ticket_lib.to_bytes(ticket))
  for key, mask in ticket.masks.items():
    np.testing.assert_array_equal(loaded.masks[key], mask)


def test_the_frozen_weight_source_round_trips_in_the_header():
  ticket = ticket_lib.load(_V1)
  source = init_checkpoint.Source("/runs/dense/checkpoints/ckpt-40", "ab" * 32)
  ticket.frozen_source = source
  assert ticket_lib.from_bytes(ticket_lib.to_bytes(ticket)).frozen_source == source


def test_a_keep_01_mask_payload_is_near_its_entropy_bound():
  spec = generators.GeneratorSpec(name="dcgan", image_size=16, channels=1, latent_dim=32,
                                  filters=(64, 32, 16), keep_fraction=0.1, seed=0)
  ticket = ticket_lib.from_generator(generators.build(spec))
  blob = ticket_lib.to_bytes(ticket)
  payload = sum(len(mask_coding.encode(m).data) for m in ticket.masks.values())
  bound = sum(mask_coding.entropy_bound_bytes(m.size, int(m.sum())) for m in ticket.masks.values())
  assert payload <= 1.03 * bound and len(blob) > payload


def test_a_future_format_is_refused_in_one_line():
  with open(_V1, "rb") as f:
    blob = bytearray(f.read())
  struct.pack_into("<I", blob, 8, 3)
  import hashlib  # pylint: disable=g-import-not-at-top
  body = bytes(blob[:-32])
  with pytest.raises(SltError, match=r"has ticket format 3; this slt_tf reads formats 1, 2"):
    ticket_lib.from_bytes(body + hashlib.sha256(body).digest())
