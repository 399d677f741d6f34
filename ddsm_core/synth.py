"""Deterministic synthetic mammography-like patches for the five DDSM classes.

Why it exists: the demo, the importers and the tests need a dataset that is
there without a multi-gigabyte download, that a small CNN learns in minutes at
64x64, and that carries the sharp edges of the real release: normal patches cut
from film background (some with burned-in labels), several patches per patient,
and the public release's odd file layout.

Labels are the DDSM source labels of ddsm_core.tasks.SOURCE_LABELS.

Everything is driven by ``np.random.default_rng``: the same arguments give
byte-identical patches and files. Pure numpy (no scipy).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .data import kaggle, store
from .errors import UserError
from .tasks import CALCIFICATIONS, MASSES, SOURCE_LABELS

CLASS_SHARES = (0.40, 0.15, 0.15, 0.15, 0.15)  # per source label
BACKGROUND_SHARE = 0.25  # normals planted as film background (the task-1 noisy normals)
LABEL_SHARE = 0.4  # of those, the share that also show a burned-in label
EDGE_SHARE = 0.15  # clean normals cut near the breast edge: a borderline case the filter must keep
MIN_SIZE = 32


# ---------------------------------------------------------------- drawing helpers


def _grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size]
    return yy.astype(np.float64), xx.astype(np.float64)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _window(size: int, cy: float, cx: float, half: float):
    """A small grid around (cy, cx): drawing a speck only touches its neighbourhood (speed)."""
    y0, y1 = max(0, int(cy - half)), min(size, int(cy + half) + 2)
    x0, x1 = max(0, int(cx - half)), min(size, int(cx + half) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), yy.astype(np.float64), xx.astype(np.float64)


def _along_across(yy, xx, cy, cx, angle):
    """Coordinates along and across a line through (cy, cx) at `angle`."""
    dy, dx = yy - cy, xx - cx
    return dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)


def _near_centre(size: int, rng, spread: float = 0.07, limit: float = 0.15):
    """A lesion centre: DDSM abnormal patches are cropped around the lesion, give or take."""
    offset = np.clip(rng.normal(0.0, spread * size, 2), -limit * size, limit * size)
    return size / 2 + offset[0], size / 2 + offset[1]


def _soft_cap(img, knee: float = 200.0, room: float = 35.0):
    """Compress tissue brightness above `knee` so only calcifications and labels saturate."""
    over = img > knee
    img[over] = knee + room * np.tanh((img[over] - knee) / room)
    return img


# ---------------------------------------------------------------- breast tissue


def _tissue(size: int, rng) -> np.ndarray:
    """Fibroglandular-looking texture: power-law noise plus faint oriented strands.

    Mammographic parenchyma has a roughly 1/f^beta power spectrum with beta near
    3, which filtered white noise reproduces cheaply with one FFT.
    """
    scale = size / 128
    beta = rng.uniform(2.6, 3.4)
    freq = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    spectrum = np.fft.rfft2(rng.standard_normal((size, size))) * (freq + 1.0 / size) ** (-beta / 2)
    field = np.fft.irfft2(spectrum, s=(size, size))
    field = (field - field.mean()) / field.std()

    yy, xx = _grid(size)
    img = rng.uniform(105, 150) + rng.uniform(10, 22) * field
    slope_angle = rng.uniform(0, 2 * np.pi)
    img += rng.uniform(-10, 10) * _along_across(yy, xx, size / 2, size / 2, slope_angle)[0] / size

    # Ducts and Cooper's ligaments run roughly parallel toward the nipple: faint, not radiating.
    base = rng.uniform(0, np.pi)
    for _ in range(rng.integers(2, 7)):
        _, across = _along_across(yy, xx, rng.uniform(0, size), rng.uniform(0, size), base + rng.normal(0, 0.25))
        img += rng.uniform(3, 9) * np.exp(-(across**2) / (2 * (rng.uniform(0.8, 2.0) * scale) ** 2))

    img += rng.normal(0, rng.uniform(1.5, 3.5), (size, size))  # film grain
    return np.maximum(img, 30.0)  # tissue never reaches film-background black


# ---------------------------------------------------------------- lesions


def _lift(img, py, px, peak: float) -> float:
    """How much to add at (py, px) to reach `peak`: calcium is dense whatever the tissue around it."""
    size = img.shape[0]
    local = img[int(np.clip(py, 0, size - 1)), int(np.clip(px, 0, size - 1))]
    return max(peak - local, 50.0)


def _benign_calcifications(img, rng):
    """1-4 round, relatively large, smooth-edged bright dots."""
    size = img.shape[0]
    scale = size / 128
    cy, cx = _near_centre(size, rng)
    for _ in range(rng.integers(1, 5)):
        radius = rng.uniform(2.0, 4.0) * scale
        r, a = 0.2 * size * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        py, px = cy + r * np.sin(a), cx + r * np.cos(a)
        where, yy, xx = _window(size, py, px, radius + 4 * scale)
        dist = np.hypot(yy - py, xx - px)
        img[where] += _lift(img, py, px, rng.uniform(225, 255)) * _sigmoid((radius - dist) / (0.5 * scale))


def _speck(img, rng, py, px, scale):
    """One fine, elongated, irregular bright speck (an anisotropic Gaussian)."""
    sigma = rng.uniform(0.8, 1.5) * scale
    stretch, angle = rng.uniform(1.0, 2.5), rng.uniform(0, np.pi)
    where, yy, xx = _window(img.shape[0], py, px, 4 * sigma * stretch + 2)
    along, across = _along_across(yy, xx, py, px, angle)
    img[where] += _lift(img, py, px, rng.uniform(190, 255)) * np.exp(-((along / stretch) ** 2 + across**2) / (2 * sigma**2))


def _malignant_calcifications(img, rng):
    """A cluster of 8-25 fine, varied, irregular specks (some branching: two merged specks)."""
    size = img.shape[0]
    scale = size / 128
    cy, cx = _near_centre(size, rng)
    cluster = rng.uniform(0.08, 0.18) * size
    for _ in range(rng.integers(8, 26)):
        r, a = cluster * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        py, px = cy + r * np.sin(a), cx + r * np.cos(a)
        _speck(img, rng, py, px, scale)
        if rng.uniform() < 0.4:
            _speck(img, rng, py + rng.uniform(-2, 2) * scale, px + rng.uniform(-2, 2) * scale, scale)


def _benign_mass(img, rng):
    """A smooth, circumscribed, round-to-oval brighter blob with a soft edge."""
    size = img.shape[0]
    yy, xx = _grid(size)
    cy, cx = _near_centre(size, rng)
    major = rng.uniform(0.12, 0.28) * size
    minor = major * rng.uniform(0.7, 1.0)
    along, across = _along_across(yy, xx, cy, cx, rng.uniform(0, np.pi))
    rho = np.hypot(along / major, across / minor)
    img += rng.uniform(30, 60) * _sigmoid((1 - rho) / rng.uniform(0.06, 0.15))


def _malignant_mass(img, rng):
    """An irregular brighter core with spicules radiating from it."""
    size = img.shape[0]
    scale = size / 128
    yy, xx = _grid(size)
    cy, cx = _near_centre(size, rng)
    core = rng.uniform(0.12, 0.22) * size
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = sum(rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 8))
    rho = np.hypot(yy - cy, xx - cx) / (core * (1 + wobble))
    amplitude = rng.uniform(35, 65)
    img += amplitude * _sigmoid((1 - rho) / rng.uniform(0.05, 0.12))

    for angle in rng.uniform(0, 2 * np.pi, rng.integers(8, 21)):
        length = min(core * rng.uniform(1.8, 3.0), 0.48 * size)
        along, across = _along_across(yy, xx, cy, cx, angle)
        # Full strength through the core, fading out well beyond it: spicules reach into the tissue.
        taper = np.clip((length - along) / (length - 0.5 * core), 0, 1) * (along > 0)
        sigma = rng.uniform(0.8, 1.6) * scale
        img += rng.uniform(0.35, 0.7) * amplitude * taper * np.exp(-(across**2) / (2 * sigma**2))


_LESIONS = {1: _benign_calcifications, 2: _benign_mass, 3: _malignant_calcifications, 4: _malignant_mass}


# ---------------------------------------------------------------- film background and labels


def _film_edge(img, rng, black_share: float) -> np.ndarray:
    """Cut the patch with a gently curved breast edge; film outside is near-black.

    The edge is placed at the quantile that leaves `black_share` of the patch
    outside the breast, so the planted dark fraction is controlled, not hoped for.
    Returns the film mask.
    """
    size = img.shape[0]
    yy, xx = _grid(size)
    along, across = _along_across(yy, xx, size / 2, size / 2, rng.uniform(0, 2 * np.pi))
    outward = along + across**2 / (size * rng.uniform(1.5, 4.0))  # the breast is convex
    edge = np.quantile(outward, 1 - black_share)
    depth = edge - outward  # pixels inside the breast, > 0
    film = depth < 0

    # Compressed tissue thins toward the skin, and the skin itself shows as a faint line.
    thinning = 1 - np.exp(-np.maximum(depth, 0) / (rng.uniform(4, 10) * size / 128))
    skin = rng.uniform(8, 20) * np.exp(-((depth - 2.0) ** 2) / 4.0)
    img *= thinning
    img += skin
    img[film] = np.clip(rng.uniform(1, 6) + rng.normal(0, 1.0, np.count_nonzero(film)), 0, 9)
    return film


def _burned_label(img, rng, film: np.ndarray):
    """A saturated white rectangle with dark text strokes in its top band, placed on the film.

    The text stays in the top band so the rectangle keeps a clean white block,
    as real labels do (a few lines of text on a larger card).
    """
    size = img.shape[0]
    scale = size / 128
    height, width = int(rng.uniform(0.24, 0.34) * size), int(rng.uniform(0.35, 0.55) * size)
    candidates = np.flatnonzero(film)
    centre = candidates[rng.integers(len(candidates))] if len(candidates) else size * size // 2
    top = int(np.clip(centre // size - height // 2, 0, size - height))
    left = int(np.clip(centre % size - width // 2, 0, size - width))
    img[top : top + height, left : left + width] = rng.uniform(248, 255)

    char_w, char_h = max(3, round(5 * scale)), max(4, round(7 * scale))
    stroke = max(1, round(scale))
    row = top + max(2, round(3 * scale))
    for col in range(left + 3, left + width - char_w - 2, char_w + max(1, round(2 * scale))):
        if rng.uniform() < 0.15:  # a space between words
            continue
        ink = rng.uniform(0, 30)
        if rng.uniform() < 0.7:  # vertical stroke
            x = col + int(rng.integers(0, char_w - stroke + 1))
            img[row : row + char_h, x : x + stroke] = ink
        for _ in range(rng.integers(1, 3)):  # horizontal strokes at top, middle or bottom
            y = row + int(rng.choice([0, char_h // 2, char_h - stroke]))
            img[y : y + stroke, col : col + char_w] = ink


# ---------------------------------------------------------------- patches


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_patch(label: int, size: int, rng, background: bool = False) -> np.ndarray:
    """One (size, size) uint8 patch of class `label`.

    background=True (normals only) plants a noisy normal: >60% film background,
    some with a burned-in label. Clean normals are sometimes cut near the breast
    edge with a modest (< 35%) dark region, the borderline case the filter must keep.
    """
    label = int(label)
    if label not in SOURCE_LABELS:
        raise UserError(f"The class label must be one of 0-4, got {label}.")
    if background and label != 0:
        raise UserError("Only normal patches (label 0) can be planted as film background.")
    img = _tissue(size, rng)
    if label in MASSES:
        _LESIONS[label](img, rng)
    _soft_cap(img)  # tissue and masses stay below saturation ...
    if label in CALCIFICATIONS:
        _LESIONS[label](img, rng)  # ... calcifications are the brightest thing in the breast
    if background:
        film = _film_edge(img, rng, rng.uniform(0.62, 0.92))
        if rng.uniform() < LABEL_SHARE:
            _burned_label(img, rng, film)
    elif label == 0 and rng.uniform() < EDGE_SHARE:
        _film_edge(img, rng, rng.uniform(0.05, 0.28))
    return _to_uint8(img)


# ---------------------------------------------------------------- datasets


def _check_args(n: int, size: int, seed: int) -> None:
    if int(n) < 1:
        raise UserError(f"The number of patches must be at least 1, got {n}.")
    if int(size) < MIN_SIZE:
        raise UserError(f"The patch size must be at least {MIN_SIZE} pixels, got {size}.")
    if int(seed) < 0:
        raise UserError(f"The seed must be a non-negative integer, got {seed}.")


def _class_counts(n: int) -> np.ndarray:
    """Counts per class close to CLASS_SHARES, every class present once n >= 5."""
    exact = np.array(CLASS_SHARES) * n
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    if n >= len(counts):
        for k in range(1, len(counts)):
            if counts[k] == 0:  # borrow one from the largest class
                counts[np.argmax(counts)] -= 1
                counts[k] = 1
    return counts


def _group_sizes(n: int, rng) -> list[int]:
    """Patients with 2-6 patches each (a lone leftover patch joins a neighbour)."""
    sizes, left = [], n
    while left > 0:
        g = min(int(rng.integers(2, 7)), left)
        if left - g == 1:
            g = g + 1 if g == 2 else g - 1
        sizes.append(g)
        left -= g
    return sizes


def _split_index(split: str) -> int:
    if split not in store.SPLITS:
        raise UserError(f"The split must be one of {', '.join(store.SPLITS)}, got {split!r}.")
    return store.SPLITS.index(split)


def generate(n: int, size: int, seed: int, split: str) -> tuple[list[np.ndarray], pd.DataFrame]:
    """n patches and their table (filename, y, patient_id, background, view, breast_density).

    The split takes part in the seed, so train and test differ for the same seed.
    Patient numbers are odd in train and even in test (P_00001, P_00003, ... vs
    P_00002, ...): disjoint between splits for any n, with the DDSM naming kept.
    Each patch has its own generator (seeded by seed, split, row), so any one can
    be regenerated alone.
    """
    _check_args(n, size, seed)
    s = _split_index(split)
    rng = np.random.default_rng([seed, s])
    labels = rng.permutation(np.repeat(list(SOURCE_LABELS), _class_counts(n)))
    normals = np.flatnonzero(labels == 0)
    background = np.zeros(n, dtype=bool)
    background[rng.choice(normals, round(BACKGROUND_SHARE * len(normals)), replace=False)] = True

    filenames, patients = [], []
    for j, group in enumerate(_group_sizes(n, rng)):
        patient = f"P_{2 * j + 1 + s:05d}"
        side = rng.choice(["LEFT", "RIGHT"])
        for k in range(1, group + 1):
            filenames.append(f"{patient}_{side}_{rng.choice(['CC', 'MLO'])}_{k}.png")
            patients.append(patient)

    images = [
        make_patch(labels[i], size, np.random.default_rng([seed, s, i]), bool(background[i])) for i in range(n)
    ]
    table = pd.DataFrame({"filename": filenames, "y": labels.astype(int), "patient_id": patients, "background": background})
    return images, table.assign(**_metadata(table, seed, s))


def _metadata(table: pd.DataFrame, seed: int, split_index: int) -> dict[str, pd.Series]:
    """Metadata columns for slices: the view (from the file name) and a breast density (1-4) per patient,
    drawn from its own generator so the patches stay what they were without it."""
    rng = np.random.default_rng([seed, split_index, 1_000_003])
    patients = table["patient_id"].unique()
    density = dict(zip(patients, rng.choice([1, 2, 3, 4], len(patients), p=[0.1, 0.4, 0.4, 0.1])))
    return {"view": table["filename"].str.extract(r"_(CC|MLO)_", expand=False),
            "breast_density": table["patient_id"].map(density).astype(int)}


def write_seed_csv(out_dir, n_train: int, n_test: int, size: int = 128, seed: int = 0) -> pd.DataFrame:
    """The seed notebook's layout: train.csv/test.csv (filename,y,patient_id, and the metadata columns view and
    breast_density) + PNG folders.

    Returns the truth table (filename, y, patient_id, background, view, breast_density, split).
    """
    out = Path(out_dir)
    truth = []
    for split, n in zip(store.SPLITS, (n_train, n_test)):
        images, table = generate(n, size, seed, split)
        folder = out / f"{split}_images"
        folder.mkdir(parents=True, exist_ok=True)
        for name, img in zip(table["filename"], images):
            Image.fromarray(img).save(folder / name)  # 2-D uint8 -> 8-bit grayscale ("L") PNG
        table[["filename", "y", "patient_id", "view", "breast_density"]].to_csv(out / f"{split}.csv", index=False)
        truth.append(table.assign(split=split))
    return pd.concat(truth, ignore_index=True)


def _example(tf, img: np.ndarray, label: int, filename: str):
    def int64(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    def raw(b):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))

    features = {
        "label": int64(label),
        "label_normal": int64(0 if label == 0 else 1),
        "image": raw(np.ascontiguousarray(img, dtype=np.uint8).tobytes()),  # size x size x 1, row-major
        "filename": raw(filename.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


def write_kaggle(out_dir, n_train: int, n_test: int, size: int = 128, seed: int = 0) -> pd.DataFrame:
    """The public DDSM patch release's layout (at `size`, not 299).

    Train: training10_0..4.tfrecords, rows dealt round-robin (all five non-empty
    once n_train >= 5). Test: cv10_data/labels.npy (normals and masses) and
    test10_data/labels.npy (normals and calcifications), normals alternating
    between the two. The release has no test filenames; the truth table names a
    test row `<file>_<row:05d>.png` (e.g. cv10_00003.png, row 3 of
    cv10_data.npy): the name an importer should give it. Test patient_id is the
    generator's truth and is not in the files.
    """
    import tensorflow as tf  # lazily: tensorflow is slow to import and only this writer needs it

    _check_args(n_test, size, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, train = generate(n_train, size, seed, "train")
    writers = [tf.io.TFRecordWriter(str(out / name)) for name in kaggle.TFRECORDS]
    try:
        for i, (img, label, name) in enumerate(zip(images, train["y"], train["filename"])):
            writers[i % len(writers)].write(_example(tf, img, label, name).SerializeToString())
    finally:
        for writer in writers:
            writer.close()

    images, test = generate(n_test, size, seed, "test")
    normal_rank = (test["y"] == 0).cumsum()
    in_cv10 = test["y"].isin(MASSES) | ((test["y"] == 0) & (normal_rank % 2 == 1))
    test = test.copy()
    for stem, mask in (("cv10", in_cv10), ("test10", ~in_cv10)):
        rows = np.flatnonzero(mask.to_numpy())
        data = np.stack([images[i] for i in rows]) if len(rows) else np.zeros((0, size, size), np.uint8)
        np.save(out / f"{stem}_data.npy", data[..., None].astype(np.uint8))
        np.save(out / f"{stem}_labels.npy", test["y"].to_numpy()[rows].astype(np.int64))
        test.loc[mask, "filename"] = [f"{stem}_{j:05d}.png" for j in range(len(rows))]
    return pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)


def write(out_dir, fmt: str, n_train: int, n_test: int, size: int = 128, seed: int = 0) -> pd.DataFrame:
    """Write a synthetic patch dataset in `fmt` (one of store.PATCH_FORMATS; CBIS-DDSM trees: synth_cbis.write);
    returns the truth table."""
    if fmt not in store.PATCH_FORMATS:
        raise UserError(f"The synthetic format must be one of {', '.join(store.PATCH_FORMATS)}, got {fmt!r}.")
    _check_args(n_train, size, seed)
    _check_args(n_test, size, seed)
    writer = write_seed_csv if fmt == store.SEED_CSV else write_kaggle
    return writer(out_dir, n_train, n_test, size=size, seed=seed)
