"""Checks that Bazel BUILD files cover every Python file of the repo, with accurate deps.

Usage:
  python tools/check_build_coverage.py [--root=DIR]     # in a checkout (or `bazel run`)
  python tools/check_build_coverage.py --fix            # ... and apply the suggestions
  bazel test //tests:build_coverage_test                # the same check as a test

It fails (exit code 1) listing, with a ready-to-paste BUILD stanza each:
  1. every `.py` file (slt_tf/, bin/, configs/, bench/, tools/, tests/, conftest.py...)
     that no `srcs`, `main` or `data` entry of any BUILD file names (directly or by glob);
  2. every first-party import (`slt_tf`, `bin`, `configs`, `tests`, `tools`) of a
     target's sources whose target is missing from that target's `deps` (direct deps, like
     Google's layering check: a module you import is a target you depend on); a string that
     is exactly a first-party module name ("bin.find_ticket", as in `python -m bin.x`) counts
     as an import too, satisfied by `deps` or `data`;
  3. every package (directory with a BUILD file) whose `:all_files` filegroup the top-level
     `//:build_coverage_inputs` does not list (that filegroup is what the Bazel test sees);
  4. every file a BUILD file names that does not exist (Bazel would fail on it).

BUILD files are read with Python's `ast` (Starlark BUILD files are Python syntax): lists of
strings, `+` and `glob([...], exclude = [...])` are understood, nothing is executed.
Skipped directories: hidden ones (.venv, .git, ...), bazel-*, third_party, runs, __pycache__,
build and *.egg-info (what `pip install .` leaves)
and any virtualenv (a directory holding pyvenv.cfg).
"""

import argparse
import ast
import dataclasses
import os
import re
import sys
from typing import Iterable, Optional

BUILD_NAMES = ("BUILD", "BUILD.bazel")
FIRST_PARTY = ("slt_tf", "bin", "configs", "tests", "tools", "bench")
_SKIPPED_DIRS = ("third_party", "runs", "__pycache__", "node_modules", "build")
_PY_RULES = ("py_library", "py_binary", "py_test", "pytest_test")
_IMPORTABLE_RULES = ("py_library", "py_binary")
_PYTEST_TEST_DEPS = ("//tests:tests", "//:conftest")  # added by tools/pytest.bzl
_FILE_ATTRIBUTES = ("srcs", "main", "data")
_AGGREGATE = "build_coverage_inputs"
_PACKAGE_FILES = "all_files"


@dataclasses.dataclass
class Target:
  """One rule call of a BUILD file, reduced to what the check needs."""
  label: str  # e.g. //slt_tf:masking
  rule: str  # e.g. py_library
  files: set[str]  # repo-relative paths named by srcs / main / data
  srcs: set[str]  # repo-relative paths of its Python sources
  deps: set[str]  # normalised labels


def default_root() -> str:
  """The checkout under `bazel run`, else the directory above tools/ (no symlinks resolved)."""
  workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
  if workspace:
    return workspace
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _skipped(directory: str, name: str) -> bool:
  return (name.startswith(".") or name.startswith("bazel-") or name in _SKIPPED_DIRS or
          name.endswith(".egg-info") or
          os.path.exists(os.path.join(directory, name, "pyvenv.cfg")))


def walk_files(root: str) -> list[str]:
  """Returns every file under `root` outside skipped directories, repo-relative, '/'-separated."""
  found = []
  for directory, subdirs, files in os.walk(root, followlinks=True):
    subdirs[:] = sorted(d for d in subdirs if not _skipped(directory, d))
    relative = os.path.relpath(directory, root)
    for name in sorted(files):
      found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
  return found


def _package_of(path: str) -> str:
  return os.path.dirname(path).replace(os.sep, "/")


def _glob_regex(pattern: str) -> re.Pattern:
  """Bazel glob pattern -> regex over package-relative paths ('**' spans directories)."""
  out = []
  i = 0
  while i < len(pattern):
    if pattern.startswith("**/", i):
      out.append("(?:.*/)?")
      i += 3
    elif pattern.startswith("**", i):
      out.append(".*")
      i += 2
    elif pattern[i] == "*":
      out.append("[^/]*")
      i += 1
    elif pattern[i] == "?":
      out.append("[^/]")
      i += 1
    else:
      out.append(re.escape(pattern[i]))
      i += 1
  return re.compile("".join(out) + r"\Z")


