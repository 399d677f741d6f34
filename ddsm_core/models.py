"""Backbone registry and the classifier builder.

Every model takes (size, size, 1) grayscale patches with values 0-255; it repeats
them to three channels and applies its backbone's own preprocessing inside the
graph, so training, evaluation and the dashboard all feed it the same thing.
TensorFlow is imported only when a model is built.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Backbone:
    name: str
    application: str | None  # keras.applications constructor; None for small_cnn
    preprocessing: str  # caffe | torch | raw (the application normalises) | unit (0-1)
    weights_file: str | None  # ImageNet "notop" file name in the Keras cache


BACKBONES = {b.name: b for b in (
    Backbone("resnet50", "ResNet50", "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("vgg16", "VGG16", "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("efficientnetb0", "EfficientNetB0", "raw", "efficientnetb0_notop.h5"),
    Backbone("densenet121", "DenseNet121", "torch", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("mobilenetv3small", "MobileNetV3Small", "raw", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    Backbone("small_cnn", None, "unit", None),
)}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def keras_cache_dirs() -> list[Path]:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, ~/.keras/models, /tmp/.keras/models."""
    homes = [os.environ.get("KERAS_HOME"), str(Path.home() / ".keras"), "/tmp/.keras"]
    return [Path(home) / "models" for home in homes if home]


def resolve_weights(backbone: Backbone, weights: str) -> Path | None:
    """The weights file to load, or None for random initialisation. Never downloads."""
    if weights == "none":
        return None
    if weights == "imagenet":
        if backbone.weights_file is None:
            raise UserError(f"{backbone.name} has no ImageNet weights: use --weights none")
        for folder in keras_cache_dirs():
            if (folder / backbone.weights_file).is_file():
                return folder / backbone.weights_file
        raise UserError(
            f"ImageNet weights for {backbone.name} are not in the Keras cache: put "
            f"{backbone.weights_file} in {keras_cache_dirs()[0] if os.environ.get('KERAS_HOME') else Path.home() / '.keras' / 'models'} "
            f"(copy it from a machine with internet) or pass --weights /path/to/{backbone.weights_file}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {weights} not found (use none, imagenet or a path to an .h5/.weights.h5 file)")
    return path


def custom_objects() -> dict:
    """The layers a saved model needs to load again."""
    from . import layers

    return {"GrayToRGB": layers.GrayToRGB, "BackbonePreprocessing": layers.BackbonePreprocessing}


def _small_cnn(size: int):
    import keras

    inputs = keras.Input((size, size, 3))
    x = inputs
    for filters in (16, 32, 64, 96):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.Model(inputs, x, name="small_cnn")


def build_backbone(backbone: Backbone, size: int, weights_path: Path | None):
    import keras

    if backbone.application is None:
        model = _small_cnn(size)
    else:
        constructor = getattr(keras.applications, backbone.application)
        model = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    if weights_path is not None:
        try:
            model.load_weights(str(weights_path))
        except (ValueError, OSError) as error:
            raise UserError(f"could not load weights {weights_path} into {backbone.name}: {error}") from None
    return model


def build_classifier(backbone_name: str, n_classes: int, size: int, weights: str = "none",
                     fine_tune: str = "full", dropout: float = 0.0):
    import keras

    from .layers import BackbonePreprocessing, GrayToRGB

    backbone = get_backbone(backbone_name)
    features = build_backbone(backbone, size, resolve_weights(backbone, weights))
    features.trainable = fine_tune == "full"
    inputs = keras.Input((size, size, 1), name="patch")
    x = GrayToRGB()(inputs)
    x = BackbonePreprocessing(backbone.preprocessing)(x)
    # a frozen backbone also keeps its batch-norm statistics fixed
    x = features(x, training=False) if fine_tune == "head" else features(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{backbone_name}_classifier")
