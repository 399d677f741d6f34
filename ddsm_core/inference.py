"""The fast evaluator: a model as a frozen, optimised function of a batch of patches, run over patch files.

Used by evaluation (class probabilities) and by the feature cache (pooled
features). TensorFlow is imported inside the functions, so importing this
module stays light.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .config import RunConfig
from .errors import UserError

# grappler's graph rewrite for each reduced precision: bfloat16 for oneDNN on CPUs (AMX, AVX-512 BF16),
# float16 on GPUs. Rewriting the frozen graph converts every op it can, where a Keras mixed policy keeps
# batch norm in float32 and pays a cast around each one.
GRAPPLER_PRECISION = {"mixed_bfloat16": "auto_mixed_precision_onednn_bfloat16",
                      "mixed_float16": "auto_mixed_precision"}


def load_model(path: Path):
    import keras

    from .models import custom_objects

    return keras.models.load_model(path, custom_objects=custom_objects(), compile=False)


def load_for_inference(path: Path, config: RunConfig, precision: str = "float32", jit: bool = False):
    """The checkpoint as a function from a batch of patches to class probabilities (see inference_function)."""
    return inference_function(load_model(path), config.image_size, precision, jit)


def inference_function(model, size: int, precision: str = "float32", jit: bool = False):
    """A model as a fast function of a batch of (size, size, 1) patches.

    The graph is frozen (weights become constants), so grappler folds batch
    norm into the convolutions; with a reduced precision it also rewrites the
    graph to that precision. With jit the model is compiled by XLA instead.
    """
    import tensorflow as tf

    if precision not in GRAPPLER_PRECISION and precision != "float32":
        raise UserError(f"unknown precision {precision!r}: use auto, float32, {' or '.join(GRAPPLER_PRECISION)}")
    if jit and precision != "float32":
        raise UserError("choose --jit or a reduced --precision, not both: XLA here runs in float32")
    function = tf.function(lambda batch: model(batch, training=False), jit_compile=jit or None)
    if jit:
        return function
    frozen = _frozen(function.get_concrete_function(tf.TensorSpec([None, size, size, 1])))
    rewrite = GRAPPLER_PRECISION.get(precision)

    def infer(batch):
        with _grappler_option(rewrite):
            output = frozen(batch)
            return output[0] if isinstance(output, list | tuple) else output

    return infer


FROZEN_ON_TF = "2.21."  # the TensorFlow versions _frozen's private function was checked against


def _frozen(concrete):
    """The concrete function with its weights as constants (so grappler folds batch norm into the
    convolutions). TensorFlow 2 has no public API for it: the internal convert_variables_to_constants_v2 is
    used on the checked versions only; elsewhere the unfrozen function serves (same results, less folding)."""
    import tensorflow as tf

    if not tf.__version__.startswith(FROZEN_ON_TF):
        return concrete
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(concrete)


@contextmanager
def _grappler_option(name: str | None):
    """Turn one grappler rewrite on while a function runs: the option is part of the key under which the
    optimised graph is cached, so it must hold at every call, not only the first."""
    import tensorflow as tf

    if name is None:
        yield
        return
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({name: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(previous | {name: previous.get(name, False)})


def predict(infer, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    """infer's output (class probabilities, or features) for every path, in order, in batches."""
    from .data.pipeline import make_dataset

    data = make_dataset(paths, np.zeros(len(paths), dtype=int), image_size, batch_size)
    batches = [np.asarray(infer(images), dtype=np.float64) for images, _ in data]
    return np.concatenate(batches) if batches else np.zeros((0, 0))
