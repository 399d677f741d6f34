"""Importer for the seed analysis' layout: a CSV of `filename,y` per split plus an image folder.

Images stay where they are; the manifest records their absolute paths.
Everything is validated before anything is written.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from .. import workspace
from ..errors import UserError
from . import checks, noise, store
from .images import read_image, to_gray

GROUP_COLUMNS = ("patient_id", "group", "patient", "mammogram_id", "mammogram", "source_image")
RESERVED = {"path", "label", "split", "width", "height", "channels", "dark_fraction",
            "saturated_block", "noisy", "target"}


def read_csv(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: file not found")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise UserError(f"{csv_path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    missing = [column for column in ("filename", "y") if column not in frame.columns]
    if missing:
        raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)} (expected filename,y)")
    return frame


def _inspect(path: Path) -> dict | str:
    """Decode one image; its size and noise statistics, or the reason it is unusable."""
    try:
        array = read_image(path)
    except ValueError as error:
        return str(error)
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    return {"width": width, "height": height, "channels": channels} | noise.patch_stats(to_gray(array))


def _split_rows(split: str, csv_path: Path, folder: Path) -> tuple[list[dict], list[dict]]:
    frame = read_csv(csv_path)
    group_column = next((c for c in GROUP_COLUMNS if c in frame.columns), None)
    extras = [c for c in frame.columns if c not in ("filename", "y") and c not in RESERVED]
    rows, bad, first_line = [], [], {}
    for index, record in frame.iterrows():
        where = f"{csv_path.name} line {index + 2}"
        name = record["filename"]
        label, reason = checks.parse_label(record["y"])
        path = None
        if reason is None:
            path, reason = checks.resolve_inside(folder, name)
        if reason is None and name in first_line:
            reason = f"duplicate filename (first on line {first_line[name]})"
        first_line.setdefault(name, index + 2)
        if reason:
            bad.append({"where": where, "file": name, "reason": reason})
            continue
        group = record[group_column] if group_column and record[group_column] else store.group_from_filename(name)
        rows.append({"where": where, "file": name, "path": str(path), "filename": name, "label": label,
                     "split": split, "group": str(group)} | {c: record[c] for c in extras})
    return rows, bad


def _decode_all(rows: list[dict]) -> list[dict]:
    """Decode every image in parallel threads (Pillow releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda row: _inspect(Path(row["path"])), rows))
    bad = []
    for row, result in zip(rows, results):
        if isinstance(result, str):
            bad.append({"where": row["where"], "file": row["file"], "reason": result})
        else:
            row.update(result)
    return bad


def _cross_split_duplicates(rows: list[dict]) -> list[dict]:
    """The same image file in train and test would leak the answer into training."""
    seen, bad = {}, []
    for row in rows:
        other = seen.setdefault(row["path"], row)
        if other is not row and other["split"] != row["split"]:
            bad.append({"where": row["where"], "file": row["file"],
                        "reason": f"the same image is also in the {other['split']} split ({other['where']})"})
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
    bad += _decode_all(rows)
    bad += _cross_split_duplicates(rows)
    bad_wheres = {entry["where"] for entry in bad}
    good = [row for row in rows if row["where"] not in bad_wheres]
    store.refuse_or_record(bad, good, skip_bad)
    manifest = pd.DataFrame(good).drop(columns=["where", "file"])
    source = {"train_csv": str(Path(train_csv).resolve()), "train_images": str(Path(train_images).resolve()),
              "test_csv": str(Path(test_csv).resolve()), "test_images": str(Path(test_images).resolve())}
    with store.staging(root, name) as staging:
        return store.save(root, name, store.SEED_CSV, source, manifest, bad, staging, replace)
