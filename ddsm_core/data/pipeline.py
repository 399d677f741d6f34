"""tf.data input pipelines: decode once, grayscale, resize, batch, prefetch.

Every patch becomes a (size, size, 1) tensor of 8-bit grey levels (resizing
rounds back to whole levels), handed to the model as float32. A 1-channel PNG
and the same patch saved as RGB give the identical tensor: both are decoded to
RGB and grayed by the rule of images.LUMA (images.to_gray gives the same levels
in numpy). `cache` keeps the 8-bit patches, a quarter of float32 (the release's
55,885 training patches at 299 px: 5.0 GB instead of 20 GB), and the model sees
the same values either way. Augmentation applies to the training set only.
"""
from __future__ import annotations

import tensorflow as tf

from ..config import SHUFFLE_BUFFER
from .images import LUMA

AUTOTUNE = tf.data.AUTOTUNE


def decode_patch_uint8(path: tf.Tensor, size: int | None) -> tf.Tensor:
    """A patch file as (size, size, 1) uint8 grey levels (its own size when size is None).

    Grey files (every importer writes them) pass through untouched and unresized when already at size:
    the same values as the colour path gives them, at a third of the decoding time, which on two cores
    is time taken from the model. Colour files are converted with LUMA, rounded, as the importers do."""
    image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)  # the file's own channels
    gray = tf.cond(tf.shape(image)[-1] <= 2, lambda: image[..., :1], lambda: _luma(image[..., :3]))
    gray.set_shape([None, None, 1])
    if size is None:
        return gray
    return tf.cond(tf.reduce_all(tf.shape(gray)[:2] == size), lambda: gray, lambda: _resized(gray, size))


def _luma(rgb: tf.Tensor) -> tf.Tensor:
    gray = tf.reduce_sum(tf.cast(rgb, tf.float32) * tf.constant(LUMA, tf.float32), axis=-1, keepdims=True)
    return tf.cast(tf.clip_by_value(tf.round(gray), 0.0, 255.0), tf.uint8)


def _resized(gray: tf.Tensor, size: int) -> tf.Tensor:
    resized = tf.image.resize(tf.cast(gray, tf.float32), (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_patch(path: tf.Tensor, size: int | None) -> tf.Tensor:
    """The model's input for one patch file: decode_patch_uint8 as float32."""
    return tf.cast(decode_patch_uint8(path, size), tf.float32)


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
    dataset = dataset.map(lambda p, t: (decode_patch_uint8(p, size), t), num_parallel_calls=AUTOTUNE,
                          deterministic=True)
    if cache:
        dataset = dataset.cache()  # 8-bit: a quarter of the memory of float32
    if shuffle:
        dataset = dataset.shuffle(min(len(paths), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(lambda images, t: (tf.cast(images, tf.float32), t), num_parallel_calls=AUTOTUNE)
    if augment:
        dataset = dataset.map(_augmenter(seed), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)
