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
    parameters: int  # without the top (for memory estimates, which must not build the model)
    feature_dim: int  # pooled features per patch, what the head sees


BACKBONES = {b.name: b for b in (
    Backbone("resnet50", "ResNet50", "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
             23_587_712, 2048),
    Backbone("vgg16", "VGG16", "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", 14_714_688, 512),
    Backbone("efficientnetb0", "EfficientNetB0", "raw", "efficientnetb0_notop.h5", 4_049_571, 1280),
    Backbone("densenet121", "DenseNet121", "torch", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
             7_037_504, 1024),
    Backbone("mobilenetv3small", "MobileNetV3Small", "raw", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
             939_120, 576),
    Backbone("small_cnn", None, "unit", None, 79_600, 96),
)}
HEAD_LAYER = "probabilities"  # the classifier's last layer: the only one a head run trains


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
        cache = keras_cache_dirs()[0] if os.environ.get("KERAS_HOME") else Path.home() / ".keras" / "models"
        raise UserError(
            f"ImageNet weights for {backbone.name} are not in the Keras cache: put {backbone.weights_file} in "
            f"{cache} (copy it from a machine with internet) or pass --weights /path/to/{backbone.weights_file}"
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


def _pooled_features(backbone: Backbone, size: int, net, frozen: bool):
    """(inputs, pooled features): one-channel 0-255 patches, repeated to RGB, the backbone's own
    preprocessing, the backbone, global average pooling."""
    import keras

    from .layers import BackbonePreprocessing, GrayToRGB

    net.trainable = not frozen
    inputs = keras.Input((size, size, 1), name="patch")
    x = GrayToRGB()(inputs)
    x = BackbonePreprocessing(backbone.preprocessing)(x)
    # a frozen backbone also keeps its batch-norm statistics fixed
    x = net(x, training=False) if frozen else net(x)
    return inputs, keras.layers.GlobalAveragePooling2D()(x)


def _head(x, n_classes: int, dropout: float):
    import keras

    if dropout > 0:
        x = keras.layers.Dropout(dropout)(x)
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name=HEAD_LAYER)(x)


def build_classifier(backbone_name: str, n_classes: int, size: int, weights: str = "none",
                     fine_tune: str = "full", dropout: float = 0.0):
    import keras

    backbone = get_backbone(backbone_name)
    net = build_backbone(backbone, size, resolve_weights(backbone, weights))
    inputs, features = _pooled_features(backbone, size, net, frozen=fine_tune == "head")
    return keras.Model(inputs, _head(features, n_classes, dropout), name=f"{backbone_name}_classifier")


def feature_extractor(backbone_name: str, size: int, weights: str = "none"):
    """(extractor, backbone): the classifier up to its pooled features, frozen, and the backbone inside it
    (whose weights a feature cache keeps, so the classifier can be rebuilt around a trained head)."""
    import keras

    backbone = get_backbone(backbone_name)
    net = build_backbone(backbone, size, resolve_weights(backbone, weights))
    inputs, features = _pooled_features(backbone, size, net, frozen=True)
    return keras.Model(inputs, features, name=f"{backbone_name}_features"), net


def build_head(feature_dim: int, n_classes: int, dropout: float = 0.0):
    """The classifier's head alone, trained on cached features."""
    import keras

    inputs = keras.Input((feature_dim,), name="features")
    return keras.Model(inputs, _head(inputs, n_classes, dropout), name="head")


def classifier_with_head(backbone_name: str, size: int, backbone_weights: Path, head, dropout: float = 0.0):
    """The full classifier (patches in, probabilities out), frozen backbone from its weights file and the
    trained head's weights: the same model build_classifier(..., fine_tune="head") makes, so evaluation,
    Grad-CAM and the dashboard treat it like any other run."""
    n_classes = head.get_layer(HEAD_LAYER).units
    model = build_classifier(backbone_name, n_classes, size, str(backbone_weights), "head", dropout)
    model.get_layer(HEAD_LAYER).set_weights(head.get_layer(HEAD_LAYER).get_weights())
    return model
