"""Masks baked into plain Keras layers: the servable form of a ticket (or of a dense run).

A ticket generator computes `x (W * M) + b` with M = top-k(|scores|) (edge-popup, Ramanujan
et al. 2020, Alg. 1). Its plain twin (`generators.build(spec, plain=True)`: keras Dense /
Conv2D / Conv2DTranspose with the same layer names) computes the same function once each
kernel holds `W * M`, each bias `b` (times its mask when `mask_bias`), and each batch norm the
same moving statistics. The twin has no score variables and no top-k (radix select) ops, and
its kernels stay variables, so the zeros can be inspected in the SavedModel.

Sources:
  - a workdir written by `train.train_and_evaluate`: the latest checkpoint's generator
    (ticket methods or method=dense); the spec comes from the run directory
    (`slt_tf.workdir.generator_spec`), checked against W/ticket.slt when present;
  - a ticket file alone: frozen weights regenerated from its seed, masks from its bits; for a
    ticket found inside a trained generator (`generator.init_checkpoint`), the frozen weights
    are read from the checkpoint it records (or `init_checkpoint`) and checked by sha256.
"""

from __future__ import annotations

import contextlib

from absl import logging
import numpy as np
import tensorflow as tf

from slt_tf.export import servable
from slt_tf import errors
from slt_tf import generators
from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib


def effective_weights(generator: generators.Generator) -> dict[str, tuple]:
  """{layer name: (kernel * mask, masked bias or bias or None)} as float32 arrays.

  Exactly what the forward pass multiplies with (`ScoredLayer.effective_weights`), with a
  global rule's masks computed once for all layers, as in `Generator.call`.
  """
  shared_step = getattr(generator.mask_rule, "shared_step", None)
  weights = {}
  with shared_step() if shared_step is not None else contextlib.nullcontext():
    for layer in generator.scored_layers():
      kernel, bias = layer.effective_weights()
      weights[layer.name] = (np.asarray(kernel, np.float32),
                             None if bias is None else np.asarray(bias, np.float32))
  return weights


def bake(generator: generators.Generator) -> generators.Generator:
  """The plain twin of a ticket (or dense) generator, computing the same images.

  Args:
    generator: a generator of scored layers (any masking method, or method=dense).

  Returns:
    `generators.build(generator.spec, plain=True)` whose kernels are `W * M`, biases the
    (masked) biases and batch norms the moving statistics of `generator`; plain variables only.
  """
  if generator.plain:
    raise errors.SltError("the generator is already plain (no scores to bake)")
  plain = generators.build(generator.spec, plain=True)
  weights = effective_weights(generator)
  plain_layers = {layer.name: layer for layer in plain.weight_layers()}
  if set(plain_layers) != set(weights):
    raise errors.SltError(f"the plain twin's weight layers {sorted(plain_layers)} differ from "
                          f"the generator's scored layers {sorted(weights)}")
  for name, (kernel, bias) in weights.items():
    twin = plain_layers[name]
    twin.kernel.assign(kernel)
    if (twin.bias is None) != (bias is None):
      raise errors.SltError(f"layer {name}: bias presence differs between the generator and "
                            "its plain twin")
    if bias is not None:
      twin.bias.assign(bias)
  for layer in generator.batch_norm_layers():
    twin = plain.body.get_layer(layer.name)
    twin.moving_mean.assign(layer.moving_mean)
    twin.moving_variance.assign(layer.moving_variance)
  return plain


def kept_counts(plain: generators.Generator) -> dict[str, tuple[int, int]]:
  """{layer name: (nonzero kernel entries, kernel entries)} of a baked generator."""
  return {layer.name: (int(np.count_nonzero(np.asarray(layer.kernel))),
                       int(np.prod(layer.kernel.shape)))
          for layer in plain.weight_layers()}


def _metadata(spec: generators.GeneratorSpec, step: int | None, source: str, path: str,
              plain: generators.Generator) -> dict:
  counts = kept_counts(plain)
  num_kept = sum(kept for kept, _ in counts.values())
  num_weights = sum(total for _, total in counts.values())
  return {
      "method": spec.method,
      "keep_fraction": 1.0 if spec.method == "dense" else spec.keep_fraction,
      "seed": spec.seed,
      "spec": spec.to_dict(),
      "step": step,
      "source": source,
      "source_path": workdir_lib.absolute(path),
      "num_kernel_weights": num_weights,
      "num_kernel_nonzero": num_kept,
  }


# ------------------------------------------------------------------------------ ticket file


def from_ticket_file(path: str, init_checkpoint: str | None = None
                     ) -> tuple[generators.Generator, dict]:
  """Bakes a ticket file alone (no workdir, no checkpoint).

  Returns:
    (baked plain generator, export metadata).

  Raises:
    SltError: a missing, truncated or tampered ticket file (checksum), or a bad spec.
  """
  ticket = ticket_lib.load(path)
  plain = bake_ticket(ticket, init_checkpoint)
  return plain, _metadata(ticket.spec, ticket.metadata.get("step"), "ticket", path, plain)


