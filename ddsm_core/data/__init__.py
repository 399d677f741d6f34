"""Dataset readers, validation, the synthetic demo set and tf.data pipelines."""
