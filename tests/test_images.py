"""The one grayscale rule: numpy (the dashboard, the importers) and tf.data (the model) give the same levels; the one
16-bit window."""
import numpy as np
import pytest
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


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_every_png_kind_decodes_to_the_same_levels_resized_or_not(tmp_path, mode):
    """Grey files skip the colour conversion, and files already at size skip the resize: both shortcuts must
    give exactly what the full path (LUMA, then an antialiased bilinear resize, rounded) gives."""
    import tensorflow as tf

    from ddsm_core.data.pipeline import decode_patch_uint8

    gray = np.random.default_rng(3).integers(0, 256, size=(40, 40), dtype=np.uint8)
    Image.fromarray(gray, mode="L").convert(mode).save(tmp_path / "patch.png")
    path = tf.constant(str(tmp_path / "patch.png"))
    for size in (None, 40):
        assert np.array_equal(decode_patch_uint8(path, size).numpy()[..., 0], gray)
    full = tf.image.resize(tf.constant(gray[..., None], tf.float32), (24, 24), method="bilinear", antialias=True)
    expected = np.clip(np.round(full.numpy()), 0, 255).astype(np.uint8)
    assert np.array_equal(decode_patch_uint8(path, 24).numpy(), expected)
    same_size = tf.image.resize(tf.constant(gray[..., None], tf.float32), (40, 40), method="bilinear", antialias=True)
    assert np.array_equal(np.round(same_size.numpy())[..., 0], gray)  # so skipping that resize changes nothing


def test_a_gray_patch_saved_as_rgb_stays_itself():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(to_gray(np.stack([levels] * 3, axis=-1)), levels)
    assert np.array_equal(to_gray(levels[..., None]), levels)


@pytest.mark.parametrize("monochrome1", [False, True])
@pytest.mark.parametrize("shape, top", [((1, 1), 4095), ((5, 7), 4095), ((64, 64), 65535), ((300, 200), 255)])
def test_the_16_bit_window_equals_numpy_percentiles(shape, top, monochrome1):
    """window_of counts a histogram instead of sorting: the numbers must be np.percentile's, inversion included."""
    from ddsm_core.data.images import HIGH_PERCENTILE, LOW_PERCENTILE, window_of

    dtype = np.uint8 if top == 255 else np.uint16
    pixels = np.random.default_rng(top).integers(0, top + 1, shape).astype(dtype)
    oriented = (np.iinfo(dtype).max - pixels.astype(np.float64)) if monochrome1 else pixels
    expected = np.percentile(oriented, [LOW_PERCENTILE, HIGH_PERCENTILE])
    assert window_of(pixels, monochrome1) == pytest.approx(tuple(expected), abs=1e-9)
