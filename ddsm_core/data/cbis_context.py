"""The full-mammogram context of a patch cut by the CBIS-DDSM importer, as a picture (for the dashboard).

    context_picture(dataset_folder, row) -> RGB uint8 array, or None

`row` is the patch's manifest row: its `context` (the downsampled full mammogram, 8-bit PNG after the image's
window), `roi_outline` (its ROI mask at the same scale; missing for normal patches), `box_x`, `box_y`,
`box_size` and `source_width`/`source_height` (the full mammogram, in its own pixels). The ROI outline is
drawn in red, the patch box in yellow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .cbis_patches import context_factor

CONTEXT_FIELDS = ("context", "roi_outline", "box_x", "box_y", "box_size", "source_width", "source_height")
OUTLINE = (255, 40, 40)
BOX = (255, 220, 0)


def stored(value) -> bool:
    """Whether a manifest cell names a file (normal patches have no ROI outline: missing)."""
    return isinstance(value, str) and bool(value)


def has_context(row) -> bool:
    return stored(row.get("context"))


def outline_of(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask: set pixels with an unset 4-neighbour (or on the image edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def context_picture(folder: Path, row) -> np.ndarray | None:
    """The context picture with the ROI outline and the patch box drawn; None when the files are missing."""
    if not has_context(row):
        return None
    folder = Path(folder)
    try:
        with Image.open(folder / row["context"]) as image:
            picture = np.stack([np.asarray(image.convert("L"))] * 3, axis=-1)
        if stored(row.get("roi_outline")):
            with Image.open(folder / row["roi_outline"]) as image:
                mask = np.asarray(image.convert("L")) > 127
            if mask.shape == picture.shape[:2]:
                picture[outline_of(mask)] = OUTLINE
    except (OSError, ValueError):
        return None
    factor = context_factor((int(row["source_height"]), int(row["source_width"])))
    drawn = Image.fromarray(picture)
    x, y, side = (int(row[column]) / factor for column in ("box_x", "box_y", "box_size"))
    ImageDraw.Draw(drawn).rectangle([x, y, x + side - 1, y + side - 1], outline=BOX, width=max(1, round(min(drawn.size) / 200)))
    return np.asarray(drawn)
