"""Reading and writing patch images with Pillow (import checks and the dashboard's views)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SUPPORTED_MODES = {"L": 1, "RGB": 3}


def read_image(path) -> np.ndarray:
    """Decode an 8-bit grayscale or RGB file into a uint8 array (H, W) or (H, W, 3).

    Raises ValueError with a short reason when the file is not such an image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in SUPPORTED_MODES:
                raise ValueError(f"unsupported image mode {image.mode} (expected 8-bit grayscale or RGB)")
            return np.asarray(image)
    except (OSError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError("not a decodable image") from error


def to_gray(array: np.ndarray) -> np.ndarray:
    """Grayscale the same way the training pipeline does (luma weights, rounded)."""
    if array.ndim == 2:
        return array
    if array.shape[-1] == 1:
        return array[..., 0]
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.round(array[..., :3].astype(np.float32) @ weights), 0, 255).astype(np.uint8)


def read_gray(path) -> np.ndarray:
    return to_gray(read_image(path))


def write_png(path, array: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8).squeeze()).save(path, format="PNG")
