"""Baking masks into plain Keras layers, the TF Serving SavedModel, its client, TFLite."""
