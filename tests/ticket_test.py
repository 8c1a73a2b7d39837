"""Tests for slt_tf.ticket: round trip, exact rebuild from the seed, damage detection, size."""

import hashlib
import os
import struct

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest

from slt_tf import generators
from slt_tf import masking
from slt_tf import ticket as ticket_lib
from slt_tf.errors import SltError


def _spec(method="edge_popup", mask_bias=False, **kwargs):
  values = dict(name="resnet32", image_size=8, channels=3, latent_dim=8, filters=(8, 4),
                method=method, keep_fraction=0.3, mask_bias=mask_bias, seed=7,
                score_init="uniform_01" if method == "global_edge_popup" else "kaiming_uniform")
  values.update(kwargs)
  return generators.GeneratorSpec(**values)


def _latents(batch=4, dim=8, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, dim)).astype(np.float32)


def _trained(spec):
  """A generator whose scores and BN statistics differ from their initial values."""
  generator = generators.build(spec)
  rng = np.random.default_rng(1)
  for variable in generator.trainable_variables:
    variable.assign(rng.standard_normal(variable.shape).astype(np.float32))
  for seed in range(3):  # Moves the batch-norm moving statistics.
    generator(_latents(16, spec.latent_dim, seed=10 + seed), training=True)
  return generator


def _blob(spec=None, metadata=None):
  return ticket_lib.to_bytes(ticket_lib.from_generator(_trained(spec or _spec()), metadata))


@pytest.mark.parametrize("method,mask_bias,native_size", [
    ("edge_popup", False, 0), ("edge_popup", True, 0), ("global_edge_popup", False, 0),
    ("edge_popup", False, 4), ("edge_popup", False, "stop at 4")])
def test_round_trip_through_bytes_preserves_masks_batch_norm_spec_and_metadata(method, mask_bias,
                                                                               native_size):
  stop = native_size == "stop at 4"  # filters up to 4x4: the layers stop at native_size
  generator = _trained(_spec(method, mask_bias, native_size=4 if stop else native_size,
                             **({"filters": (8,)} if stop else {})))
  metadata = {"step": 40, "dataset": "digits", "fid": 12.5, "keep": [0.1, 0.3]}
  ticket = ticket_lib.from_generator(generator, metadata)
  restored = ticket_lib.from_bytes(ticket_lib.to_bytes(ticket))
  assert restored.spec == generator.spec
  assert restored.metadata == metadata
  assert sorted(restored.masks) == sorted(ticket.masks)
  expected_keys = {f"{l.name}/kernel" for l in generator.scored_layers()}
  if mask_bias:
    expected_keys |= {f"{l.name}/bias" for l in generator.scored_layers() if l.bias is not None}
  assert set(ticket.masks) == expected_keys
  for key, mask in ticket.masks.items():
    assert restored.masks[key].dtype == bool and restored.masks[key].shape == mask.shape
    np.testing.assert_array_equal(restored.masks[key], mask)
  assert set(restored.batch_norm) == {f"{l.name}/{s}" for l in generator.batch_norm_layers()
                                      for s in ("moving_mean", "moving_variance")}
  for layer in generator.batch_norm_layers():
    for name in ("moving_mean", "moving_variance"):
      value = restored.batch_norm[f"{layer.name}/{name}"]
      assert value.dtype == np.float32
      np.testing.assert_array_equal(value, getattr(layer, name).numpy())
  assert restored.num_weights == ticket.num_weights
  assert restored.num_kept == ticket.num_kept


def test_masks_are_the_generator_masks_with_exactly_k_kept():
  generator = _trained(_spec())
  ticket = ticket_lib.from_generator(generator)
  for layer in generator.scored_layers():
    mask = ticket.masks[f"{layer.name}/kernel"]
    np.testing.assert_array_equal(mask, layer.masks()[0].numpy().astype(bool))
    assert mask.sum() == masking.num_kept(mask.size, 0.3)
  global_ticket = ticket_lib.from_generator(_trained(_spec("global_edge_popup")))
  assert global_ticket.num_kept == masking.num_kept(global_ticket.num_weights, 0.3)


@pytest.mark.parametrize("method,mask_bias", [("edge_popup", False), ("edge_popup", True),
                                              ("global_edge_popup", True)])
