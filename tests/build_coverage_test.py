"""Tests of tools/check_build_coverage.py, and the check itself run on this repository."""

import os
import textwrap

from tools import check_build_coverage


def write_tree(root, files):
  for path, text in files.items():
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as f:
      f.write(textwrap.dedent(text))


def covered_tree(root):
  """A tiny repo whose BUILD files cover everything."""
  write_tree(root, {
      "BUILD": """
          filegroup(name = "all_files", srcs = ["BUILD"])
          filegroup(name = "build_coverage_inputs", srcs = ["//slt_tf:all_files"])
          """,
      "slt_tf/BUILD": """
          py_library(name = "slt_tf", srcs = ["__init__.py"])
          py_library(name = "errors", srcs = ["errors.py"], deps = [":slt_tf"])
          py_library(name = "masking", srcs = ["masking.py"], deps = [":errors", "//slt_tf"])
          filegroup(name = "all_files", srcs = ["BUILD"] + glob(["**/*.py"]))
          """,
      "slt_tf/__init__.py": "",
      "slt_tf/errors.py": "class SltError(ValueError):\n  pass\n",
      "slt_tf/masking.py": "import numpy\nfrom slt_tf import errors\n",
  })


def test_this_repository_has_a_build_target_for_every_python_file():
  problems = check_build_coverage.check(check_build_coverage.default_root())
  assert not problems, "\n".join(problems)


def test_fully_covered_tree_has_no_problems(tmp_path):
  covered_tree(str(tmp_path))
  assert check_build_coverage.check(str(tmp_path)) == []


def test_module_without_target_is_reported_with_a_stanza_that_lists_its_imports(tmp_path):
  covered_tree(str(tmp_path))
  write_tree(str(tmp_path), {"slt_tf/layers.py": "from slt_tf import masking\nimport keras\n"})
  problems = check_build_coverage.check(str(tmp_path))
  assert len(problems) == 1
  assert problems[0].startswith("slt_tf/layers.py: no BUILD target covers it")
  assert 'py_library(\n    name = "layers",\n    srcs = ["layers.py"]' in problems[0]
  assert '":masking",\n        ":slt_tf",' in problems[0]
  assert "keras" not in problems[0]


def test_test_file_without_target_is_reported_as_a_pytest_test(tmp_path):
  covered_tree(str(tmp_path))
  write_tree(str(tmp_path), {"tests/BUILD": "", "tests/masking_test.py": "import slt_tf.masking\n"})
  problems = check_build_coverage.check(str(tmp_path))
  stanza = next(p for p in problems if p.startswith("tests/masking_test.py"))
  assert 'pytest_test(\n    name = "masking_test",\n    size = "small"' in stanza
  assert '"//slt_tf:masking"' in stanza


def test_first_party_import_missing_from_deps_is_reported(tmp_path):
  covered_tree(str(tmp_path))
  write_tree(str(tmp_path), {"slt_tf/masking.py": "from . import errors\nimport slt_tf.sampling\n",
                             "slt_tf/sampling.py": ""})
  with open(tmp_path / "slt_tf" / "BUILD", "a", encoding="utf-8") as f:
    f.write('py_library(name = "sampling", srcs = ["sampling.py"], deps = ["//slt_tf"])\n')
  assert check_build_coverage.check(str(tmp_path)) == [
      '//slt_tf:masking: add "//slt_tf:sampling" to deps or data (slt_tf/masking.py imports '
      'slt_tf/sampling.py).']


def test_module_must_depend_on_its_package_init(tmp_path):
  covered_tree(str(tmp_path))
  build = (tmp_path / "slt_tf" / "BUILD").read_text().replace(
      'deps = [":slt_tf"]', "deps = []")
  (tmp_path / "slt_tf" / "BUILD").write_text(build)
  assert check_build_coverage.check(str(tmp_path)) == [
      '//slt_tf:errors: add "//slt_tf:slt_tf" to deps or data (slt_tf/errors.py imports '
      'slt_tf/__init__.py).']


