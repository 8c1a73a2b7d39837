"""Runs one pytest file as a Bazel test: the `main` of every target made by tools/pytest.bzl.

Usage: pytest_runner.py TEST_FILE [PYTEST_ARGS...]

Bazel starts it in the runfiles copy of the repo (where pytest.ini and conftest.py are), so
pytest sees the same rootdir, conftest and `import slt_tf` as `python -m pytest tests/x_test.py`
does in a checkout. Bazel's test environment is mapped onto pytest options: XML_OUTPUT_FILE
(per-test-case report), TEST_TMPDIR (pytest's tmp_path root) and TESTBRIDGE_TEST_ONLY
(`bazel test --test_filter=EXPR` becomes `-k EXPR`). The exit code is pytest's, except that
"no tests collected" is a failure too: a test file whose tests all vanished must not pass.
"""

import os
import sys

_NO_TESTS_COLLECTED = 5  # pytest.ExitCode.NO_TESTS_COLLECTED


def pytest_args(argv: list[str], environ: dict[str, str]) -> list[str]:
  """Returns pytest's arguments for this runner's `argv[1:]` in Bazel's test `environ`."""
  args = ["-n", "0"] + list(argv)  # One process per target: Bazel runs the targets in parallel.
  xml_output_file = environ.get("XML_OUTPUT_FILE")
  if xml_output_file:
    args.append(f"--junitxml={xml_output_file}")
  test_tmpdir = environ.get("TEST_TMPDIR")
  if test_tmpdir:
    args.append(f"--basetemp={os.path.join(test_tmpdir, 'pytest')}")
  test_filter = environ.get("TESTBRIDGE_TEST_ONLY")
  if test_filter:
    args += ["-k", test_filter]
  return args


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print("usage: pytest_runner.py TEST_FILE [PYTEST_ARGS...]", file=sys.stderr)
    return 2
  # Python put this file's directory (tools/) first on sys.path; tests must not see it there.
  here = os.path.dirname(os.path.abspath(__file__))
  if sys.path and os.path.abspath(sys.path[0]) == here:
    del sys.path[0]
  import pytest  # pylint: disable=g-import-not-at-top
  exit_code = pytest.main(pytest_args(argv[1:], dict(os.environ)))
  if exit_code == _NO_TESTS_COLLECTED:
    print(f"pytest_runner: no tests ran in {argv[1]}; failing.", file=sys.stderr)
    return 1
  return int(exit_code)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
