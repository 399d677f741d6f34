"""The per-mammogram work of the CBIS-DDSM importer (data/cbis.py): pure functions on pixels, and
`process_image`, which a worker process runs for one full mammogram and its abnormalities.

For one full mammogram:
- its pixels are read (DICOM through pydicom, JPEG through Pillow), and, when 16-bit, its window is
  images.window_of of the whole image; every patch and the context picture go through images.to_8bit
  with that one window (MONOCHROME1 inverted);
- each abnormality's ROI mask is found among its series' files, never by file name: a file whose
  SeriesDescription says "crop" is passed over, and of the rest the near-binary 0/255 image is the mask (the
  description deciding between several); the patch is a square around the
  mask's bounding box: patch_size when the ROI fits, else the ROI's extent plus ROI_MARGIN resized down to
  patch_size (Shen et al.);
- normal patches (patch_size, native scale) are drawn with a generator seeded by the import seed and the
  image's key, from boxes that are at most NORMAL_MAX_DARK film background and overlap no abnormal patch box
  nor each other; an image with a bad ROI gives no normals (its lesion's place is unknown);
- a context picture (longest side at most CONTEXT_SIDE) and each ROI's outline mask at the same scale are
  written beside the patches, for the dashboard.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import images, noise

ROI_MARGIN = 0.2  # an ROI larger than the patch gets a 10 % margin on each side before it is scaled down
NORMAL_MAX_DARK = 0.05  # a normal patch is breast tissue: at most this share of film background pixels
NORMAL_TRIES = 200  # random boxes tried per normal patch before giving up on that image
CONTEXT_SIDE = 1024  # the context picture's longest side (at most)
MASK_MIDDLE = (16, 239)  # levels strictly between these are neither mask nor background (JPEG ringing aside)
MASK_MAX_MIDDLE = 0.01  # a mask has at most this share of such levels


@dataclass(frozen=True)
class RoiJob:
    where: str  # "<csv name> line <n>"
    csv_file: str  # the ROI mask path as the CSV gives it (stripped), for messages
    files: tuple  # ((path, SeriesDescription or None), ...): the files of its crop/mask series
    problem: str | None  # why its files could not be found, if so
    filename: str  # the patch's filename
    fields: dict  # manifest fields of the abnormality (label, split, group, metadata)


@dataclass(frozen=True)
class ImageJob:
    key: str  # the full mammogram's series UID
    subject: str  # its subject folder (Mass-Training_P_00001_LEFT_CC): the manifest's source_image
    csv_file: str  # its path as the CSV gives it, for messages
    file: str | None  # its file
    problem: str | None
    rois: tuple  # RoiJob, ...
    normal_fields: dict  # manifest fields of its normal patches (split, group, image-level metadata)


@dataclass(frozen=True)
class Settings:
    staging: str
    source: str
    patch_size: int
    normals_per_image: int
    seed: int


@dataclass
class ImageResult:
    rows: list = field(default_factory=list)
    bad: list = field(default_factory=list)
    normals_short: int = 0  # normal patches asked for but not found (no room, or a bad ROI)


# ---------------------------------------------------------------- reading

def read_dicom(path) -> tuple[np.ndarray, bool, str]:
    """(pixels, monochrome1, SeriesDescription) of a single-frame grayscale DICOM file; ValueError with a reason."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except Exception as error:  # pydicom and its decoder plugins raise many types for a broken file
        raise ValueError(f"not a readable DICOM image ({type(error).__name__})") from None
    if pixels.ndim != 2:
        raise ValueError(f"not a single-frame grayscale image (pixel array of shape {pixels.shape})")
    return pixels, str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1", str(ds.get("SeriesDescription", ""))


def read_jpeg(path) -> np.ndarray:
    """An 8-bit JPEG of the re-release as (H, W) grayscale (images.to_gray); ValueError with a reason. Full
    mammograms are larger than a patch, so without read_image's patch-size cap."""
    return images.to_gray(images.read_image(path, max_pixels=None))


def read_any(path: str, description: str | None) -> tuple[np.ndarray, bool, str]:
    """(pixels, monochrome1, description) of a DICOM or JPEG file; the JPEG's description comes from dicom_info."""
    if path.lower().endswith((".jpg", ".jpeg")):
        return read_jpeg(path), False, description or ""
    return read_dicom(path)


# ---------------------------------------------------------------- pure pixel functions

