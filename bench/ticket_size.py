r"""Ticket bytes against the entropy bound n * H(keep) / 8, per keep fraction and generator.

  python -m bench.ticket_size                      # resnet32 and the digits default, step 0
  python -m bench.ticket_size --ticket=runs/digits/ticket.slt   # also a trained ticket

For each generator (resnet32 at 32x32x3; the digits default: dcgan 16x16x1, latent 128) and
keep fraction (0.05, 0.1, 0.3, 0.5) it builds the generator and takes its ticket at step 0
(the top-k of the seed's random scores in every layer, exactly k kept per layer), then prints:
the mask payload of the format-2 ticket (Rice-coded gaps, slt_tf/mask_coding.py), the same
masks as format 1 wrote them (zlib over packed bits), the bound sum over masks of
n * H(k / n) / 8, the whole ticket file, the float32 weights and their ratio, and the time to
code and decode all masks (best of --repetitions).
"""

import time
import zlib

from absl import app
from absl import flags

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order

from slt_tf import generators
from slt_tf import mask_coding
from slt_tf import ticket as ticket_lib

_KEEP = flags.DEFINE_list("keep", ["0.05", "0.1", "0.3", "0.5"], "Keep fractions.")
_TICKET = flags.DEFINE_string("ticket", None, "Also measure this ticket file.")
_REPETITIONS = flags.DEFINE_integer("repetitions", 3, "Timing rounds (best is printed).",
                                    lower_bound=1)

_SPECS = {
    "resnet32": dict(name="resnet32", image_size=32, channels=3),
    "digits": dict(name="dcgan", image_size=16, channels=1),
}


def _timed(function, repetitions: int) -> float:
  best = float("inf")
  for _ in range(repetitions):
    start = time.perf_counter()
    function()
    best = min(best, time.perf_counter() - start)
  return best


def measure(ticket: ticket_lib.Ticket, dense_fp32_bytes: int, repetitions: int) -> dict:
  """Sizes and coding times of one ticket's masks (see the module docstring)."""
  masks = list(ticket.masks.values())
  coded = [mask_coding.encode(m) for m in masks]
  for mask, code in zip(masks, coded):  # Bit-exact round trip, or the numbers mean nothing.
    decoded = mask_coding.decode(code.data, count=mask.size, num_kept=code.num_kept,
                                 rice_parameter=code.rice_parameter, inverted=code.inverted)
    assert np.array_equal(decoded, mask.reshape(-1))

  def decode_all():
    for mask, code in zip(masks, coded):
      mask_coding.decode(code.data, count=mask.size, num_kept=code.num_kept,
                         rice_parameter=code.rice_parameter, inverted=code.inverted)

  return {
      "num_weights": sum(m.size for m in masks),
      "num_kept": sum(int(m.sum()) for m in masks),
      "payload": sum(len(c.data) for c in coded),
      "zlib_payload": sum(len(zlib.compress(np.packbits(m.reshape(-1)).tobytes(), 9))
                          for m in masks),
      "bound": sum(mask_coding.entropy_bound_bytes(m.size, int(m.sum())) for m in masks),
      "ticket": len(ticket_lib.to_bytes(ticket)),
      "dense_fp32": dense_fp32_bytes,
      "encode_s": _timed(lambda: [mask_coding.encode(m) for m in masks], repetitions),
      "decode_s": _timed(decode_all, repetitions),
  }


def _row(name: str, keep: str, r: dict) -> str:
  return (f"{name:<10}{keep:>6}{r['num_weights']:>11,}{r['payload']:>11,}{r['bound']:>13,.0f}"
          f"{r['payload'] / r['bound']:>9.4f}{r['zlib_payload']:>11,}"
          f"{r['zlib_payload'] / r['bound']:>7.3f}{r['ticket']:>11,}"
          f"{r['dense_fp32'] / r['ticket']:>8.1f}x{1e3 * r['encode_s']:>8.1f}"
          f"{1e3 * r['decode_s']:>8.1f}")


def main(argv):
  del argv
  print(f"{'model':<10}{'keep':>6}{'weights':>11}{'mask B':>11}{'n*H(k)/8 B':>13}"
        f"{'/bound':>9}{'zlib B':>11}{'/bound':>7}{'ticket B':>11}{'fp32/tk':>9}"
        f"{'enc ms':>8}{'dec ms':>8}")
  for name, values in _SPECS.items():
    for keep in _KEEP.value:
      spec = generators.GeneratorSpec(**values, keep_fraction=float(keep), seed=0)
      generator = generators.build(spec)
      ticket = ticket_lib.from_generator(generator, {"step": 0})
      result = measure(ticket, ticket_lib.dense_fp32_bytes(generator), _REPETITIONS.value)
      print(_row(name, keep, result), flush=True)
  if _TICKET.value:
    ticket = ticket_lib.load(_TICKET.value)
    generator = generators.build(ticket.spec)
    result = measure(ticket, ticket_lib.dense_fp32_bytes(generator), _REPETITIONS.value)
    print(_row("file", str(ticket.spec.keep_fraction), result) + f"  {_TICKET.value}")


if __name__ == "__main__":
  app.run(main)
