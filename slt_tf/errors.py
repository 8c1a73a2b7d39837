"""The error type shown to users as one line (binaries print it without a traceback)."""


class SltError(ValueError):
  """Bad input from the user: a config key or value, a file, a request.

  The message says what was wrong and what is allowed, on one line.
  """
