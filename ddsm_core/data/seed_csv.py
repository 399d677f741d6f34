"""Importer for the seed analysis' layout: a CSV of `filename,y` per split plus an image folder.

Images stay where they are; the manifest records their absolute paths. A 16-bit grayscale PNG is the exception:
it is mapped to 8 bits by the one 16-bit rule (images.SIXTEEN_BIT_TRANSFORM, recorded in dataset.json) and
written into the dataset's images/ folder. Everything is validated before anything is written; a patch is in
one split only, and file names are unique even ignoring case (they name the patch everywhere).
"""
from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import workspace
from ..errors import UserError
from . import checks, noise, store
from .images import SIXTEEN_BIT_TRANSFORM, read_pixels, to_8bit, to_gray, window_of, write_png

GROUP_COLUMNS = ("patient_id", "group", "patient", "mammogram_id", "mammogram", "source_image")
RESERVED = {"path", "label", "split", "width", "height", "channels", "dark_fraction",
            "saturated_block", "noisy", "target"}


def read_csv(csv_path: Path) -> pd.DataFrame:
    """The CSV as text columns; UTF-8 with or without a byte-order mark, one header line with unique names."""
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: file not found")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{csv_path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                        f"{error.start}): save it as UTF-8") from None
    header = next(csv.reader(io.StringIO(text)), None)
    if not header:
        raise UserError(f"{csv_path}: empty file (expected a header line filename,y and one line per patch)")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f"{csv_path}: column(s) {', '.join(repeated)} appear more than once in the header")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        raise UserError(f"{csv_path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    missing = [column for column in ("filename", "y") if column not in frame.columns]
    if missing:
        raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)} (expected filename,y)")
    return frame


def _inspect(row: dict, staging: Path) -> dict | str:
    """Decode one image; its size and noise statistics (and new path when converted from 16 bits), or the
    reason it is unusable."""
    try:
        array = read_pixels(row["path"])
    except ValueError as error:
        return str(error)
    converted = {}
    if array.dtype == np.uint16:
        array = to_8bit(array, window_of(array))
        relative = f"images/{row['split']}/{Path(row['filename']).with_suffix('.png')}"
        write_png(staging / relative, array)
        converted = {"path": relative}
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    return {"width": width, "height": height, "channels": channels} | noise.patch_stats(to_gray(array)) | converted


def _split_rows(split: str, csv_path: Path, folder: Path) -> tuple[list[dict], list[dict]]:
    frame = read_csv(csv_path)
    group_column = next((c for c in GROUP_COLUMNS if c in frame.columns), None)
    extras = [c for c in frame.columns if c not in ("filename", "y") and c not in RESERVED]
    rows, bad = [], []
    for index, record in frame.iterrows():
        where = f"{csv_path.name} line {index + 2}"
        name = record["filename"]
        label, reason = checks.parse_label(record["y"])
        path = None
        if reason is None:
            path, reason = checks.resolve_inside(folder, name)
        if reason:
            bad.append({"where": where, "file": name, "reason": reason})
            continue
        group = record[group_column] if group_column and record[group_column] else store.group_from_filename(name)
        rows.append({"where": where, "file": name, "path": str(path), "filename": name, "label": label,
                     "split": split, "group": str(group)} | {c: record[c] for c in extras})
    return rows, bad


def _clashes(rows: list[dict]) -> list[dict]:
    """Rows that repeat an earlier one: the same image file or file name (in either split), or a file name
    that differs only by case (one patch on a case-insensitive disk, and verdicts find patches by name)."""
    first_by = {"path": {}, "name": {}, "folded": {}}
    bad = []
    for row in rows:
        keys = {"path": row["path"], "name": row["filename"], "folded": row["filename"].casefold()}
        earlier = next(((kind, first_by[kind][key]) for kind, key in keys.items() if key in first_by[kind]), None)
        for kind, key in keys.items():
            first_by[kind].setdefault(key, row)
        if earlier:
            bad.append({"where": row["where"], "file": row["file"], "reason": _clash_reason(row, *earlier)})
    return bad


def _clash_reason(row: dict, kind: str, first: dict) -> str:
    if first["split"] != row["split"]:
        what = "image" if kind == "path" else "file name"
        return f"the same {what} is also in the {first['split']} split ({first['where']}): a patch is in one split only"
    if kind == "folded":
        return f"file name differs only by case from {first['filename']} ({first['where']})"
    return f"duplicate filename (first on {first['where'].split(' ', 1)[1]})"


def _decode_all(rows: list[dict], staging: Path) -> list[dict]:
    """Decode every image in parallel threads (Pillow releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda row: _inspect(row, staging), rows))
    bad = []
    for row, result in zip(rows, results):
        if isinstance(result, str):
            bad.append({"where": row["where"], "file": row["file"], "reason": result})
        else:
            row.update(result)
    return bad


def import_seed_csv(root, name: str, train_csv, train_images, test_csv, test_images,
                    skip_bad: bool = False, replace: bool = False) -> store.Dataset:
    root = workspace.workspace_root(root)
    store.check_new_name(root, name, replace)
    rows, bad = [], []
    for split, csv_path, folder in (("train", train_csv, train_images), ("test", test_csv, test_images)):
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"{folder}: image folder not found")
        split_rows, split_bad = _split_rows(split, Path(csv_path), folder)
        rows += split_rows
        bad += split_bad
    clashes = _clashes(rows)
    clashing = {entry["where"] for entry in clashes}
    rows = [row for row in rows if row["where"] not in clashing]
    source = {"train_csv": str(Path(train_csv).resolve()), "train_images": str(Path(train_images).resolve()),
              "test_csv": str(Path(test_csv).resolve()), "test_images": str(Path(test_images).resolve())}
    with store.staging(root, name) as staging:
        bad += clashes + _decode_all(rows, staging)
        bad_wheres = {entry["where"] for entry in bad}
        good = [row for row in rows if row["where"] not in bad_wheres]
        store.refuse_or_record(bad, good, skip_bad)
        manifest = pd.DataFrame(good).drop(columns=["where", "file"])
        converted = int((~manifest["path"].map(lambda p: Path(p).is_absolute())).sum())
        if converted:
            source["sixteen_bit"] = SIXTEEN_BIT_TRANSFORM | {"converted_patches": converted}
        return store.save(root, name, store.SEED_CSV, source, manifest, bad, staging, replace)
