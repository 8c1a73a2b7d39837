"""slt_tf: strong lottery tickets in generative models, in TensorFlow/Keras 3."""

import os

# Keras 3 must run on the TensorFlow backend: the custom train_step, tf.distribute and
# SavedModel export all rely on it. Set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
