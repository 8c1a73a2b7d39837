"""Developer tools of slt_tf: the Bazel pytest runner and the BUILD coverage check."""
