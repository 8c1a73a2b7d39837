"""The ticket file: seed + initialiser spec + masks packed one bit per weight, with a checksum.

Layout (little endian, no pickle):
  b"SLTTICKT" | uint32 format version | uint32 header length | header (UTF-8 JSON)
  | payload (the arrays the header lists, at the offsets it gives) | SHA-256 of all before.
The header holds the generator spec (architecture, seed, initialisers, method, keep_fraction),
per layer the mask shapes and kept counts, and metadata. Masks are `np.packbits` bits
compressed with zlib; batch-norm moving statistics are float32. The frozen weights are not
stored: `build_generator` regenerates them from the seed bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import zlib

import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import generators

MAGIC = b"SLTTICKT"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")


@dataclasses.dataclass
class Ticket:
  """A strong lottery ticket: everything needed to rebuild the masked generator."""
  spec: generators.GeneratorSpec
  masks: dict[str, np.ndarray]          # "<layer>/kernel" or "<layer>/bias" -> bool array
  batch_norm: dict[str, np.ndarray]     # "<layer>/moving_mean" | "/moving_variance" -> float32
  metadata: dict = dataclasses.field(default_factory=dict)

  @property
  def num_weights(self) -> int:
    return sum(m.size for m in self.masks.values())

  @property
  def num_kept(self) -> int:
    return sum(int(m.sum()) for m in self.masks.values())


def current_masks(generator: generators.Generator) -> dict[str, np.ndarray]:
  """The generator's masks now, as bool arrays keyed "<layer>/kernel" (and "/bias")."""
  shared_step = getattr(generator.mask_rule, "shared_step", None)
  result = {}

  def collect():
    for layer in generator.scored_layers():
      kernel_mask, bias_mask = layer.masks()
      result[f"{layer.name}/kernel"] = kernel_mask.numpy().astype(bool)
      if bias_mask is not None:
        result[f"{layer.name}/bias"] = bias_mask.numpy().astype(bool)

  if shared_step is None:
    collect()
  else:
    with shared_step():
      collect()
  return result


def from_generator(generator: generators.Generator, metadata: dict | None = None) -> Ticket:
  if generator.mask_rule is None:
    raise errors.SltError("a dense generator has no ticket (method=dense trains the weights)")
  batch_norm = {}
  for layer in generator.batch_norm_layers():
    batch_norm[f"{layer.name}/moving_mean"] = np.asarray(layer.moving_mean, np.float32)
    batch_norm[f"{layer.name}/moving_variance"] = np.asarray(layer.moving_variance, np.float32)
  return Ticket(generator.spec, current_masks(generator), batch_norm, dict(metadata or {}))


def to_bytes(ticket: Ticket) -> bytes:
  """Serialises a ticket (see the module docstring for the layout)."""
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
  header = json.dumps({"generator": ticket.spec.to_dict(), "arrays": entries,
                       "metadata": ticket.metadata}, sort_keys=True).encode()
  body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(chunks)
  return body + hashlib.sha256(body).digest()


def from_bytes(blob: bytes, source: str = "ticket") -> Ticket:
  """Parses and verifies a ticket; any damage raises SltError naming `source`."""
  if len(blob) < _PREFIX.size + 32 or blob[:8] != MAGIC:
    raise errors.SltError(f"{source} is not a slt_tf ticket file (bad magic or too short)")
  body, digest = blob[:-32], blob[-32:]
  if hashlib.sha256(body).digest() != digest:
    raise errors.SltError(f"{source} failed its SHA-256 checksum: the file is truncated or "
                          "modified; re-export it from the run's workdir")
  _, version, header_length = _PREFIX.unpack_from(body)
  if version != FORMAT_VERSION:
    raise errors.SltError(f"{source} has ticket format {version}; this slt_tf reads "
                          f"format {FORMAT_VERSION}")
  header = json.loads(body[_PREFIX.size:_PREFIX.size + header_length])
  payload = memoryview(body)[_PREFIX.size + header_length:]
  masks, batch_norm = {}, {}
  for entry in header["arrays"]:
    data = bytes(payload[entry["offset"]:entry["offset"] + entry["length"]])
    shape = tuple(entry["shape"])
    if entry["kind"] == "mask":
      bits = np.frombuffer(zlib.decompress(data), np.uint8)
      masks[entry["key"]] = np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)
    else:
      batch_norm[entry["key"]] = np.frombuffer(data, "<f4").astype(np.float32).reshape(shape)
  return Ticket(generators.GeneratorSpec.from_dict(header["generator"]), masks, batch_norm,
                header.get("metadata", {}))


def save(ticket: Ticket, path: str) -> int:
  """Writes the ticket atomically; returns its size in bytes."""
  blob = to_bytes(ticket)
  temporary = f"{path}.tmp"
  with tf.io.gfile.GFile(temporary, "wb") as f:
    f.write(blob)
  tf.io.gfile.rename(temporary, path, overwrite=True)
  return len(blob)


def load(path: str) -> Ticket:
  if not tf.io.gfile.exists(path):
    raise errors.SltError(f"ticket file {path} does not exist")
  with tf.io.gfile.GFile(path, "rb") as f:
    return from_bytes(f.read(), source=path)


def apply(ticket: Ticket, generator: generators.Generator) -> None:
  """Makes `generator` compute the ticket: scores = mask (so top-k picks exactly the mask)."""
  for layer in generator.scored_layers():
    layer.kernel_scores.assign(ticket.masks[f"{layer.name}/kernel"].astype(np.float32))
    if layer.bias_scores is not None:
      layer.bias_scores.assign(ticket.masks[f"{layer.name}/bias"].astype(np.float32))
  for layer in generator.batch_norm_layers():
    layer.moving_mean.assign(ticket.batch_norm[f"{layer.name}/moving_mean"])
    layer.moving_variance.assign(ticket.batch_norm[f"{layer.name}/moving_variance"])


def build_generator(ticket: Ticket) -> generators.Generator:
  """The ticket's generator from the ticket alone: weights from the seed, masks from the bits."""
  generator = generators.build(ticket.spec)
  apply(ticket, generator)
  return generator


def dense_fp32_bytes(generator: generators.Generator) -> int:
  """Bytes of the generator's weights (kernels and biases) stored as float32."""
  return 4 * sum(int(np.prod(v.shape)) for layer in generator.weight_layers()
                 for v in (layer.kernel, layer.bias) if v is not None)