class _BuildFileReader:
  """Evaluates the few Starlark expressions BUILD files use for file lists."""

  def __init__(self, package: str, package_files: list[str]):
    self.package = package
    self.package_files = package_files  # package-relative, subpackages already removed

  def strings(self, node: ast.AST) -> list[str]:
    """Package-relative strings (or labels) an expression denotes; [] for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      return [node.value]
    if isinstance(node, (ast.List, ast.Tuple)):
      return [s for element in node.elts for s in self.strings(element)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
      return self.strings(node.left) + self.strings(node.right)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glob":
      include = self.strings(node.args[0]) if node.args else []
      exclude = []
      for keyword in node.keywords:
        if keyword.arg == "include":
          include += self.strings(keyword.value)
        elif keyword.arg == "exclude":
          exclude += self.strings(keyword.value)
      include_res = [_glob_regex(p) for p in include]
      exclude_res = [_glob_regex(p) for p in exclude]
      return [f for f in self.package_files
              if any(r.match(f) for r in include_res) and not any(r.match(f) for r in exclude_res)]
    return []

  def label(self, value: str) -> str:
    """Normalises a label written in this package: ':x' -> '//pkg:x', '//a/b' -> '//a/b:b'."""
    if value.startswith("@"):
      return value
    if value.startswith("//"):
      package, _, name = value[2:].partition(":")
      return f"//{package}:{name or package.rsplit('/', 1)[-1]}"
    return f"//{self.package}:{value.lstrip(':')}"

  def file_path(self, value: str) -> Optional[str]:
    """Repo-relative path of a source-file label, or None if it names a target."""
    if value.startswith("@"):
      return None
    label = self.label(value)
    package, name = label[2:].split(":", 1)
    if "." not in os.path.basename(name) and name not in BUILD_NAMES:
      return None
    return f"{package}/{name}" if package else name


def read_build_file(root: str, build_path: str, all_files: list[str],
                    packages: set[str]) -> list[Target]:
  """Parses one BUILD file into its targets."""
  package = _package_of(build_path)
  prefix = f"{package}/" if package else ""
  package_files = []
  for path in all_files:
    if not path.startswith(prefix):
      continue
    relative = path[len(prefix):]
    parts = relative.split("/")[:-1]
    if any(f"{prefix}{'/'.join(parts[:i + 1])}" in packages for i in range(len(parts))):
      continue  # Belongs to a subpackage.
    package_files.append(relative)
  reader = _BuildFileReader(package, package_files)
  with open(os.path.join(root, build_path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=build_path)
  targets = []
  for statement in tree.body:
    call = getattr(statement, "value", None)
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
      continue
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    name = reader.strings(keywords["name"]) if "name" in keywords else []
    label = reader.label(name[0]) if name else f"//{package}:<{call.func.id}>"
    files, srcs = set(), set()
    for attribute in _FILE_ATTRIBUTES:
      for value in reader.strings(keywords.get(attribute, ast.List(elts=[]))):
        path = reader.file_path(value)
        if path:
          files.add(path)
          if attribute != "data" and path.endswith(".py"):
            srcs.add(path)
    deps = {reader.label(v) for attribute in ("deps", "data")  # a data target is in runfiles too
            for v in reader.strings(keywords.get(attribute, ast.List(elts=[])))}
    if call.func.id == "pytest_test":  # tools/pytest.bzl adds these.
      deps |= set(_PYTEST_TEST_DEPS)
    targets.append(Target(label, call.func.id, files, srcs, deps))
  return targets


def _module_file(module: str, python_files: set[str]) -> Optional[str]:
  path = module.replace(".", "/")
  for candidate in (f"{path}.py", f"{path}/__init__.py"):
    if candidate in python_files:
      return candidate
  return None


def imported_files(path: str, source: str, python_files: set[str]) -> set[str]:
  """First-party files whose modules `source` (the file at `path`) imports."""
  found = set()
  package = _package_of(path).replace("/", ".")
  for node in ast.walk(ast.parse(source, filename=path)):
    modules = []
    if isinstance(node, ast.Import):
      modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ""
      # `from a import b` imports module a.b when that is a file, else a name of module a.
      modules = [f"{module}.{alias.name}" if _module_file(f"{module}.{alias.name}", python_files)
                 else module for alias in node.names]
    if (isinstance(node, ast.Constant) and isinstance(node.value, str) and
        re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", node.value) and
        _module_file(node.value, python_files)):
      modules = [node.value]  # e.g. `python -m bin.generate_samples` run by a test
    for module in modules:
      if module.split(".")[0] not in FIRST_PARTY:
        continue
      while module and not _module_file(module, python_files):
        module = module.rpartition(".")[0]
      if module:
        found.add(_module_file(module, python_files))
  found.discard(path)
  return found


def conventional_label(path: str) -> str:
  """The label the conventions give a file: slt_tf/x.py -> //slt_tf:x, slt_tf/__init__.py -> //slt_tf:slt_tf."""
  package, name = _package_of(path), os.path.basename(path)[:-3]
  if name == "__init__":
    name = os.path.basename(package) or "root"
  return f"//{package}:{name}"


