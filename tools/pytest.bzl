"""pytest_test: a py_test for a test file written for pytest (plain functions and fixtures)."""

def pytest_test(name, srcs, deps = [], data = [], args = [], conftest = True, **kwargs):
    """Runs `srcs` with pytest through //tools:pytest_runner.py.

    The test passes when pytest exits 0; "no tests collected" counts as a failure.

    Args:
      name: target name, the test file's name without `.py` (tests/x_test.py -> x_test).
      srcs: the test file (first entry) and any helper files only this test uses.
      deps: py_library targets the test imports (third-party packages come from the venv).
      data: files the test reads at run time.
      args: extra pytest arguments.
      conftest: whether the test needs the repo's conftest.py (TF set-up) and pytest.ini.
      **kwargs: passed to py_test; set `size` honestly (small < 60 s, medium < 300 s).
    """
    native.py_test(
        name = name,
        srcs = srcs + ["//tools:pytest_runner.py"],
        main = "//tools:pytest_runner.py",
        args = ["$(rootpath %s)" % srcs[0]] + args + ([] if conftest else ["--noconftest"]),
        deps = deps + ["//tests:tests"] + (["//:conftest"] if conftest else []),
        data = data + ["//:pytest_ini"],
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
