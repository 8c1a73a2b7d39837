"""The ticket file: seed + initialiser spec + masks coded near their entropy, with a checksum.

Layout (little endian, no pickle):
  b"SLTTICKT" | uint32 format version | uint32 header length | header (UTF-8 JSON)
  | payload (the arrays the header lists, at the offsets it gives) | SHA-256 of all before.
The header holds the generator spec (architecture, seed, initialisers, method, keep_fraction),
per layer the mask shapes and kept counts, where the frozen weights come from, and metadata.
Format 2 (written): masks are Rice-coded gaps (`slt_tf.mask_coding`; each entry gives its
`rice_parameter` and `inverted`), within about 1.5% of n * H(keep) bits; `frozen_weights` is
{"source": "seed"} or the trained checkpoint and sha256 (`slt_tf.init_checkpoint`).
Format 1 (still read): masks are `np.packbits` bits compressed with zlib; weights from the seed.
Batch-norm moving statistics are float32. The frozen weights are not stored: `build_generator`
regenerates them from the seed bit for bit (or reads and verifies the recorded checkpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import struct

import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import generators
from slt_tf import init_checkpoint
from slt_tf import initializers
from slt_tf import mask_coding
from slt_tf import workdir

MAGIC = b"SLTTICKT"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<8sII")
# What a ticket may describe (checked before anything is allocated). The largest paper
# generator (resnet64) has about 12M weights and a header of a few KB.
MAX_TICKET_BYTES = 1 << 28
MAX_HEADER_BYTES = 1 << 20
MAX_WEIGHTS = 1 << 28
MAX_IMAGE_SIZE = 1024
MAX_LATENT_DIM = 65536
MAX_FILTERS = 16384
MAX_SEED = 2**31 - 1
MAX_PATH_CHARS = 4096


@dataclasses.dataclass
class Ticket:
  """A strong lottery ticket: everything needed to rebuild the masked generator."""
  spec: generators.GeneratorSpec
  masks: dict[str, np.ndarray]          # "<layer>/kernel" or "<layer>/bias" -> bool array
  batch_norm: dict[str, np.ndarray]     # "<layer>/moving_mean" | "/moving_variance" -> float32
  metadata: dict = dataclasses.field(default_factory=dict)
  # None: frozen weights regenerated from spec.seed; else read (and verified) from a checkpoint.
  frozen_source: init_checkpoint.Source | None = None

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


def from_generator(generator: generators.Generator, metadata: dict | None = None,
                   frozen_source: init_checkpoint.Source | None = None) -> Ticket:
  if generator.mask_rule is None:
    raise errors.SltError("a dense generator has no ticket (method=dense trains the weights)")
  batch_norm = {}
  for layer in generator.batch_norm_layers():
    batch_norm[f"{layer.name}/moving_mean"] = np.asarray(layer.moving_mean, np.float32)
    batch_norm[f"{layer.name}/moving_variance"] = np.asarray(layer.moving_variance, np.float32)
  return Ticket(generator.spec, current_masks(generator), batch_norm, dict(metadata or {}),
                frozen_source)


def to_bytes(ticket: Ticket) -> bytes:
  """Serialises a ticket (see the module docstring for the layout)."""
  entries, chunks, offset = [], [], 0
  for key, mask in ticket.masks.items():
    coded = mask_coding.encode(mask)
    data = coded.data
    entries.append({"key": key, "kind": "mask", "shape": list(mask.shape),
                    "num_kept": coded.num_kept, "offset": offset, "length": len(data),
                    "rice_parameter": coded.rice_parameter, "inverted": coded.inverted})
    chunks.append(data)
    offset += len(data)
  for key, values in ticket.batch_norm.items():
    data = np.asarray(values, "<f4").tobytes()
    entries.append({"key": key, "kind": "float32", "shape": list(values.shape),
                    "offset": offset, "length": len(data)})
    chunks.append(data)
    offset += len(data)
  frozen = ticket.frozen_source.to_dict() if ticket.frozen_source else {"source": "seed"}
  header = json.dumps({"generator": ticket.spec.to_dict(), "arrays": entries,
                       "metadata": ticket.metadata, "frozen_weights": frozen},
                      sort_keys=True).encode()
  body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(chunks)
  return body + hashlib.sha256(body).digest()


def from_bytes(blob: bytes, source: str = "ticket") -> Ticket:
  """Parses and verifies a ticket; any damage raises SltError naming `source`.

  Everything is validated before it is allocated: the header's schema and types, the spec's
  ranges (so its size is bounded), every array's key, kind and shape against the generator the
  spec names, byte lengths before and after (bounded) decompression, `num_kept` against each
  mask's popcount, and the batch-norm statistics (finite, variances >= 0).
  """
  if len(blob) < _PREFIX.size + 32 or blob[:8] != MAGIC:
    raise errors.SltError(f"{source} is not a slt_tf ticket file (bad magic or too short)")
  body, digest = blob[:-32], blob[-32:]
  if hashlib.sha256(body).digest() != digest:
    raise errors.SltError(f"{source} failed its SHA-256 checksum: the file is truncated or "
                          "modified; re-export it from the run's workdir")
  _, version, header_length = _PREFIX.unpack_from(body)
  if version not in READABLE_VERSIONS:
    raise errors.SltError(f"{source} has ticket format {version}; this slt_tf reads formats "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
  if header_length > min(MAX_HEADER_BYTES, len(body) - _PREFIX.size):
    raise _bad(source, f"header length {header_length} exceeds the file or the "
               f"{MAX_HEADER_BYTES}-byte limit")
  header = _parse_header(body[_PREFIX.size:_PREFIX.size + header_length], source, version)
  spec = _spec_from_header(header["generator"], source)
  payload = memoryview(body)[_PREFIX.size + header_length:]
  expected = expected_arrays(spec)
  masks, batch_norm, end = {}, {}, 0
  for index, entry in enumerate(header["arrays"]):
    key, kind, shape = _check_entry(entry, index, expected, masks, batch_norm, source, version)
    offset, length = entry["offset"], entry["length"]
    if offset != end or offset + length > len(payload):
      raise _bad(source, f"array {key!r} at bytes [{offset}, {offset + length}) is not the next "
                 f"contiguous range of the {len(payload)}-byte payload")
    end = offset + length
    data = payload[offset:end]
    count = math.prod(shape)
    if kind == "mask":
      mask = _decode_mask(data, count, entry, version, source).reshape(shape)
      if int(mask.sum()) != entry["num_kept"]:
        raise _bad(source, f"mask {key!r} keeps {int(mask.sum())} weights but its header says "
                   f"num_kept={entry['num_kept']}")
      masks[key] = mask
    else:
      if length != 4 * count:
        raise _bad(source, f"array {key!r} of shape {list(shape)} needs {4 * count} bytes, "
                   f"has {length}")
      values = np.frombuffer(data, "<f4").astype(np.float32).reshape(shape)
      if not np.all(np.isfinite(values)) or (key.endswith("/moving_variance")
                                             and np.any(values < 0)):
        raise _bad(source, f"batch-norm statistics {key!r} must be finite (variances >= 0)")
      batch_norm[key] = values
  missing = sorted(set(expected) - set(masks) - set(batch_norm))
  if missing:
    raise _bad(source, f"arrays missing for generator {spec.name}: {', '.join(missing)}")
  if end != len(payload):
    raise _bad(source, f"{len(payload) - end} payload bytes follow the last array")
  return Ticket(spec, masks, batch_norm, header["metadata"],
                _frozen_source(header.get("frozen_weights", {"source": "seed"}), source))


def _bad(source: str, what: str) -> errors.SltError:
  return errors.SltError(f"{source} is not a valid ticket: {what}; re-export it from the run's "
                         "workdir (bin/find_ticket writes W/ticket.slt)")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(data: bytes, source: str, version: int) -> dict:
  """The header JSON: an object with `generator` (object), `arrays` (list), `metadata` (and,
  from format 2, `frozen_weights`)."""
  try:
    header = json.loads(data.decode("utf-8"))
  except (ValueError, RecursionError) as e:
    raise _bad(source, f"its header is not JSON ({type(e).__name__})") from None
  wanted = {"generator", "arrays", "metadata"} | ({"frozen_weights"} if version >= 2 else set())
  if not isinstance(header, dict) or set(header) != wanted:
    keys = sorted(header) if isinstance(header, dict) else type(header).__name__
    raise _bad(source, f"its header must be an object with keys {', '.join(sorted(wanted))} "
               f"(format {version}); got {keys}")
  if not isinstance(header["generator"], dict) or not isinstance(header["arrays"], list):
    raise _bad(source, "header 'generator' must be an object and 'arrays' a list")
  if not isinstance(header["metadata"], dict):
    raise _bad(source, "header 'metadata' must be an object")
  step = header["metadata"].get("step")
  if step is not None and (not _is_int(step) or step < 0):
    raise _bad(source, f"metadata step must be a non-negative integer, got {step!r}")
  return header


# Field: (type check, what is allowed). Ranges bound the generator's size before it is built.
_SPEC_FIELDS = {
    "name": (lambda v: v in generators.GENERATORS, f"one of {', '.join(generators.GENERATORS)}"),
    "image_size": (lambda v: _is_int(v) and 4 <= v <= MAX_IMAGE_SIZE and v & (v - 1) == 0,
                   f"a power of two in [4, {MAX_IMAGE_SIZE}]"),
    "channels": (lambda v: _is_int(v) and 1 <= v <= 4, "an integer in [1, 4]"),
    "latent_dim": (lambda v: _is_int(v) and 1 <= v <= MAX_LATENT_DIM,
                   f"an integer in [1, {MAX_LATENT_DIM}]"),
    "filters": (lambda v: isinstance(v, list) and 1 <= len(v) <= 16 and all(
        _is_int(f) and 1 <= f <= MAX_FILTERS for f in v),
                f"a list of 1 to 16 integers in [1, {MAX_FILTERS}]"),
    "method": (lambda v: v in ("edge_popup", "global_edge_popup", "gem_miner"),
               "edge_popup, global_edge_popup or gem_miner"),
    "keep_fraction": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                      and 0 < v <= 1, "a number in (0, 1]"),
    "weight_init": (lambda v: v in initializers.WEIGHT_INITS, ", ".join(initializers.WEIGHT_INITS)),
    "score_init": (lambda v: v in initializers.SCORE_INITS, ", ".join(initializers.SCORE_INITS)),
    "scale_fan": (lambda v: isinstance(v, bool), "true or false"),
    "mask_bias": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    "native_size": (lambda v: _is_int(v) and 0 <= v <= MAX_IMAGE_SIZE,
                    f"an integer in [0, {MAX_IMAGE_SIZE}]"),
}
# Fields added after a format was released, with the value that tickets without them meant.
_SPEC_DEFAULTS = {"native_size": generators.GeneratorSpec.native_size}


def _spec_from_header(values: dict, source: str) -> generators.GeneratorSpec:
  values = {**_SPEC_DEFAULTS, **values}
  if set(values) != set(_SPEC_FIELDS):
    raise _bad(source, f"its generator spec must have exactly the fields "
               f"{', '.join(sorted(_SPEC_FIELDS))}; got {', '.join(sorted(map(str, values)))}")
  for name, (check, allowed) in _SPEC_FIELDS.items():
    if not check(values[name]):
      raise _bad(source, f"generator {name} must be {allowed}, got {str(values[name])[:80]}")
  try:
    spec = generators.GeneratorSpec.from_dict(values)
    spec.resolved_filters()
    generators.validate_native_size(spec)
  except errors.SltError as e:
    raise _bad(source, str(e)) from None
  total = sum(math.prod(shape) for key, shape in expected_arrays(spec).items()
              if "/moving_" not in key)
  if total > MAX_WEIGHTS:
    raise _bad(source, f"its generator has {total} weights; at most {MAX_WEIGHTS} are allowed")
  return spec


def _check_entry(entry, index: int, expected: dict, masks: dict, batch_norm: dict,
                 source: str, version: int) -> tuple[str, str, tuple[int, ...]]:
  """Checks one header array entry's schema, key, kind and shape; returns them."""
  fields = {"key", "kind", "shape", "offset", "length"}
  mask_fields = {"num_kept"} | ({"rice_parameter", "inverted"} if version >= 2 else set())
  if not isinstance(entry, dict) or not (set(entry) == fields or set(entry) == fields | mask_fields):
    raise _bad(source, f"array entry {index} must be an object with fields "
               f"{', '.join(sorted(fields))} (and {', '.join(sorted(mask_fields))} for masks)")
  key, kind, shape = entry["key"], entry["kind"], entry["shape"]
  if not isinstance(key, str) or key not in expected:
    raise _bad(source, f"array {str(key)[:80]!r} is not one the generator has; expected "
               f"{', '.join(sorted(expected))}")
  if key in masks or key in batch_norm:
    raise _bad(source, f"array {key!r} appears twice")
  wanted_kind = "float32" if "/moving_" in key else "mask"
  if kind != wanted_kind or (kind == "mask") != ("num_kept" in entry):
    raise _bad(source, f"array {key!r} must be of kind {wanted_kind}"
               + (" with num_kept" if wanted_kind == "mask" else " without num_kept"))
  if not isinstance(shape, list) or tuple(shape) != expected[key]:
    raise _bad(source, f"array {key!r} has shape {str(shape)[:80]}; generator {key.split('/')[0]} "
               f"needs {list(expected[key])}")
  integers = ("offset", "length") + (("num_kept",) if kind == "mask" else ())
  for name in integers + (("rice_parameter",) if "rice_parameter" in entry else ()):
    if not _is_int(entry[name]) or entry[name] < 0:
      raise _bad(source, f"array {key!r}: {name} must be a non-negative integer")
  if "inverted" in entry and not isinstance(entry["inverted"], bool):
    raise _bad(source, f"array {key!r}: inverted must be true or false")
  return key, kind, expected[key]


