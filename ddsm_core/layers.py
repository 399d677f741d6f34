"""The two layers that make grayscale patches fit any ImageNet backbone, saved with the model."""
import keras
from keras import ops

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="ddsm_core")
class GrayToRGB(keras.layers.Layer):
    """Repeat the one grayscale channel to three, inside the model (same for train and test)."""

    def call(self, inputs):
        return ops.repeat(inputs, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="ddsm_core")
class BackbonePreprocessing(keras.layers.Layer):
    """The backbone's own input normalisation, for 0-255 RGB inputs."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch", "raw", "unit"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":  # RGB -> BGR, subtract the ImageNet mean (ResNet50, VGG16)
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "torch":  # scale to 0-1, normalise per channel (DenseNet)
            mean = ops.convert_to_tensor(TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "unit":
            return x / 255.0
        return x  # EfficientNet and MobileNetV3 normalise 0-255 inputs themselves

    def get_config(self):
        return super().get_config() | {"mode": self.mode}
