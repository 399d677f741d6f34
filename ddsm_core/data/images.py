"""Reading and writing patch images with Pillow (import checks and the dashboard's views), and the one
grayscale rule (to_gray here; the tf.data pipeline applies the same rule to tensors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SUPPORTED_MODES = {"L": 1, "RGB": 3}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")  # how Pillow opens a 16-bit grayscale PNG
# A patch is at most a few thousand pixels a side; Pillow's own bomb limit (89 M pixels) would still let a
# 9,000 x 9,000 file through to be decoded whole. Checked from the header, before any decoding.
MAX_PATCH_PIXELS = 4096 * 4096
# The grayscale rule: in float32, each of R, G, B times its ITU-R BT.601 luma weight (Pillow's convert("L")),
# the three products summed, rounded half to even. The weights sum to one, so a gray patch saved as RGB comes
# back as itself. Multiply-then-sum is spelled the same way in numpy and TensorFlow so they agree to the bit
# (a matrix product or a fused multiply-add rounds differently on a few colours in a thousand).
LUMA = (0.299, 0.587, 0.114)


def read_image(path, max_pixels: int | None = MAX_PATCH_PIXELS) -> np.ndarray:
    """Decode an 8-bit grayscale or RGB file into a uint8 array (H, W) or (H, W, 3).

    Raises ValueError with a short reason when the file is not such an image. max_pixels: the size
    cap checked from the header, before decoding (None for full mammograms).
    """
    array = read_pixels(path, max_pixels)
    if array.dtype != np.uint8:
        raise ValueError("16-bit image (expected 8-bit grayscale or RGB)")
    return array


def read_pixels(path, max_pixels: int | None = MAX_PATCH_PIXELS) -> np.ndarray:
    """Like read_image, but a 16-bit grayscale file comes back as its (H, W) uint16 pixels (for to_8bit)."""
    try:
        with Image.open(path) as image:
            _check_header(image, max_pixels)
            image.load()
            return np.asarray(image)
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except Image.DecompressionBombError:
        raise ValueError(f"image too large to be a patch (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)") \
            from None
    except (OSError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError("not a decodable image") from error


def _check_header(image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if width * height == 0:
        raise ValueError(f"image has no pixels ({width} x {height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"image is {width:,} x {height:,} pixels, too large to be a patch "
                         f"(at most {max_pixels:,} pixels)")
    if image.mode not in SUPPORTED_MODES and image.mode not in SIXTEEN_BIT_MODES:
        raise ValueError(f"unsupported image mode {image.mode} (expected 8-bit grayscale or RGB, "
                         "or 16-bit grayscale)")


def to_gray(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3+) uint8 -> (H, W) uint8 by the grayscale rule (LUMA), the levels the
    training pipeline feeds the model."""
    if array.ndim == 2:
        return array
    if array.shape[-1] == 1:
        return array[..., 0]
    gray = (array[..., :3].astype(np.float32) * np.asarray(LUMA, dtype=np.float32)).sum(axis=-1)
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


def read_gray(path) -> np.ndarray:
    return to_gray(read_image(path))


def write_png(path, array: np.ndarray) -> None:
    """A lossless 8-bit PNG. zlib level 1: about half the encoding time of Pillow's default level 6 for
    14 % larger files on 299 px patches (encoding is most of an import's time)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8).squeeze()).save(path, format="PNG", compress_level=1)


# The one 16-bit -> 8-bit rule (DICOM mammograms, 16-bit PNG patches): a linear window between two percentiles
# of the whole source image's pixels, clipped and rounded; MONOCHROME1 (white = 0) is inverted first. Every patch
# cut from one image gets that image's window, so patches of one mammogram stay comparable. Recorded in
# dataset.json as SIXTEEN_BIT_TRANSFORM.
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.9
SIXTEEN_BIT_TRANSFORM = {
    "name": "percentile-window",
    "low_percentile": LOW_PERCENTILE, "high_percentile": HIGH_PERCENTILE,
    "description": (f"per source image: pixels inverted when MONOCHROME1, then mapped linearly from "
                    f"[{LOW_PERCENTILE}th, {HIGH_PERCENTILE}th percentile of that image] to [0, 255], "
                    "clipped and rounded half to even"),
}


def window_of(pixels: np.ndarray, monochrome1: bool = False) -> tuple[float, float]:
    """The (low, high) levels of SIXTEEN_BIT_TRANSFORM for a whole source image (before inversion when
    monochrome1, the window is of the inverted pixels)."""
    pixels = np.asarray(pixels)
    if np.issubdtype(pixels.dtype, np.unsignedinteger) and pixels.dtype.itemsize <= 2:
        # np.percentile's numbers from a histogram: one counting pass, not a partition of 15 M pixels
        counts = np.bincount(pixels.ravel(), minlength=np.iinfo(pixels.dtype).max + 1)
        return _percentiles_of_counts(counts[::-1] if monochrome1 else counts, (LOW_PERCENTILE, HIGH_PERCENTILE))
    low, high = np.percentile(_oriented(pixels, monochrome1), [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(low), float(high)


def _percentiles_of_counts(counts: np.ndarray, percents) -> tuple[float, float]:
    """np.percentile (linear interpolation) of the values 0, 1, 2, ... occurring counts[value] times."""
    cumulative = np.cumsum(counts)
    result = []
    for percent in percents:
        position = percent / 100 * (cumulative[-1] - 1)
        below, above = np.searchsorted(cumulative, [np.floor(position), np.ceil(position)], side="right")
        result.append(float(below + (above - below) * (position - np.floor(position))))
    return tuple(result)


def to_8bit(pixels: np.ndarray, window: tuple[float, float], monochrome1: bool = False) -> np.ndarray:
    """Pixels of a source image (or a crop of it) -> uint8 by its window (window_of of the whole image)."""
    low, high = window
    values = _oriented(pixels, monochrome1)
    scaled = (values - low) * (255.0 / max(high - low, 1e-9))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _oriented(pixels: np.ndarray, monochrome1: bool) -> np.ndarray:
    values = np.asarray(pixels, dtype=np.float64)
    if monochrome1:  # white is 0: flip so that dense tissue is bright, as in MONOCHROME2 and 8-bit patches
        values = float(np.iinfo(pixels.dtype).max if np.issubdtype(pixels.dtype, np.integer) else values.max()) - values
    return values