def _decode_mask(data, count: int, entry: dict, version: int, source: str) -> np.ndarray:
  """A mask's payload -> bool [count] (format 1: zlib bits; 2: Rice-coded gaps), bounded by
  `count` whatever the bytes say."""
  try:
    if version == 1:
      return mask_coding.inflate_zlib_bits(data, count)
    return mask_coding.decode(data, count=count, num_kept=entry["num_kept"],
                              rice_parameter=entry["rice_parameter"], inverted=entry["inverted"])
  except errors.SltError as e:
    raise _bad(source, f"mask {entry['key']!r}: {e}") from None


def _frozen_source(value, source: str) -> init_checkpoint.Source | None:
  """The header's `frozen_weights`: {"source": "seed"} (None) or a checkpoint and sha256."""
  if value == {"source": "seed"}:
    return None
  if (isinstance(value, dict) and set(value) == {"source", "checkpoint", "sha256"}
      and value["source"] == "checkpoint" and isinstance(value["checkpoint"], str)
      and 0 < len(value["checkpoint"]) <= MAX_PATH_CHARS and isinstance(value["sha256"], str)
      and re.fullmatch(r"[0-9a-f]{64}", value["sha256"])):
    return init_checkpoint.Source(value["checkpoint"], value["sha256"])
  raise _bad(source, 'frozen_weights must be {"source": "seed"} or {"source": "checkpoint", '
             f'"checkpoint": a path, "sha256": 64 hex digits}}; got {str(value)[:120]}')