def as_mask(pixels: np.ndarray) -> np.ndarray | None:
    """The boolean mask of a near-binary 0/255 (or 0/1) image; None when it is not one (a cropped image)."""
    top = int(pixels.max()) if pixels.size else 0
    if top > 255:
        return None
    levels = pixels.astype(np.uint8) * (255 if top == 1 else 1)
    middle = ((levels > MASK_MIDDLE[0]) & (levels < MASK_MIDDLE[1])).mean()
    return levels >= 128 if middle <= MASK_MAX_MIDDLE else None


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the True pixels, ends exclusive; None for an empty mask."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def patch_box(roi: tuple[int, int, int, int], shape: tuple[int, int], patch_size: int) -> tuple[int, int, int]:
    """(x, y, side) of the square cut for an ROI: patch_size centred on it when it fits, else its extent plus
    ROI_MARGIN; shifted to stay inside the image and never larger than the image's short side."""
    x0, y0, x1, y1 = roi
    extent = max(x1 - x0, y1 - y0)
    side = patch_size if extent <= patch_size else math.ceil(extent * (1 + ROI_MARGIN))
    height, width = shape
    side = min(side, height, width)
    left = int(np.clip(round((x0 + x1 - side) / 2), 0, width - side))
    top = int(np.clip(round((y0 + y1 - side) / 2), 0, height - side))
    return left, top, side


def overlaps(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two (x, y, side) squares share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]


def resized(patch: np.ndarray, size: int) -> np.ndarray:
    if patch.shape == (size, size):
        return patch
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.LANCZOS))


def context_factor(shape: tuple[int, int]) -> int:
    """The integer downsampling factor that brings the longest side to at most CONTEXT_SIDE."""
    return max(1, math.ceil(max(shape) / CONTEXT_SIDE))


