"""What a workdir's ticket holds, and a bit-for-bit check of its frozen weights.

The frozen weights are regenerated from the ticket's seed, or, for a ticket found inside a
trained generator (`generator.init_checkpoint`), read from the checkpoint the ticket records
and refused (one-line SltError) unless their sha256 is the recorded one.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib


def inspect_workdir(workdir: str, init_checkpoint: str | None = None) -> dict:
  """Per layer: name, num_weights, num_kept, frozen_weights_verified; plus sizes.

  frozen_weights_verified regenerates every frozen tensor from the ticket's seed (or reads it
  from its source checkpoint, `init_checkpoint` overriding the recorded path, after checking
  its sha256) and compares it bit for bit with the latest checkpoint's (None when the workdir
  has no checkpoint).
  """
  path = workdir_lib.ticket_path(workdir)
  ticket = ticket_lib.load(path)
  regenerated = ticket_lib.frozen_generator(ticket, init_checkpoint)
  checkpointed, checkpoint_path = None, None
  if workdir_lib.latest_checkpoint(workdir) is not None:
    checkpointed, (checkpoint_path, _) = workdir_lib.restore_generator(workdir, ticket.spec)
  layers = []
  for layer in regenerated.scored_layers():
    kernel_mask = ticket.masks[f"{layer.name}/kernel"]
    bias_mask = ticket.masks.get(f"{layer.name}/bias")
    verified = None
    if checkpointed is not None:
      twin = checkpointed.body.get_layer(layer.name)
      pairs = [(layer.kernel, twin.kernel)] + ([(layer.bias, twin.bias)] if layer.bias is not None
                                               else [])
      verified = all(np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
                     for a, b in pairs)
    layers.append({
        "name": layer.name,
        "num_weights": int(kernel_mask.size + (bias_mask.size if bias_mask is not None else 0)),
        "num_kept": int(kernel_mask.sum() + (bias_mask.sum() if bias_mask is not None else 0)),
        "frozen_weights_verified": verified,
    })
  return {
      "ticket": path, "checkpoint": checkpoint_path, "generator": ticket.spec.to_dict(),
      "frozen_weights": (ticket.frozen_source.to_dict() if ticket.frozen_source
                         else {"source": "seed"}),
      "metadata": ticket.metadata, "layers": layers,
      "num_weights": sum(l["num_weights"] for l in layers),
      "num_kept": sum(l["num_kept"] for l in layers),
      "ticket_bytes": int(tf.io.gfile.stat(path).length),
      "dense_fp32_bytes": ticket_lib.dense_fp32_bytes(regenerated),
  }


def format_table(report: dict) -> str:
  lines = [f"{'layer':<24}{'weights':>12}{'kept':>12}{'kept %':>9}  frozen weights"]
  for layer in report["layers"]:
    verified = {True: "bit-identical", False: "MISMATCH", None: "no checkpoint"}[
        layer["frozen_weights_verified"]]
    lines.append(f"{layer['name']:<24}{layer['num_weights']:>12}{layer['num_kept']:>12}"
                 f"{100 * layer['num_kept'] / layer['num_weights']:>8.2f}%  {verified}")
  source = report["frozen_weights"]
  lines.insert(0, "frozen weights: " + (f"seed {report['generator']['seed']}"
                                        if source["source"] == "seed" else
                                        f"{source['checkpoint']} (sha256 {source['sha256'][:16]}..., "
                                        "verified)"))
  lines.append(f"{'total':<24}{report['num_weights']:>12}{report['num_kept']:>12}"
               f"{100 * report['num_kept'] / report['num_weights']:>8.2f}%")
  ratio = report["dense_fp32_bytes"] / report["ticket_bytes"]
  lines.append(f"ticket file {report['ticket_bytes']} bytes; float32 weights "
               f"{report['dense_fp32_bytes']} bytes ({ratio:.1f}x smaller)")
  return "\n".join(lines)