def expected_arrays(spec: generators.GeneratorSpec) -> dict[str, tuple[int, ...]]:
  """{array key: shape} a ticket of `spec` holds, computed without building the generator.

  Masks "<layer>/kernel" (and "<layer>/bias" with mask_bias), batch-norm
  "<layer>/moving_mean" / "/moving_variance" (slt_tf/generators.py's architectures;
  ticket_test checks the two agree for every generator).
  """
  filters, latent, channels = spec.resolved_filters(), spec.latent_dim, spec.channels
  layers, norms = [], []  # (name, kernel shape, has bias); (name, channels)
  if spec.name == "dcgan":
    layers.append(("dense_in", (latent, 16 * filters[0]), False))
    norms.append(("in_bn", filters[0]))
    for i, (f_in, f_out) in enumerate(zip(filters[:-1], filters[1:])):
      layers.append((f"up{i}", (4, 4, f_out, f_in), False))
      norms.append((f"up{i}_bn" if i < len(filters) - 2 else "out_bn", f_out))
  else:
    layers.append(("dense_in", (latent, 16 * filters[0]), True))
    for i, (f_in, f_out) in enumerate(zip(filters[:-1], filters[1:])):
      layers += [(f"block{i}_conv1", (3, 3, f_in, f_out), False),
                 (f"block{i}_conv2", (3, 3, f_out, f_out), True),
                 (f"block{i}_skip_conv", (1, 1, f_in, f_out), True)]
      norms += [(f"block{i}_bn1", f_in), (f"block{i}_bn2", f_out)]
    norms.append(("out_bn", filters[-1]))
  layers.append(("conv_out", (3, 3, filters[-1], channels), True))
  arrays = {}
  for name, shape, has_bias in layers:
    arrays[f"{name}/kernel"] = shape
    if has_bias and spec.mask_bias:
      arrays[f"{name}/bias"] = (shape[-1],)  # Only Dense / Conv2D layers have biases.
  for name, size in norms:
    arrays[f"{name}/moving_mean"] = arrays[f"{name}/moving_variance"] = (size,)
  return arrays