def downsampled(pixels: np.ndarray, factor: int, reduce=np.add) -> np.ndarray:
    """Block-reduce by an integer factor (the ragged edge dropped) with a ufunc: np.add gives block means,
    np.maximum block maxima. The dtype is kept (so to_8bit's MONOCHROME1 inversion uses the stored range)."""
    if factor == 1:
        return pixels
    height, width = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    blocks = pixels[:height, :width].reshape(height // factor, factor, width // factor, factor)
    if reduce is np.maximum:
        return reduce.reduce(reduce.reduce(blocks, axis=3), axis=1)
    # one axis at a time: numpy reduces a contiguous last axis far faster than two strided ones at once
    sums = np.add.reduce(np.add.reduce(blocks, axis=3, dtype=np.float32), axis=1)
    return np.round(sums / (factor * factor)).astype(pixels.dtype)


def roi_outline(mask: np.ndarray, roi: tuple[int, int, int, int], factor: int, shape: tuple[int, int]) -> np.ndarray:
    """The mask at the context picture's scale (`shape`; a block is set when any of its pixels is), 0/255
    uint8; only the blocks around the ROI's bounding box are reduced (a full-size mask is large)."""
    out = np.zeros(shape, dtype=np.uint8)
    x0, y0, x1, y1 = roi
    rows = slice(y0 // factor, min(-(-y1 // factor), shape[0]))
    cols = slice(x0 // factor, min(-(-x1 // factor), shape[1]))
    region = mask[rows.start * factor:rows.stop * factor, cols.start * factor:cols.stop * factor]
    out[rows, cols] = np.where(downsampled(region, factor, reduce=np.maximum), 255, 0)
    return out


def normal_boxes(tissue: np.ndarray, factor: int, shape: tuple[int, int], taken: list, count: int, size: int,
                 rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Up to `count` (x, y, size) squares of the full image over breast tissue (`tissue`: the context-scale
    map, one pixel per factor x factor block), overlapping none of `taken` nor each other."""
    height, width = shape
    if size > min(height, width):
        return []
    chosen: list[tuple[int, int, int]] = []
    for _ in range(count * NORMAL_TRIES):
        if len(chosen) == count:
            break
        box = (int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1)), size)
        if any(overlaps(box, other) for other in [*taken, *chosen]):
            continue
        x, y = box[0] // factor, box[1] // factor
        window = tissue[y:y + max(1, size // factor), x:x + max(1, size // factor)]
        if window.size and 1.0 - window.mean() <= NORMAL_MAX_DARK:
            chosen.append(box)
    return chosen


# ---------------------------------------------------------------- one mammogram

def shown_path(path, source) -> str:
    """path as messages show it: relative to the source folder when inside it."""
    try:
        return str(Path(path).relative_to(source))
    except ValueError:
        return str(path)


def find_mask(roi: RoiJob, source: str) -> tuple[np.ndarray | None, str, str | None]:
    """(mask, file, problem): the ROI mask among the series' files: those described as a crop are passed
    over; of the rest, a near-binary one, the SeriesDescription deciding between several; `file` names the
    file a problem is about."""
    described, found = None, []
    for path, listed in roi.files:
        try:
            pixels, _, description = read_any(path, listed)
        except ValueError as error:
            return None, shown_path(path, source), str(error)
        says_mask = "mask" in description.lower()
        if "crop" in description.lower():
            continue
        mask = as_mask(pixels)
        if mask is not None:
            found.append((not says_mask, path, mask))
        elif says_mask:
            described = path
    if found:
        _, path, mask = min(found, key=lambda item: item[0])
        return mask, shown_path(path, source), None
    if described:
        return None, shown_path(described, source), "ROI mask is not a binary 0/255 image"
    return None, roi.csv_file, "no ROI mask among the files of its series (a binary 0/255 image)"


def _bad(where: str, file: str, reason: str) -> dict:
    return {"where": where, "file": file, "reason": reason}


def _patch_row(settings: Settings, fields: dict, filename: str, patch: np.ndarray, box: tuple, job: ImageJob,
               shape: tuple[int, int], outline: str | None) -> dict:
    relative = f"images/{fields['split']}/{filename}"
    images.write_png(Path(settings.staging) / relative, patch)
    return ({"path": relative, "filename": filename} | fields
            | {"width": patch.shape[1], "height": patch.shape[0], "channels": 1}
            | noise.patch_stats(patch)
            | {"source_image": job.subject, "box_x": box[0], "box_y": box[1], "box_size": box[2],
               "source_width": shape[1], "source_height": shape[0], "context": context_file(job.subject),
               "roi_outline": outline})


def context_file(subject: str) -> str:
    return f"context/{subject}.png"


def process_image(job: ImageJob, settings: Settings) -> ImageResult:
    """Patches, normals and the context picture of one full mammogram, written under settings.staging."""
    result = ImageResult()
    try:
        if job.problem:
            raise ValueError(job.problem)
        full, monochrome1, _ = read_any(job.file, None)
    except ValueError as error:
        file = shown_path(job.file, settings.source) if job.file else job.csv_file
        result.bad = [_bad(roi.where, file, f"full mammogram: {error}") for roi in job.rois]
        result.normals_short = settings.normals_per_image
        return result
    window = images.window_of(full, monochrome1) if full.dtype != np.uint8 else None
    eight = (lambda pixels: images.to_8bit(pixels, window, monochrome1)) if window else (lambda pixels: pixels)
    factor = context_factor(full.shape)
    context = eight(downsampled(full, factor))
    taken = []
    for roi in job.rois:
        row, box = _abnormal_patch(roi, job, settings, full, eight, factor, context.shape)
        if box is not None:
            result.rows.append(row)
            taken.append(box)
        else:
            result.bad.append(row)
    boxes = [] if result.bad else normal_boxes(  # a bad ROI's lesion could be anywhere: no normals then
        context > noise.DARK_LEVEL, factor, full.shape, taken, settings.normals_per_image, settings.patch_size,
        np.random.default_rng([settings.seed, zlib.crc32(job.key.encode())]))
    for number, (x, y, side) in enumerate(boxes, start=1):
        patch = eight(full[y:y + side, x:x + side])
        result.rows.append(_patch_row(settings, job.normal_fields, f"{job.subject}_normal{number}.png", patch,
                                      (x, y, side), job, full.shape, None))
    result.normals_short = settings.normals_per_image - len(boxes)
    if result.rows:  # the rows name the picture; a mammogram that gave none leaves none behind
        images.write_png(Path(settings.staging) / context_file(job.subject), context)
    return result


def _abnormal_patch(roi: RoiJob, job: ImageJob, settings: Settings, full: np.ndarray, eight, factor: int,
                    context_shape: tuple[int, int]):
    """(manifest row, box) of one abnormality, or (bad entry, None)."""
    if roi.problem:
        return _bad(roi.where, roi.csv_file, roi.problem), None
    mask, file, problem = find_mask(roi, settings.source)
    if problem:
        return _bad(roi.where, file, problem), None
    if mask.shape != full.shape:
        return _bad(roi.where, file, f"mask is {mask.shape[1]}x{mask.shape[0]} but its full mammogram is "
                                     f"{full.shape[1]}x{full.shape[0]}"), None
    roi_box = bounding_box(mask)
    if roi_box is None:
        return _bad(roi.where, file, "mask is empty"), None
    x, y, side = patch_box(roi_box, full.shape, settings.patch_size)
    patch = resized(eight(full[y:y + side, x:x + side]), settings.patch_size)
    outline = f"roi/{Path(roi.filename).stem}.png"
    images.write_png(Path(settings.staging) / outline, roi_outline(mask, roi_box, factor, context_shape))
    return _patch_row(settings, roi.fields, roi.filename, patch, (x, y, side), job, full.shape, outline), (x, y, side)
