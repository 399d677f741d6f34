"""The audit's one pass over the patch files: perceptual hashes, a search descriptor, image properties and
cheap features, per patch, computed once per manifest and reused by every other audit step.

Per patch (a uint8 grayscale array, any size), from `measure(image)`:

- ``hashes`` (8, HASH_BYTES) uint8: ``imagehash.phash`` (HASH_SIZE**2 = 256 bits, packed) of the 64x64
  thumbnail in each of its eight dihedral orientations (DIHEDRAL: rotations by 0/90/180/270 degrees,
  then the same after a left-right flip). pHash keeps the signs of the lowest DCT frequencies relative to
  their median: unchanged by a brightness or contrast change (up to clipping), barely moved by a
  shift of a few pixels; the eight orientations make a flip or rotation an exact match.
- ``descriptor`` (DESCRIPTOR_DIM,) float32, unit length: square roots of the magnitudes of the 8x8
  lowest DCT coefficients of the thumbnail, the DC term dropped and (u, v) averaged with (v, u). A flip
  only changes coefficient signs and a transpose swaps u and v, so it is identical for all eight
  orientations, and the unit length removes contrast: the near-duplicate search looks for neighbours in
  this space and confirms them with the hashes.
- ``properties`` (PROPERTIES, besides the manifest's dark_fraction and saturated_block): mean and
  standard deviation of the grey levels (0-255) and ``border_fraction``, the share of pixels in the outer
  frame (BORDER_SHARE of the side) that are film background or saturated (noise.DARK_LEVEL,
  noise.SATURATED_LEVEL).
- ``features`` (FEATURE_NAMES): orientation-free intensity, local-contrast and radial statistics plus
  the descriptor: the inputs of the cheap label-error model.

`measure_files(paths, workers, progress)` runs `measure` over files in worker processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import imagehash
import numpy as np
import scipy.fft
from PIL import Image, ImageFilter

from ..data import noise
from ..data.images import read_gray
from ..processes import spawn_pool

HASH_SIZE = 16  # pHash side: HASH_SIZE**2 bits
HASH_BITS = HASH_SIZE * HASH_SIZE
HASH_BYTES = HASH_BITS // 8
THUMB = 4 * HASH_SIZE  # imagehash's own resize for pHash (hash_size * highfreq_factor)
DESCRIPTOR_BAND = 8  # lowest DCT frequencies in the descriptor
_TRIU = np.triu_indices(DESCRIPTOR_BAND)
_KEEP = _TRIU[0] + _TRIU[1] > 0  # drop the DC term (brightness)
DESCRIPTOR_DIM = int(_KEEP.sum())
BORDER_SHARE = 1 / 32
PROPERTIES = ("mean", "std", "border_fraction")
_PERCENTILES = (1, 5, 25, 50, 75, 95, 99, 100)
_RINGS = 4
FEATURE_NAMES = tuple(
    [f"p{q}" for q in _PERCENTILES] + ["mean", "std", "border_fraction"]
    + [f"residual_over_{level}" for level in (10, 20, 40)] + ["residual_p99", "residual_max"]
    + [f"ring_{r}" for r in range(_RINGS)] + ["gradient"]
    + [f"dct_{i}" for i in range(DESCRIPTOR_DIM)]
)


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0-7) of the eight flips and rotations: rotate k % 4 quarter turns, then flip when k >= 4."""
    rotated = np.rot90(array, k % 4)
    return np.ascontiguousarray(rotated[:, ::-1] if k >= 4 else rotated)


DIHEDRAL = tuple(range(8))


@dataclass
class Measured:
    hashes: np.ndarray  # (n, 8, HASH_BYTES) uint8
    descriptors: np.ndarray  # (n, DESCRIPTOR_DIM) float32
    features: np.ndarray  # (n, len(FEATURE_NAMES)) float32
    problems: list  # (row, reason) of unreadable files; their rows are zeros


def _thumbnail(gray: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(gray).resize((THUMB, THUMB), Image.Resampling.LANCZOS))


def perceptual_hashes(thumb: np.ndarray) -> np.ndarray:
    """(8, HASH_BYTES): imagehash.phash of the thumbnail in each orientation, bits packed."""
    return np.stack([
        np.packbits(imagehash.phash(Image.fromarray(dihedral(thumb, k)), hash_size=HASH_SIZE).hash.ravel())
        for k in DIHEDRAL
    ])


def descriptor(thumb: np.ndarray) -> np.ndarray:
    """The orientation-, brightness- and contrast-free search descriptor (unit length; zeros for a flat patch)."""
    coefficients = np.abs(scipy.fft.dctn(thumb.astype(np.float64), norm="ortho")[:DESCRIPTOR_BAND, :DESCRIPTOR_BAND])
    symmetric = (coefficients + coefficients.T) / 2
    values = np.sqrt(symmetric[_TRIU][_KEEP])
    norm = np.linalg.norm(values)
    return (values / norm if norm > 1e-9 else np.zeros_like(values)).astype(np.float32)