def test_parent_glob_does_not_cover_files_of_a_subpackage(tmp_path):
  covered_tree(str(tmp_path))
  write_tree(str(tmp_path), {
      "slt_tf/BUILD": (tmp_path / "slt_tf" / "BUILD").read_text().replace(
          'py_library(name = "slt_tf", srcs = ["__init__.py"])',
          'py_library(name = "slt_tf", srcs = glob(["**/*.py"], exclude = ["*s*.py"]) + '
          '["errors.py"])'),
      "slt_tf/datasets/BUILD": "",
      "slt_tf/datasets/digits.py": "",
  })
  problems = check_build_coverage.check(str(tmp_path))
  assert [p.split(":")[0] for p in problems] == ["slt_tf/datasets/digits.py", "slt_tf/datasets/BUILD"]
  assert '"//slt_tf/datasets:all_files"' in problems[1]


def test_virtualenv_hidden_and_bazel_output_directories_are_skipped(tmp_path):
  covered_tree(str(tmp_path))
  write_tree(str(tmp_path), {
      "venv/pyvenv.cfg": "", "venv/lib/site.py": "", ".venv/x.py": "", "bazel-bin/x.py": "",
      "third_party/rules_cc/cc/defs.py": "", "slt_tf/__pycache__/x.py": ""})
  assert check_build_coverage.check(str(tmp_path)) == []


def test_file_named_in_build_but_missing_is_reported(tmp_path):
  covered_tree(str(tmp_path))
  os.remove(tmp_path / "slt_tf" / "masking.py")
  assert check_build_coverage.check(str(tmp_path)) == [
      "slt_tf/masking.py: named by //slt_tf:masking but missing."]


def test_module_run_by_name_in_a_subprocess_counts_as_an_import_satisfied_by_data(tmp_path):
  covered_tree(str(tmp_path))
  write_tree(str(tmp_path), {
      "bin/BUILD": 'py_binary(name = "find_ticket", srcs = ["find_ticket.py"])\n',
      "bin/find_ticket.py": "",
      "tests/BUILD": 'pytest_test(name = "train_test", srcs = ["train_test.py"])\n',
      "tests/train_test.py": 'COMMAND = ["python", "-m", "bin.find_ticket", "--help"]\n',
  })
  build = (tmp_path / "BUILD").read_text().replace(
      '"//slt_tf:all_files"', '"//slt_tf:all_files", "//bin:all_files", "//tests:all_files"')
  (tmp_path / "BUILD").write_text(build)
  assert check_build_coverage.check(str(tmp_path)) == [
      '//tests:train_test: add "//bin:find_ticket" to deps or data (tests/train_test.py imports '
      'bin/find_ticket.py).']
  (tmp_path / "tests" / "BUILD").write_text(
      'pytest_test(name = "train_test", srcs = ["train_test.py"], data = ["//bin:find_ticket"])\n')
  assert check_build_coverage.check(str(tmp_path)) == []


def test_fix_adds_the_suggested_target_and_the_missing_dep_to_the_right_stanza(tmp_path):
  covered_tree(str(tmp_path))
  build = (tmp_path / "slt_tf" / "BUILD").read_text().replace(
      'py_library(name = "errors", srcs = ["errors.py"], deps = [":slt_tf"])',
      'py_library(\n    name = "errors",\n    srcs = ["errors.py"],\n    deps = [":slt_tf"],\n)')
  write_tree(str(tmp_path), {"slt_tf/BUILD": build,
                             "slt_tf/errors.py": "import slt_tf.sampling\n",
                             "slt_tf/sampling.py": ""})
  for _ in range(2):  # The dep on a new target is fixable once the target exists.
    check_build_coverage.fix(str(tmp_path), check_build_coverage.check(str(tmp_path)))
  assert check_build_coverage.check(str(tmp_path)) == []
  build = (tmp_path / "slt_tf" / "BUILD").read_text()
  assert '    deps = [\n        ":sampling",\n        ":slt_tf",\n    ],' in build
  assert 'py_library(name = "masking", srcs = ["masking.py"], deps = [":errors", "//slt_tf"])' in build
  assert 'py_library(\n    name = "sampling",\n    srcs = ["sampling.py"],' in build
