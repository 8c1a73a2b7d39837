"""A ticket with a valid SHA-256 is still validated before anything is allocated.

Format-1 (zlib) payloads are checked on `blob_v1`, a ticket written as the old writer did;
the format-2 gap code's own hostile cases are in mask_coding_test.py.
"""

import hashlib
import json
import struct
import time
import tracemalloc
import zlib

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest

from slt_tf import generators
from slt_tf import mask_coding
from slt_tf import ticket as ticket_lib
from slt_tf.errors import SltError
from slt_tf.export import bake

_PREFIX = struct.Struct("<8sII")


def _spec(**kwargs):
  values = dict(name="dcgan", image_size=8, channels=1, latent_dim=8, filters=(16, 8),
                keep_fraction=0.1, seed=3)
  values.update(kwargs)
  return generators.GeneratorSpec(**values)


@pytest.fixture(scope="module")
def blob():
  return ticket_lib.to_bytes(ticket_lib.from_generator(generators.build(_spec()), {"step": 5}))


@pytest.fixture(scope="module")
def blob_v1():
  """The same ticket in format 1, as the format-1 writer made it (zlib over packed bits)."""
  ticket = ticket_lib.from_generator(generators.build(_spec()), {"step": 5})
  entries, chunks, offset = [], [], 0
  for key, mask in ticket.masks.items():
    data = zlib.compress(np.packbits(mask.reshape(-1)).tobytes(), 9)
    entries.append({"key": key, "kind": "mask", "shape": list(mask.shape),
                    "num_kept": int(mask.sum()), "offset": offset, "length": len(data)})
    chunks.append(data)
    offset += len(data)
  for key, values in ticket.batch_norm.items():
    data = np.asarray(values, "<f4").tobytes()
    entries.append({"key": key, "kind": "float32", "shape": list(values.shape),
                    "offset": offset, "length": len(data)})
    chunks.append(data)
    offset += len(data)
  header = {"generator": ticket.spec.to_dict(), "arrays": entries, "metadata": ticket.metadata}
  return seal(header, b"".join(chunks), version=1)


def split(blob):
  """(header dict, payload bytes) of a ticket."""
  _, _, length = _PREFIX.unpack_from(blob)
  header = json.loads(blob[_PREFIX.size:_PREFIX.size + length])
  return header, blob[_PREFIX.size + length:-32]


def seal(header, payload, raw_header=None, version=ticket_lib.FORMAT_VERSION):
  """A ticket with a correct checksum around any header and payload."""
  data = raw_header if raw_header is not None else json.dumps(header).encode()
  body = _PREFIX.pack(ticket_lib.MAGIC, version, len(data)) + data + payload
  return body + hashlib.sha256(body).digest()


def entry(header, key):
  return next(e for e in header["arrays"] if e["key"] == key)


def test_expected_arrays_agree_with_every_built_generator():
  for name, size, filters in [("dcgan", 16, (8, 6, 4)), ("dcgan", 4, (5,)),
                              ("resnet32", 8, (8, 4)), ("sngan64", 8, (6, 5))]:
    for mask_bias in (False, True):
      spec = _spec(name=name, image_size=size, filters=filters, mask_bias=mask_bias)
      ticket = ticket_lib.from_generator(generators.build(spec))
      shapes = {k: v.shape for k, v in {**ticket.masks, **ticket.batch_norm}.items()}
      assert shapes == ticket_lib.expected_arrays(spec)


def test_huge_claimed_mask_shape_is_refused_before_any_allocation(blob):
  # Old code: np.unpackbits(count=1e9) -> 13.5 GB before a traceback.
  header, payload = split(blob)
  entry(header, "dense_in/kernel")["shape"] = [1000, 1000000]
  tracemalloc.start()
  with pytest.raises(SltError, match=r"array 'dense_in/kernel' has shape \[1000, 1000000\]; "
                     r"generator dense_in needs \[8, 256\]"):
    ticket_lib.from_bytes(seal(header, payload))
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 20 << 20


def test_huge_generator_spec_is_refused(blob):
  header, payload = split(blob)
  header["generator"]["filters"] = [16384, 16384]
  header["generator"]["latent_dim"] = 65536
  with pytest.raises(SltError, match=r"weights; at most \d+ are allowed"):
    ticket_lib.from_bytes(seal(header, payload))


