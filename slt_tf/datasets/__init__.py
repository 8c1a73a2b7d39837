"""TFDS builders that slt_tf ships (importing a builder's module registers it with TFDS).

- `digits`: scikit-learn's 8x8 handwritten digits, the offline default (`slt_tf.datasets.digits`).
"""