def _percentiles(gray: np.ndarray) -> np.ndarray:
    """Grey-level percentiles (0-1) from the histogram: no sort of the whole patch."""
    cumulative = np.cumsum(np.bincount(gray.ravel(), minlength=256))
    ranks = np.ceil(np.asarray(_PERCENTILES) / 100 * gray.size).clip(1, gray.size)
    return np.searchsorted(cumulative, ranks) / 255.0


def border_fraction(gray: np.ndarray) -> float:
    """Share of the outer frame's pixels (BORDER_SHARE of the side, at least 1) that are film or saturated."""
    width = max(1, round(BORDER_SHARE * min(gray.shape)))
    frame = np.ones(gray.shape, dtype=bool)
    frame[width:-width, width:-width] = False
    edge = gray[frame]
    return float(np.count_nonzero((edge <= noise.DARK_LEVEL) | (edge >= noise.SATURATED_LEVEL))) / edge.size


def _residual_stats(gray: np.ndarray) -> list[float]:
    """Bright specks above the local background (calcification-like): gray minus a box blur."""
    radius = max(2, min(gray.shape) // 40)
    blurred = np.asarray(Image.fromarray(gray).filter(ImageFilter.BoxBlur(radius)), dtype=np.int16)
    residual = np.maximum(gray.astype(np.int16) - blurred, 0)  # only brighter-than-surroundings matters
    histogram = np.bincount(residual.ravel(), minlength=256)
    above = residual.size - np.cumsum(histogram)  # above[v]: pixels with residual > v
    p99 = int(np.searchsorted(np.cumsum(histogram), np.ceil(0.99 * residual.size)))
    shares = [above[level] / residual.size for level in (10, 20, 40)]
    return [*shares, p99 / 255.0, int(np.flatnonzero(histogram)[-1]) / 255.0]


def _radial_stats(thumb: np.ndarray) -> list[float]:
    """Mean level in concentric rings around the centre relative to the whole (lesions sit near the centre),
    and the mean gradient magnitude."""
    values = thumb.astype(np.float64)
    side = values.shape[0]
    yy, xx = np.mgrid[0:side, 0:side]
    radius = np.hypot(yy - (side - 1) / 2, xx - (side - 1) / 2) / (side / 2)
    ring = np.minimum((radius * _RINGS).astype(int), _RINGS - 1)
    overall = values.mean() + 1.0
    rings = [values[ring == r].mean() / overall - 1.0 for r in range(_RINGS)]
    gy, gx = np.gradient(values)
    return [*rings, float(np.hypot(gy, gx).mean()) / 255.0]


def measure(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, descriptor, features) of one uint8 grayscale patch (see the module docstring)."""
    gray = np.asarray(gray, dtype=np.uint8)
    thumb = _thumbnail(gray)
    desc = descriptor(thumb)
    properties = [float(gray.mean()), float(gray.std()), border_fraction(gray)]
    features = [*_percentiles(gray), *properties, *_residual_stats(gray), *_radial_stats(thumb), *desc]
    return perceptual_hashes(thumb), desc, np.asarray(features, dtype=np.float32)


def _measure_chunk(paths: list[str]) -> list:
    results = []
    for path in paths:
        try:
            results.append(measure(read_gray(path)))
        except (ValueError, OSError) as error:
            results.append(str(error))
    return results


def default_workers() -> int:
    """Worker processes: $DDSM_AUDIT_WORKERS, else every core."""
    return max(1, int(os.environ.get("DDSM_AUDIT_WORKERS") or os.cpu_count() or 1))


POOL_FROM = 1000  # files; fewer are measured in this process (starting workers costs about as much)


def measure_files(paths: list[str], workers: int | None = None, progress=None, chunk: int = 256) -> Measured:
    """`measure` every file, in order, over `workers` processes; progress(done, total) after each chunk.

    Workers are spawned, not forked: the caller may hold threads (a test process with TensorFlow loaded),
    and they do not re-run the caller's __main__ (processes.spawn_pool).
    An unreadable file gives zero rows and an entry in `problems` rather than stopping the audit.
    """
    workers = workers or default_workers()
    n = len(paths)
    hashes = np.zeros((n, len(DIHEDRAL), HASH_BYTES), dtype=np.uint8)
    descriptors = np.zeros((n, DESCRIPTOR_DIM), dtype=np.float32)
    features = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    problems = []
    starts = list(range(0, n, chunk))
    chunks = [list(paths[start:start + chunk]) for start in starts]
    if workers > 1 and n >= POOL_FROM:
        with spawn_pool(workers) as pool:
            _collect(pool.map(_measure_chunk, chunks), starts, n, hashes, descriptors, features, problems, progress)
    else:
        _collect(map(_measure_chunk, chunks), starts, n, hashes, descriptors, features, problems, progress)
    return Measured(hashes, descriptors, features, problems)


def _collect(results, starts, n, hashes, descriptors, features, problems, progress) -> None:
    for start, chunk_results in zip(starts, results):
        for offset, result in enumerate(chunk_results):
            row = start + offset
            if isinstance(result, str):
                problems.append((row, result))
                continue
            hashes[row], descriptors[row], features[row] = result
        if progress:
            progress(min(start + len(chunk_results), n), n)
