"""Tickets inside a trained generator: frozen weights read from a dense run's checkpoint.

With `generator.init_checkpoint=PATH` the frozen weights (kernels and biases) of the searched
generator are those of a trained dense generator of the same architecture (method=dense),
instead of the seed's random draw. The scores, latents and everything else still come from
the seed. Such a ticket cannot regenerate its weights from the seed: it records a `Source`,
the checkpoint path and the sha256 `fingerprint` of the weights it took, and whoever rebuilds
it (export, inspection) reads the weights from that checkpoint again and refuses them, in one
line, when their fingerprint differs.

PATH may be a run directory of bin/find_ticket (its latest checkpoint; its config.json must
say method=dense), its `checkpoints/` directory, or a checkpoint prefix `.../ckpt-N`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow as tf

from slt_tf import checkpoints
from slt_tf import errors
from slt_tf import generators
from slt_tf import workdir


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a ticket's frozen weights come from: a checkpoint and the sha256 of its weights."""
  checkpoint: str
  sha256: str

  def to_dict(self) -> dict:
    return {"source": "checkpoint", "checkpoint": self.checkpoint, "sha256": self.sha256}


def validate(path: str, method: str) -> None:
  """Checks `generator.init_checkpoint` before anything is built ("" = weights from the seed)."""
  if path and method in ("dense", "imp"):
    raise errors.SltError(f"generator.init_checkpoint is for ticket searches (frozen weights); "
                          f"method={method} trains the weights: leave it empty")
  if path:
    resolve(path)


def resolve(path: str) -> str:
  """The checkpoint prefix `path` names (a dense workdir, its checkpoints/ or ckpt-N)."""
  path = os.path.expanduser(path)
  if tf.io.gfile.isdir(path):
    advice = "pass a method=dense run (its workdir or a checkpoint ckpt-N)"
    config = workdir.read_config(path, required=False, advice=advice)
    if config is not None and config.get("method") != "dense":
      raise errors.SltError(f"generator.init_checkpoint={path} is a run of "
                            f"method={config.get('method')}; {advice}")
    directory = path
    if tf.io.gfile.isdir(workdir.checkpoint_dir(path)):
      directory = workdir.checkpoint_dir(path)
    latest = workdir.latest_in(directory)
    if latest is None:
      raise errors.SltError(f"generator.init_checkpoint={path} holds no checkpoint; pass a "
                            "dense run's workdir, its checkpoints/ directory or a ckpt-N prefix")
    return workdir.absolute(latest.path)
  if not tf.io.gfile.exists(path + ".index"):
    raise errors.SltError(f"generator.init_checkpoint={path} is neither a directory nor a "
                          "checkpoint prefix (no .index file); pass a dense run's workdir or "
                          ".../checkpoints/ckpt-N")
  return workdir.absolute(path)


def read_weights(spec: generators.GeneratorSpec, checkpoint: str) -> dict[str, np.ndarray]:
  """{"<layer>/kernel" | "<layer>/bias": float32} of the generator in `checkpoint` (restored as
  `spec`'s architecture with method=dense; another architecture is a one-line SltError)."""
  return frozen_weights(
      checkpoints.restore_generator(dataclasses.replace(spec, method="dense"), checkpoint))


def frozen_weights(generator: generators.Generator) -> dict[str, np.ndarray]:
  """{"<layer>/kernel" | "<layer>/bias": float32} of a generator's scored layers."""
  weights = {}
  for layer in generator.scored_layers():
    weights[f"{layer.name}/kernel"] = np.asarray(layer.kernel, np.float32)
    if layer.bias is not None:
      weights[f"{layer.name}/bias"] = np.asarray(layer.bias, np.float32)
  return weights


def fingerprint(weights: dict[str, np.ndarray]) -> str:
  """sha256 hex over every (key, dtype, shape, bytes), keys sorted."""
  digest = hashlib.sha256()
  for key in sorted(weights):
    value = np.ascontiguousarray(weights[key], np.float32)
    digest.update(f"{key}|{value.dtype.str}|{list(value.shape)}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def load(spec: generators.GeneratorSpec, path: str) -> tuple[dict[str, np.ndarray], Source]:
  """The frozen weights `path` gives `spec`'s generator, and their Source."""
  checkpoint = resolve(path)
  weights = read_weights(spec, checkpoint)
  return weights, Source(checkpoint, fingerprint(weights))


def verified_weights(spec: generators.GeneratorSpec, source: Source,
                     checkpoint: str | None = None) -> dict[str, np.ndarray]:
  """The weights of `source` (or of `checkpoint`, when given, instead of its recorded path);
  SltError in one line unless their fingerprint is the recorded one."""
  weights, found = load(spec, checkpoint or source.checkpoint)
  if found.sha256 != source.sha256:
    raise errors.SltError(
        f"the frozen weights in {found.checkpoint} have sha256 {found.sha256[:16]}..., the "
        f"ticket was found in weights with sha256 {source.sha256[:16]}...: that checkpoint was "
        "modified or is another one; pass the dense checkpoint the ticket was searched in")
  return weights


def assign(generator: generators.Generator, weights: dict[str, np.ndarray]) -> None:
  """Sets the generator's frozen kernels and biases to `weights` (all of them, same shapes)."""
  expected = {}
  for layer in generator.scored_layers():
    expected[f"{layer.name}/kernel"] = layer.kernel
    if layer.bias is not None:
      expected[f"{layer.name}/bias"] = layer.bias
  if set(expected) != set(weights):
    raise errors.SltError(f"the init checkpoint's weights {sorted(weights)} are not the "
                          f"generator's {sorted(expected)}")
  for key, variable in expected.items():
    variable.assign(weights[key])


def initialize(generator: generators.Generator, path: str) -> None:
  """Gives a freshly built generator the frozen weights of the checkpoint `path` names."""
  assign(generator, load(generator.spec, path)[0])


def source_of(generator: generators.Generator, path: str) -> Source | None:
  """What a ticket of `generator` records: None ("" path: weights from the seed), else the
  resolved checkpoint and the fingerprint of the frozen weights the generator holds."""
  if not path:
    return None
  return Source(resolve(path), fingerprint(frozen_weights(generator)))


def build_generator(spec: generators.GeneratorSpec, source: Source | None,
                    checkpoint: str | None = None) -> generators.Generator:
  """`spec`'s generator with its frozen weights: the seed's (source None) or the verified ones
  of `source` (read from `checkpoint` when given)."""
  generator = generators.build(spec)
  if source is not None:
    assign(generator, verified_weights(spec, source, checkpoint))
  return generator