def test_build_generator_from_the_ticket_file_reproduces_the_trained_outputs_exactly(
    tmp_path, method, mask_bias):
  generator = _trained(_spec(method, mask_bias))
  path = os.path.join(tmp_path, "ticket.slt")
  size = ticket_lib.save(ticket_lib.from_generator(generator, {"step": 3}), path)
  assert size == os.path.getsize(path)
  assert not os.path.exists(path + ".tmp")
  rebuilt = ticket_lib.build_generator(ticket_lib.load(path))
  z = _latents()
  np.testing.assert_array_equal(rebuilt(z, training=False).numpy(),
                                generator(z, training=False).numpy())
  # The frozen weights come from the seed, bit for bit; the masks from the bits.
  for original, layer in zip(generator.scored_layers(), rebuilt.scored_layers()):
    assert original.name == layer.name
    assert layer.kernel.numpy().tobytes() == original.kernel.numpy().tobytes()
    for a, b in zip(original.masks(), layer.masks()):
      if a is None:
        assert b is None
      else:
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_rebuilt_generator_differs_from_a_fresh_one_so_the_ticket_matters():
  generator = _trained(_spec())
  rebuilt = ticket_lib.build_generator(ticket_lib.from_generator(generator))
  fresh = generators.build(_spec())
  z = _latents()
  assert np.abs(rebuilt(z).numpy() - fresh(z).numpy()).max() > 1e-3


def _assert_one_line_slt_error(blob, match, source="ticket"):
  with pytest.raises(SltError, match=match) as error:
    ticket_lib.from_bytes(blob, source=source)
  assert "\n" not in str(error.value) and source in str(error.value)


@pytest.mark.parametrize("keep", [-1, -32, -33, 200, 41, 20, 1])
def test_truncated_ticket_raises_slt_error(keep):
  blob = _blob()
  truncated = blob[:keep] if keep > 0 else blob[:len(blob) + keep]
  _assert_one_line_slt_error(truncated, "checksum|not a slt_tf ticket")


def test_flipped_byte_anywhere_raises_slt_error():
  blob = _blob()
  header_end = struct.unpack_from("<8sII", blob)[2] + 16
  for position in (0, 9, 13, 30, header_end - 1, header_end + 3, len(blob) - 40,
                   len(blob) - 1):
    damaged = bytearray(blob)
    damaged[position] ^= 0x01
    _assert_one_line_slt_error(bytes(damaged), "checksum|not a slt_tf ticket")


@pytest.mark.parametrize("content", [
    b"", b"SLT", b"\x89PNG\r\n\x1a\n" + bytes(100), b'{"generator": "resnet32"}' * 10,
    b"SLTTICKX" + bytes(64)])
def test_non_ticket_file_raises_slt_error(tmp_path, content):
  path = os.path.join(tmp_path, "not_a_ticket.bin")
  with open(path, "wb") as f:
    f.write(content)
  with pytest.raises(SltError, match="not a slt_tf ticket file") as error:
    ticket_lib.load(path)
  assert path in str(error.value) and "\n" not in str(error.value)


def test_missing_ticket_file_raises_slt_error(tmp_path):
  with pytest.raises(SltError, match="does not exist"):
    ticket_lib.load(os.path.join(tmp_path, "missing.slt"))


def test_other_format_version_raises_slt_error():
  blob = _blob()
  body = bytearray(blob[:-32])
  struct.pack_into("<I", body, 8, ticket_lib.FORMAT_VERSION + 1)
  resealed = bytes(body) + hashlib.sha256(bytes(body)).digest()
  _assert_one_line_slt_error(resealed, "format")


def test_ticket_file_is_at_least_30x_smaller_than_float32_weights(tmp_path):
  spec = _spec(latent_dim=32, filters=(96, 64), keep_fraction=0.1)
  generator = _trained(spec)
  ticket = ticket_lib.from_generator(generator)
  assert ticket.num_weights >= 100_000
  size = ticket_lib.save(ticket, os.path.join(tmp_path, "ticket.slt"))
  dense = ticket_lib.dense_fp32_bytes(generator)
  assert dense >= 4 * ticket.num_weights
  assert dense / size >= 30, (dense, size)


def test_dense_generator_has_no_ticket():
  with pytest.raises(SltError, match="dense"):
    ticket_lib.from_generator(generators.build(_spec("dense")))
