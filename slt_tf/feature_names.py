"""The names of feature and evaluation networks: which exist, how several are joined ("a+b")
and copied ("digits_cnn#1"), and the one check of a name (`slt_tf.features` builds them)."""

from slt_tf import classifiers
from slt_tf import errors

FEATURE_NETWORKS = (
    "inception_v3", "vgg19", "digits_cnn", "digits_cnn_deep", "fashion_cnn", "fashion_inception")
EVAL_NETWORKS = ("inception_v3", "fid_inception", "digits_eval_cnn", "fashion_eval_cnn")
NETWORK_SEPARATOR = "+"  # "digits_cnn_deep+digits_cnn": both networks' features, concatenated
COPY_SEPARATOR = "#"  # "digits_cnn#1": digits_cnn built and trained from seed + COPY_SEED_STRIDE
COPY_SEED_STRIDE = 1000
# The feature networks whose weights come from the run's seed (the others: a recipe's own seed
# or ImageNet), the only ones of which `name#K` copies differ.
SEEDED_NETWORKS = tuple(name for name in FEATURE_NETWORKS
                        if name in classifiers.RECIPES and classifiers.RECIPES[name].seed is None)


def network_names(name: str) -> tuple[str, ...]:
  """The networks a feature-network name stands for: ("a", "b") for "a+b"."""
  return tuple(name.split(NETWORK_SEPARATOR))


def split_copy(part: str) -> tuple[str, int | None]:
  """("digits_cnn", 1) for "digits_cnn#1" and (part, 0) without a copy number; the copy is None
  when the text after "#" is not a positive integer (without leading zeros)."""
  network, separator, copy = part.partition(COPY_SEPARATOR)
  if not separator:
    return network, 0
  return network, (int(copy) if copy.isdigit() and not copy.startswith("0") else None)


def copy_seed(seed: int, part: str) -> int:
  """The seed network `part` (a valid "name" or "name#K") is built and trained with."""
  return seed + COPY_SEED_STRIDE * split_copy(part)[1]


def validate_name(name: str, *, kind: str = "feature") -> None:
  """SltError naming FEATURE_NETWORKS (kind "feature", where several distinct ones may be joined
  by "+", and SEEDED_NETWORKS copied as name#K) or EVAL_NETWORKS (kind "eval") unless `name` is
  allowed."""
  allowed = FEATURE_NETWORKS if kind == "feature" else EVAL_NETWORKS
  names = network_names(name) if kind == "feature" else (name,)
  joined = (f", or several distinct ones joined by {NETWORK_SEPARATOR!r} "
            f"({', '.join(SEEDED_NETWORKS)} also as NAME{COPY_SEPARATOR}K, K = 1, 2, ...: "
            f"a copy trained from seed + {COPY_SEED_STRIDE} K)" if kind == "feature" else "")
  parts = [split_copy(part) if kind == "feature" else (part, 0) for part in names]
  if (any(network not in allowed or copy is None or (copy and network not in SEEDED_NETWORKS)
          for network, copy in parts) or len(set(names)) != len(names)):
    raise errors.SltError(
        f"Unknown {kind} network {name!r}; choose one of {', '.join(allowed)}{joined}.")
