"""The task-1 "noisy normal" filter: patches dominated by film background or burned-in labels.

A normal patch cut from the edge of the film is mostly near-black (no breast
tissue in it), and one cut over a burned-in label holds a block of saturated
white. Either teaches a "normal" class that is really "not breast". This module
measures both per patch (`patch_stats`) and flags rows of a table of those
measurements (`flag_noisy`); which rows are normal is the caller's business.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ddsm_core.errors import UserError

from .images import to_gray

DARK_LEVEL = 10  # uint8 level at or below which a pixel counts as film background
SATURATED_LEVEL = 245  # uint8 level at or above which a pixel counts as saturated (label ink/paper)
BLOCK_FRACTION = 1 / 8  # side of the saturated-block window, as a fraction of the patch side

# Half the patch black is far more film than a breast-edge patch that still
# shows useful tissue; a 1/8-side window 90% saturated is a label, not a
# calcification (even a large one covers a small share of such a window).
DEFAULT_DARK_FRACTION = 0.5
DEFAULT_SATURATED_BLOCK = 0.9

def _grayscale(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1 or HxWx3 uint8 -> HxW uint8, as the training pipeline sees it."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise UserError(f"patch_stats needs a uint8 image with levels 0-255, got dtype {image.dtype}.")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3)):
        return to_gray(image)
    raise UserError(f"patch_stats needs an HxW, HxWx1 or HxWx3 image, got shape {image.shape}.")


def block_side(height: int, width: int) -> int:
    """Side of the square window used for `saturated_block` on a patch of this size."""
    side = min(height, width)
    return min(side, max(2, round(BLOCK_FRACTION * side)))


def _max_window_share(mask: np.ndarray, k: int) -> float:
    """Largest share of True pixels in any k x k window, via an integral image (O(H*W))."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
    sums = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    return float(sums.max()) / (k * k)


def patch_stats(image: np.ndarray) -> dict:
    """Film-background and label measurements of one patch.

    Returns {"dark_fraction": share of pixels <= DARK_LEVEL,
             "saturated_block": max over square windows of side block_side() of the
                                share of pixels >= SATURATED_LEVEL}.
    """
    gray = _grayscale(image)
    if gray.size == 0:
        raise UserError("patch_stats needs a non-empty image.")
    k = block_side(*gray.shape)
    return {
        "dark_fraction": float(np.count_nonzero(gray <= DARK_LEVEL)) / gray.size,
        "saturated_block": _max_window_share(gray >= SATURATED_LEVEL, k),
    }


def _check_threshold(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"The {name} threshold must be a number between 0 and 1, got {value!r}.") from None
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise UserError(f"The {name} threshold must be between 0 and 1, got {value}.")
    return value


def flag_noisy(
    frame: pd.DataFrame,
    dark_fraction: float = DEFAULT_DARK_FRACTION,
    saturated_block: float = DEFAULT_SATURATED_BLOCK,
) -> pd.Series:
    """True where a row's patch is film background or label (bool Series on frame's index).

    `frame` needs the `dark_fraction` and `saturated_block` columns of patch_stats.
    It only flags: apply it to normal rows yourself.
    """
    dark_fraction = _check_threshold("dark-fraction", dark_fraction)
    saturated_block = _check_threshold("saturated-block", saturated_block)
    missing = [c for c in ("dark_fraction", "saturated_block") if c not in frame.columns]
    if missing:
        raise UserError(f"flag_noisy needs the patch_stats columns, missing: {', '.join(missing)}.")
    flags = (frame["dark_fraction"] >= dark_fraction) | (frame["saturated_block"] >= saturated_block)
    return flags.fillna(False).astype(bool).rename("noisy")
