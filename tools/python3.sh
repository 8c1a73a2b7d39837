#!/bin/sh
# The Python interpreter of every py_binary / py_test (the py_runtime in tools/BUILD).
#
# Bazel 4 needs either a fixed absolute interpreter path or a checked-in file; this file is
# the latter, and finds the venv at run time, in this order:
#   1. $SLT_TF_PYTHON, if set (e.g. SLT_TF_PYTHON=$HOME/venvs/slt_tf/bin/python);
#   2. <repo>/.venv/bin/python, the venv that .ci/run and docs/bazel.md create;
#   3. python3 on PATH (with a warning: it probably lacks TensorFlow).
# <repo> is found by resolving the symlinks Bazel puts in runfiles back to this file.
if [ -n "${SLT_TF_PYTHON:-}" ]; then
  exec "$SLT_TF_PYTHON" "$@"
fi
repo=$(dirname "$(dirname "$(readlink -f "$0")")")
if [ -x "$repo/.venv/bin/python" ]; then
  exec "$repo/.venv/bin/python" "$@"
fi
echo "tools/python3.sh: no $repo/.venv/bin/python and SLT_TF_PYTHON is unset;" \
  "using python3 from PATH ($(command -v python3))" >&2
exec python3 "$@"
