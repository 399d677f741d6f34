"""tf.data input pipelines: decode once, grayscale, resize, batch, prefetch.

Every patch becomes a (size, size, 1) float32 tensor of 0-255 grey levels. A
1-channel PNG and the same patch saved as RGB give the identical tensor: both
are decoded to RGB and mixed with luma weights that sum to one, then rounded.
Augmentation, when asked for, applies to the training set only.
"""
from __future__ import annotations

import tensorflow as tf

LUMA = (0.299, 0.587, 0.114)
AUTOTUNE = tf.data.AUTOTUNE


def decode_patch(path: tf.Tensor, size: int) -> tf.Tensor:
    raw = tf.io.read_file(path)
    rgb = tf.io.decode_image(raw, channels=3, expand_animations=False)
    rgb = tf.cast(rgb, tf.float32)
    gray = tf.round(tf.reduce_sum(rgb * tf.constant(LUMA, tf.float32), axis=-1, keepdims=True))
    gray.set_shape([None, None, 1])
    if size is not None:
        gray = tf.image.resize(gray, (size, size), method="bilinear", antialias=True)
    return gray


def _augmenter(seed: int):
    import keras

    layers = keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(0.04, fill_mode="reflect", seed=seed),  # about +-15 degrees
        keras.layers.RandomContrast(0.15, seed=seed),
    ])

    def augment(images, targets):
        return tf.clip_by_value(layers(images, training=True), 0.0, 255.0), targets

    return augment


def make_dataset(paths, targets, size: int, batch_size: int, shuffle: bool = False,
                 augment: bool = False, cache: bool = False, seed: int = 0,
                 drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (patches, targets). Order is kept unless shuffle (predictions line up with paths).

    drop_remainder: distributed training splits each batch across replicas, and
    a last partial batch can leave a replica with nothing to normalise.
    """
    dataset = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), list(map(int, targets))))
    dataset = dataset.map(lambda p, t: (decode_patch(p, size), t), num_parallel_calls=AUTOTUNE,
                          deterministic=True)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(min(len(paths), 4096), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if augment:
        dataset = dataset.map(_augmenter(seed), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)