def _short_label(label: str, package: str) -> str:
  """'//p:x' as written in package p (':x'), and '//a/b:b' as '//a/b'."""
  label_package, name = label[2:].split(":", 1)
  if label_package == package:
    return f":{name}"
  if label_package.rsplit("/", 1)[-1] == name:
    return f"//{label_package}"
  return label


def suggest(path: str, deps: Iterable[str], is_main: bool = False) -> str:
  """A BUILD stanza (for the file's package) that would cover `path`."""
  package, base = _package_of(path), os.path.basename(path)
  name = conventional_label(path).split(":", 1)[1]
  is_test = package == "tests" and base.endswith("_test.py")
  if is_test:
    deps = set(deps) - set(_PYTEST_TEST_DEPS)
  written = sorted((_short_label(d, package) for d in deps),
                   key=lambda label: (not label.startswith(":"), label))  # buildifier's order
  deps_text = "".join(f'        "{label}",\n' for label in written)
  deps_text = f"    deps = [\n{deps_text}    ],\n" if deps_text else ""
  if is_test:
    return (f'pytest_test(\n    name = "{name}",\n    size = "small",  # small < 60 s, medium < 300 s\n'
            f'    srcs = ["{base}"],\n{deps_text})')
  binary = is_main and package.split("/")[0] in ("bin", "bench", "tools")
  rule = "py_binary" if binary else "py_library"
  return f'{rule}(\n    name = "{name}",\n    srcs = ["{base}"],\n{deps_text})'


def check(root: str) -> list[str]:
  """Returns one message per problem (empty when BUILD files cover the repo)."""
  all_files = walk_files(root)
  build_files = [f for f in all_files if os.path.basename(f) in BUILD_NAMES]
  packages = {_package_of(f) for f in build_files}
  python_files = {f for f in all_files if f.endswith(".py")}
  targets = []
  problems = []
  for build_file in build_files:
    try:
      targets += read_build_file(root, build_file, all_files, packages)
    except SyntaxError as e:
      problems.append(f"{build_file}: cannot parse ({e.msg}, line {e.lineno}).")
  covering = {}  # file -> labels of the targets whose srcs/main/data name it
  for target in targets:
    if target.label.rpartition(":")[2] in (_PACKAGE_FILES, _AGGREGATE):
      continue  # Lists every file by construction; covers nothing.
    for path in target.files:
      covering.setdefault(path, []).append(target.label)

  def imports_of(path: str) -> set[str]:
    """Files `path` needs: its first-party imports and the __init__.py of its own package."""
    with open(os.path.join(root, path), encoding="utf-8") as f:
      needed = imported_files(path, f.read(), python_files)
    directory = _package_of(path)
    if os.path.basename(path) == "__init__.py":
      directory = _package_of(directory)
    package_init = f"{directory}/__init__.py" if directory else "__init__.py"
    if package_init in python_files and package_init != path:
      needed.add(package_init)
    return needed

  def library_of(path: str) -> Optional[str]:
    labels = [t.label for t in targets if path in t.srcs and t.rule in _IMPORTABLE_RULES]
    return labels[0] if labels else None

  existing = set(all_files)
  for path in sorted(set(covering) - existing):
    if not os.path.exists(os.path.join(root, path)):  # e.g. a generated file: not our business
      problems.append(f"{path}: named by {', '.join(sorted(covering[path]))} but missing.")
  for path in sorted(python_files - set(covering)):
    deps = {library_of(p) or conventional_label(p) for p in imports_of(path)}
    with open(os.path.join(root, path), encoding="utf-8") as f:
      is_main = bool(re.search(r"__name__\s*==\s*[\"']__main__", f.read()))
    problems.append(f"{path}: no BUILD target covers it; add to {_package_of(path) or '.'}/BUILD:\n"
                    + suggest(path, deps, is_main))
  for target in targets:
    if target.rule not in _PY_RULES:
      continue
    for path in sorted(target.srcs & python_files):
      for imported in sorted(imports_of(path)):
        if imported in target.srcs:
          continue
        dependency = library_of(imported)
        if dependency is None:
          problems.append(f"{path} imports {imported}, which no py_library has in srcs.")
        elif dependency not in target.deps:
          problems.append(f"{target.label}: add \"{dependency}\" to deps or data ({path} imports "
                          f"{imported}).")
  aggregate_file = next((f for f in build_files if "/" not in f), None)
  if aggregate_file:
    with open(os.path.join(root, aggregate_file), encoding="utf-8") as f:
      aggregate_text = f.read()
    for package in sorted(packages):
      label = f"//{package}:{_PACKAGE_FILES}"
      if package and label not in aggregate_text:
        problems.append(f"{package}/BUILD: add filegroup(name = \"{_PACKAGE_FILES}\", srcs = "
                        f"[\"BUILD\"] + glob([\"**/*.py\"])) and list \"{label}\" in "
                        f"//:{_AGGREGATE} ({aggregate_file}).")
  return problems


