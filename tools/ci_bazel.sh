#!/bin/bash
# The Bazel part of slt_tf's CI; .ci/run calls it after creating <repo>/.venv and running pytest.
#
# Usage: tools/ci_bazel.sh [extra `bazel test` arguments, e.g. --local_test_jobs=1]
#
# pytest has already run every test file, so Bazel builds every target (each BUILD file, dep
# and data label must resolve) and runs only the test targets tagged "smoke" in tests/BUILD:
# the BUILD coverage check, a test through tools/pytest.bzl with the repo's conftest and data
# files, and one that runs binaries from the runfiles tree. `bazel test //...` runs them all.
#
# Installs Debian's bazel-bootstrap (Bazel 4.2.3) with apt if `bazel` is missing. Bazel itself
# needs no network: WORKSPACE maps the repositories it would download to third_party/ stubs,
# and Python comes from <repo>/.venv through tools/python3.sh (or $SLT_TF_PYTHON if set).
# See docs/bazel.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if ! command -v bazel >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bazel-bootstrap
fi

# Fail early, with one clear line, if the interpreter Bazel will use lacks the project's packages.
if ! tools/python3.sh -c "import tensorflow, keras, pytest" 2>/dev/null; then
  echo "ci_bazel.sh: the Python of tools/python3.sh cannot import tensorflow/keras/pytest;" \
    "create $repo/.venv (pip install -r requirements.txt) or set SLT_TF_PYTHON." >&2
  exit 1
fi

# Do not leave a Bazel server running after CI.
trap 'bazel shutdown >/dev/null 2>&1 || true' EXIT

bazel test //... --keep_going --test_tag_filters=smoke "$@"

# `bazel run //bin:find_ticket` and `python -m bin.find_ticket` with the same arguments must
# write the same ticket, byte for byte.
out=$(mktemp -d)
args=(--config=configs/test.py --config.features.weights=none)
bazel run //bin:find_ticket -- "${args[@]}" --workdir="$out/bazel" >"$out/bazel.log" 2>&1 \
  || { tail -20 "$out/bazel.log"; exit 1; }
tools/python3.sh -m bin.find_ticket "${args[@]}" --workdir="$out/python" >"$out/python.log" 2>&1 \
  || { tail -20 "$out/python.log"; exit 1; }
cmp "$out/bazel/ticket.slt" "$out/python/ticket.slt"
echo "ci_bazel.sh: bazel run and python -m wrote the same ticket ($(wc -c <"$out/bazel/ticket.slt") bytes)"
rm -rf "$out"