def save(ticket: Ticket, path: str) -> int:
  """Writes the ticket atomically; returns its size in bytes."""
  blob = to_bytes(ticket)
  workdir.atomic_write(path, blob)
  return len(blob)


def load(path: str) -> Ticket:
  """Reads and validates a ticket file (at most MAX_TICKET_BYTES)."""
  if not tf.io.gfile.exists(path):
    raise errors.SltError(f"ticket file {path} does not exist")
  if tf.io.gfile.isdir(path):
    raise errors.SltError(f"ticket {path} is a directory; pass the ticket file itself, "
                          "e.g. W/ticket.slt")
  try:
    size = tf.io.gfile.stat(path).length
    if size > MAX_TICKET_BYTES:
      raise errors.SltError(f"ticket file {path} has {size} bytes; a ticket has at most "
                            f"{MAX_TICKET_BYTES}")
    with tf.io.gfile.GFile(path, "rb") as f:
      blob = f.read(MAX_TICKET_BYTES + 1)
  except (OSError, tf.errors.OpError) as e:
    raise errors.SltError(f"cannot read ticket file {path}: "
                          f"{getattr(e, 'message', None) or e}") from None
  return from_bytes(blob, source=path)


def apply(ticket: Ticket, generator: generators.Generator) -> None:
  """Makes `generator` compute the ticket: scores = mask (so top-k picks exactly the mask)."""
  for layer in generator.scored_layers():
    layer.kernel_scores.assign(ticket.masks[f"{layer.name}/kernel"].astype(np.float32))
    if layer.bias_scores is not None:
      layer.bias_scores.assign(ticket.masks[f"{layer.name}/bias"].astype(np.float32))
  for layer in generator.batch_norm_layers():
    layer.moving_mean.assign(ticket.batch_norm[f"{layer.name}/moving_mean"])
    layer.moving_variance.assign(ticket.batch_norm[f"{layer.name}/moving_variance"])
  computed = current_masks(generator)
  for key, mask in ticket.masks.items():
    if not np.array_equal(computed[key], mask):
      raise errors.SltError(
          f"the ticket's mask {key} keeps {int(mask.sum())} of {mask.size} weights, which "
          f"{ticket.spec.method} with keep_fraction {ticket.spec.keep_fraction} cannot select; "
          "only its export (bin/export_saved_model --ticket) uses the bits as they are")


def frozen_generator(ticket: Ticket, checkpoint: str | None = None) -> generators.Generator:
  """The ticket's generator before its masks are applied: frozen weights from the seed, or
  read from the checkpoint the ticket records (`checkpoint` overrides its path) and verified
  against the recorded sha256 (a mismatch is a one-line SltError)."""
  return init_checkpoint.build_generator(ticket.spec, ticket.frozen_source, checkpoint)


def build_generator(ticket: Ticket, checkpoint: str | None = None) -> generators.Generator:
  """The ticket's generator: `frozen_generator`'s weights, masks from the bits."""
  generator = frozen_generator(ticket, checkpoint)
  apply(ticket, generator)
  return generator


def dense_fp32_bytes(generator: generators.Generator) -> int:
  """Bytes of the generator's weights (kernels and biases) stored as float32."""
  return 4 * sum(int(np.prod(v.shape)) for layer in generator.weight_layers()
                 for v in (layer.kernel, layer.bias) if v is not None)