def _insert_stanza(text: str, stanza: str) -> str:
  """Adds a stanza before the package's `all_files` filegroup (or at the end)."""
  marker = text.find("# Read by //tests:build_coverage_test")
  if marker < 0:
    return text.rstrip("\n") + "\n\n" + stanza + "\n"
  return text[:marker] + stanza + "\n\n" + text[marker:]


def _add_dep(text: str, name: str, label: str) -> Optional[str]:
  """Adds `label` to the deps of the target `name`; None if that stanza is not found."""
  lines = text.splitlines(keepends=True)
  try:
    at = next(i for i, line in enumerate(lines) if line.strip() == f'name = "{name}",')
  except StopIteration:
    return None
  first = next((i for i in range(at, -1, -1) if re.match(r"\w+\($", lines[i].rstrip())), None)
  last = next((i for i in range(at, len(lines)) if lines[i].rstrip() == ")"), None)
  if first is None or last is None:
    return None
  stanza = "".join(lines[first:last + 1])
  deps = re.search(r"^    deps = \[(.*?)\],\n", stanza, re.S | re.M)
  labels = set(re.findall(r'"([^"]+)"', deps.group(1))) if deps else set()
  labels.add(label)
  written = sorted(labels, key=lambda label: (not label.startswith(":"), label))
  block = "    deps = [\n" + "".join(f'        "{l}",\n' for l in written) + "    ],\n"
  if deps:
    stanza = stanza[:deps.start()] + block + stanza[deps.end():]
  else:
    stanza = stanza[:-2] + block + ")\n"
  return "".join(lines[:first]) + stanza + "".join(lines[last + 1:])


def fix(root: str, problems: list[str]) -> list[str]:
  """Applies the problems that have a mechanical fix to the BUILD files; returns the rest."""
  left = []
  for problem in problems:
    covered = re.match(r"(\S+\.py): no BUILD target covers it; add to (\S+):\n(.*)\Z", problem,
                       re.S)
    missing = re.match(r'//([^:]*):(\w+): add "([^"]+)" to deps', problem)
    if covered:
      build = os.path.join(root, covered.group(2))
      text = open(build, encoding="utf-8").read() if os.path.exists(build) else ""
      with open(build, "w", encoding="utf-8") as f:
        f.write(_insert_stanza(text, covered.group(3)))
      continue
    if missing:
      package, name, label = missing.groups()
      build = os.path.join(root, package, "BUILD")
      text = open(build, encoding="utf-8").read()
      label = _short_label(label, package)
      new_text = _add_dep(text, name, label)
      if new_text is not None:
        with open(build, "w", encoding="utf-8") as f:
          f.write(new_text)
        continue
    left.append(problem)
  return left



def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--root", default=default_root(), help="repository root to check")
  parser.add_argument("--fix", action="store_true",
                      help="add the suggested targets and missing deps to the BUILD files "
                      "(review the result: test sizes, data)")
  args = parser.parse_args(argv[1:])
  problems = check(args.root)
  for _ in range(3 if args.fix else 0):  # A dep on a new target is fixable once it exists.
    if not problems:
      break
    fix(args.root, problems)
    problems = check(args.root)
  for problem in problems:
    print(problem, file=sys.stderr)
  if problems:
    print(f"check_build_coverage: {len(problems)} problem(s) in {args.root}; "
          "see docs/bazel.md.", file=sys.stderr)
    return 1
  print(f"check_build_coverage: BUILD files cover every Python file in {args.root}.")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