def test_v1_blob_reads_as_the_v2_blob(blob, blob_v1):
  new, old = ticket_lib.from_bytes(blob), ticket_lib.from_bytes(blob_v1)
  def mask_bytes(b):
    return sum(e["length"] for e in split(b)[0]["arrays"] if e["kind"] == "mask")
  assert mask_bytes(blob) < mask_bytes(blob_v1)
  for key in new.masks:
    np.testing.assert_array_equal(new.masks[key], old.masks[key])


def test_zlib_bomb_is_not_inflated_past_the_mask_size(blob_v1):
  # Old code: zlib.decompress of 1 MB -> hundreds of MB, then an export.
  header, payload = split(blob_v1)
  bomb = zlib.compress(b"\0" * (200 << 20), 9)
  first = header["arrays"][0]
  shift = len(bomb) - first["length"]
  payload = bomb + payload[first["length"]:]
  first["length"] = len(bomb)
  for later in header["arrays"][1:]:
    later["offset"] += shift
  tracemalloc.start()
  start = time.monotonic()
  with pytest.raises(SltError, match="compressed bytes for|does not inflate to exactly"):
    ticket_lib.from_bytes(seal(header, payload, version=1))
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 20 << 20 and time.monotonic() - start < 5


def test_bounded_inflation_refuses_a_stream_longer_than_the_mask(blob_v1):
  header, payload = split(blob_v1)
  first = header["arrays"][0]
  count = int(np.prod(first["shape"]))
  longer = zlib.compress(b"\0" * ((count + 7) // 8 + 4096), 9)
  payload = longer + payload[first["length"]:]
  shift = len(longer) - first["length"]
  first["length"], first["num_kept"] = len(longer), 0
  for later in header["arrays"][1:]:
    later["offset"] += shift
  with pytest.raises(SltError, match=r"does not inflate to exactly 256 bytes"):
    ticket_lib.from_bytes(seal(header, payload, version=1))


def test_num_kept_is_compared_with_the_popcount(blob, blob_v1):
  header, payload = split(blob_v1)
  entry(header, "dense_in/kernel")["num_kept"] = 0
  with pytest.raises(SltError, match=r"mask 'dense_in/kernel' keeps 205 weights but its header "
                     r"says num_kept=0"):
    ticket_lib.from_bytes(seal(header, payload, version=1))
  header, payload = split(blob)  # Format 2: the gap code itself holds num_kept codes.
  entry(header, "dense_in/kernel")["num_kept"] = 204
  with pytest.raises(SltError, match=r"mask 'dense_in/kernel': its unary part holds 205 codes"):
    ticket_lib.from_bytes(seal(header, payload))


def test_export_uses_the_mask_bits_as_they_are(blob, tmp_path):
  # Old code: the mask became scores and top-k re-selected 10% of them (205 of 2048 kept).
  header, payload = split(blob)
  first = entry(header, "dense_in/kernel")
  count = int(np.prod(first["shape"]))
  empty = mask_coding.encode(np.zeros(count, bool)).data
  payload = payload[:first["offset"]] + empty + payload[first["offset"] + first["length"]:]
  shift = len(empty) - first["length"]
  for later in header["arrays"]:
    if later["offset"] > first["offset"]:
      later["offset"] += shift
  first["length"], first["num_kept"] = len(empty), 0
  first["rice_parameter"] = 0
  path = tmp_path / "zero.slt"
  path.write_bytes(seal(header, payload))
  plain, metadata = bake.from_ticket_file(str(path))
  counts = bake.kept_counts(plain)
  assert counts["dense_in"] == (0, count)
  ticket = ticket_lib.load(str(path))
  assert metadata["num_kernel_nonzero"] == ticket.num_kept
  with pytest.raises(SltError, match=r"keeps 0 of 2048 weights, which edge_popup"):
    ticket_lib.build_generator(ticket)  # The training generator cannot compute it.


@pytest.mark.parametrize("damage,message", [
    (lambda h: h.pop("arrays"), r"header must be an object with keys arrays, frozen_weights, "
     r"generator, metadata"),
    (lambda h: h.update(frozen_weights={"source": "checkpoint", "checkpoint": "x"}),
     r"frozen_weights must be"),
    (lambda h: h["arrays"][0].update(inverted=1), r"inverted must be true or false"),
    (lambda h: h["arrays"][0].update(rice_parameter=-1), r"rice_parameter must be a non-neg"),
    (lambda h: h["arrays"][0].update(rice_parameter=40), r"Rice parameter 40 is not in"),
    (lambda h: h["arrays"][0].pop("rice_parameter"), r"must be an object with fields"),
    (lambda h: h.update(arrays={}), r"'arrays' a list"),
    (lambda h: h["generator"].update(latent_dim=0), r"generator latent_dim must be an integer in "
     r"\[1, 65536\], got 0"),
    (lambda h: h["generator"].update(latent_dim="8"), r"generator latent_dim must be an integer"),
    (lambda h: h["generator"].update(filters=[0, 0]), r"generator filters must be a list of 1 "
     r"to 16 integers"),
    (lambda h: h["generator"].update(name="vgg"), r"generator name must be one of"),
    (lambda h: h["generator"].update(method="dense"), r"generator method must be edge_popup"),
    (lambda h: h["generator"].pop("seed"), r"must have exactly the fields"),
    (lambda h: h["generator"].update(native_size="8"), r"generator native_size must be an "
     r"integer in \[0, "),
    (lambda h: h["generator"].update(native_size=12), r"native_size must be 0 \(off\) or a "
     r"power of two below image_size 8, got 12"),
    (lambda h: h["metadata"].update(step=-1), r"metadata step must be a non-negative integer"),
    (lambda h: h["arrays"][0].update(offset=3), r"is not the next contiguous range"),
    (lambda h: h["arrays"][0].update(key="evil/kernel"), r"'evil/kernel' is not one the "
     "generator has"),
    (lambda h: h["arrays"].pop(), r"arrays missing for generator dcgan"),
    (lambda h: h["arrays"].append(dict(h["arrays"][0])), r"appears twice"),
    (lambda h: h["arrays"][-1].update(shape=[7]), r"needs \[8\]"),
    (lambda h: h["arrays"][0].update(kind="float32"), r"must be of kind mask"),
])
def test_bad_header_with_valid_checksum_is_one_line(blob, damage, message):
  header, payload = split(blob)
  damage(header)
  with pytest.raises(SltError, match=message) as error:
    ticket_lib.from_bytes(seal(header, payload), source="t.slt")
  assert "\n" not in str(error.value) and str(error.value).startswith("t.slt is not a valid")


@pytest.mark.parametrize("raw", [b"{", b"[" * 100000, b"\xff\xfe", b"[1, 2]"])
def test_header_that_is_not_a_json_object_is_one_line(blob, raw):
  _, payload = split(blob)
  with pytest.raises(SltError, match="t.slt is not a valid ticket: its header"):
    ticket_lib.from_bytes(seal(None, payload, raw_header=raw), source="t.slt")


def test_bad_zlib_stream_and_bad_bn_values_are_one_line(blob, blob_v1):
  header, payload = split(blob_v1)
  first = header["arrays"][0]
  broken = b"\x00" * first["length"] + payload[first["length"]:]
  with pytest.raises(SltError, match="is not a valid zlib stream"):
    ticket_lib.from_bytes(seal(header, broken, version=1))
  header, payload = split(blob)
  variance = entry(header, "in_bn/moving_variance")
  nan = bytearray(payload)
  nan[variance["offset"]:variance["offset"] + 4] = np.float32(np.nan).tobytes()
  with pytest.raises(SltError, match="must be finite"):
    ticket_lib.from_bytes(seal(header, bytes(nan)))


def test_header_length_past_the_file_is_one_line(blob):
  header, payload = split(blob)
  data = json.dumps(header).encode()
  body = _PREFIX.pack(ticket_lib.MAGIC, ticket_lib.FORMAT_VERSION, 1 << 30) + data + payload
  with pytest.raises(SltError, match="header length 1073741824 exceeds"):
    ticket_lib.from_bytes(body + hashlib.sha256(body).digest())


def test_directory_as_ticket_is_one_line(tmp_path):
  with pytest.raises(SltError, match=r"is a directory; pass the ticket file itself"):
    ticket_lib.load(str(tmp_path))
