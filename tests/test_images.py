"""The one grayscale rule: numpy (the dashboard, the importers) and tf.data (the model) give the same levels."""
import numpy as np
from PIL import Image

from ddsm_core.data.images import read_gray, to_gray


def test_numpy_and_tf_data_gray_every_rgb_colour_alike(tmp_path):
    import tensorflow as tf

    from ddsm_core.data.pipeline import decode_patch

    every = np.arange(256**3, dtype=np.uint32)  # one pixel of each colour, 4096 x 4096
    rgb = np.stack([every >> 16, (every >> 8) & 255, every & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "every.png", compress_level=1)
    model_input = decode_patch(tf.constant(str(tmp_path / "every.png")), None).numpy()[..., 0]
    gray = to_gray(rgb)
    assert gray.dtype == np.uint8 and np.array_equal(model_input, gray)
    assert np.array_equal(read_gray(tmp_path / "every.png"), gray)


def test_a_gray_patch_saved_as_rgb_stays_itself():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(to_gray(np.stack([levels] * 3, axis=-1)), levels)
    assert np.array_equal(to_gray(levels[..., None]), levels)
