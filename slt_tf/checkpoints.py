"""Reading a generator back from a bin/find_ticket training checkpoint (one implementation for
export, evaluation and inspection)."""

from __future__ import annotations

import gc
import logging as std_logging

import tensorflow as tf

from slt_tf import errors
from slt_tf import generators


def _one_line(error: BaseException) -> str:
  text = str(error).strip()
  return " ".join(text.splitlines()[0].split()) if text else type(error).__name__


def restore_generator(spec: generators.GeneratorSpec, checkpoint_path: str
                      ) -> generators.Generator:
  """The generator of `spec` with every variable read from a training checkpoint.

  Raises:
    SltError: a corrupt checkpoint, or one of another generator (a variable missing or of
      another shape). TF's warnings about the values left unrestored are dropped then: the
      error says what went wrong, on one line.
  """
  tf_logger = std_logging.getLogger("tensorflow")
  level = tf_logger.level
  tf_logger.setLevel(std_logging.ERROR)
  try:
    generator = generators.build(spec)
    try:
      status = tf.train.Checkpoint(generator=generator).restore(checkpoint_path)
      status.expect_partial()  # The model's and optimiser's variables are not needed.
      status.assert_existing_objects_matched()
      return generator
    except Exception as e:  # pylint: disable=broad-except  # TF raises many types; reported.
      reason = f"{type(e).__name__}: {_one_line(e)}"
    # The failed restore's bookkeeping warns when collected: collect it while quiet.
    del generator
    gc.collect()
  finally:
    tf_logger.setLevel(level)
  raise errors.SltError(f"cannot restore the generator from checkpoint {checkpoint_path} "
                        f"({reason}); it is corrupt or from another generator")