def bake_ticket(ticket: ticket_lib.Ticket,
                init_checkpoint: str | None = None) -> generators.Generator:
  """The plain generator of a (validated) ticket: kernels are the frozen weights (the seed's,
  or its verified source checkpoint's) times the ticket's mask bits as they are (no
  re-selection by top-k), BN statistics the ticket's."""
  frozen = ticket_lib.frozen_generator(ticket, init_checkpoint)
  plain = generators.build(ticket.spec, plain=True)
  for layer in frozen.scored_layers():
    twin = plain.body.get_layer(layer.name)
    kernel = np.asarray(layer.kernel, np.float32)
    twin.kernel.assign(kernel * ticket.masks[f"{layer.name}/kernel"].astype(np.float32))
    if layer.bias is not None:
      bias = np.asarray(layer.bias, np.float32)
      bias_mask = ticket.masks.get(f"{layer.name}/bias")
      twin.bias.assign(bias if bias_mask is None else bias * bias_mask.astype(np.float32))
  for layer in plain.batch_norm_layers():
    layer.moving_mean.assign(ticket.batch_norm[f"{layer.name}/moving_mean"])
    layer.moving_variance.assign(ticket.batch_norm[f"{layer.name}/moving_variance"])
  return plain


# ---------------------------------------------------------------------------------- workdir


def from_workdir(workdir: str) -> tuple[generators.Generator, dict]:
  """Bakes the latest checkpoint of a training workdir (ticket methods or method=dense).

  Returns:
    (baked plain generator, export metadata).

  Raises:
    SltError: no config.json, no checkpoint, a corrupt or mismatched checkpoint, a tampered
      ticket.slt or generator.json.
  """
  if not tf.io.gfile.isdir(workdir):
    raise errors.SltError(f"workdir {workdir} does not exist")
  ticket_path = workdir_lib.ticket_path(workdir)
  ticket = ticket_lib.load(ticket_path) if tf.io.gfile.exists(ticket_path) else None
  spec = workdir_lib.generator_spec(  # A workdir of older slt_tf: the ticket's channels.
      workdir, fallback_channels=None if ticket is None else lambda _: ticket.spec.channels)
  if ticket is not None and ticket.spec.to_dict() != spec.to_dict():
    raise errors.SltError(f"{ticket_path} holds generator {ticket.spec.to_dict()} but the "
                          f"workdir describes {spec.to_dict()}; the workdir is inconsistent: "
                          "export the ticket alone with --ticket=PATH")
  generator, (checkpoint_path, step) = workdir_lib.restore_generator(
      workdir, spec, advice=(f"export its ticket alone with --ticket={ticket_path}"
                             if tf.io.gfile.exists(ticket_path) else
                             "train first with bin/find_ticket"))
  plain = bake(generator)
  return plain, _metadata(spec, step, "checkpoint", checkpoint_path, plain)


# ---------------------------------------------------------------------------------- export


def export(*, export_base: str, workdir: str | None = None, ticket_path: str | None = None,
           model_name: str = "slt", version: int = 1, num_warmup_records: int = 3,
           max_batch_size: int | None = None, init_checkpoint: str | None = None) -> str:
  """Bakes a workdir's latest checkpoint or a ticket file and writes it for TF Serving.

  Args:
    export_base: E; the model goes to E/<model_name>/<version>/ (see slt_tf/export/servable.py).
    workdir: a bin/find_ticket workdir (exactly one of workdir and ticket_path).
    ticket_path: a ticket file.
    model_name: TF Serving model name.
    version: version directory number; never overwritten.
    num_warmup_records: PredictionLog records in assets.extra/tf_serving_warmup_requests.
    max_batch_size: the most seeds or z rows per request (checked in the served graph);
      None: `servable.default_max_batch_size` of the image size.
    init_checkpoint: for a ticket found inside a trained generator, its source checkpoint
      (None: the path the ticket records); the weights must have the recorded sha256.

  Returns:
    The version directory.
  """
  if (workdir is None) == (ticket_path is None):
    raise errors.SltError("give exactly one source: --workdir=W (latest checkpoint) or "
                          "--ticket=PATH (a ticket file alone)")
  if tf.io.gfile.exists(export_base) and not tf.io.gfile.isdir(export_base):
    raise errors.SltError(f"export_dir {export_base} is a file; pass a directory (created if "
                          "missing)")
  if workdir is not None:
    plain, metadata = from_workdir(workdir)
  else:
    plain, metadata = from_ticket_file(ticket_path, init_checkpoint)
  version_dir = servable.write_servable(
      plain, latent_dim=plain.spec.latent_dim, export_base=export_base, model_name=model_name,
      version=version, num_warmup_records=num_warmup_records, metadata=metadata,
      max_batch_size=max_batch_size)
  logging.info("Exported %s (%s, step %s, %d of %d kernel weights nonzero) to %s",
               metadata["source_path"], metadata["method"], metadata["step"],
               metadata["num_kernel_nonzero"], metadata["num_kernel_weights"], version_dir)
  return version_dir
