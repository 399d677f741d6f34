"""Importer for the public DDSM patch release (Kaggle "DDSM mammography").

Train split: training10_0..4.tfrecords, records with `label` (0-4), `label_normal`,
`image` (raw uint8 bytes of a square 1-channel patch) and optionally `filename`.
Test split: cv10_data/labels.npy joined with test10_data/labels.npy (the release
put masses in one and calcifications in the other). Every patch is written as a
PNG under the dataset's folder so every view can show it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import workspace
from ..errors import UserError
from . import checks, noise, store
from .images import write_png

TFRECORDS = [f"training10_{i}.tfrecords" for i in range(5)]
TEST_PARTS = ("cv10", "test10")


def _required_files(source: Path) -> list[str]:
    names = TFRECORDS + [f"{part}_{kind}.npy" for part in TEST_PARTS for kind in ("data", "labels")]
    return [name for name in names if not (source / name).is_file()]


def _parse_record(raw: bytes) -> dict:
    import tensorflow as tf  # heavy; only the kaggle importer needs it

    example = tf.train.Example.FromString(raw)
    features = example.features.feature

    def first(key, kind):
        values = getattr(features[key], kind).value if key in features else []
        return values[0] if values else None

    return {"label": first("label", "int64_list"), "label_normal": first("label_normal", "int64_list"),
            "image": first("image", "bytes_list"), "filename": first("filename", "bytes_list")}


def _record_problem(record: dict) -> tuple[np.ndarray | None, str | None]:
    label, reason = checks.parse_label(record["label"])
    if reason:
        return None, reason
    if record["label_normal"] is not None and int(record["label_normal"]) != int(label > 0):
        return None, f"label_normal {record['label_normal']} disagrees with label {label}"
    data = record["image"]
    if data is None:
        return None, "no image feature"
    side = math.isqrt(len(data))
    if side * side != len(data) or side < 32:
        return None, f"image is {len(data)} bytes, not a square uint8 patch of at least 32x32"
    return np.frombuffer(data, dtype=np.uint8).reshape(side, side), None


def _patch_row(image: np.ndarray, relative: str, filename: str, label: int, split: str, group: str) -> dict:
    return {"path": relative, "filename": filename, "label": label, "split": split, "group": group,
            "width": image.shape[1], "height": image.shape[0], "channels": 1} | noise.patch_stats(image)


def _read_training(source: Path, staging: Path) -> tuple[list[dict], list[dict]]:
    import tensorflow as tf

    rows, bad, seen = [], [], {}
    for file_index, name in enumerate(TFRECORDS):
        record_index = -1
        try:
            for record_index, raw in enumerate(tf.data.TFRecordDataset(str(source / name)).as_numpy_iterator()):
                where = f"{name} record {record_index}"
                record = _parse_record(raw)
                given = record["filename"].decode("utf-8", "replace") if record["filename"] else ""
                filename = Path(given).name or f"training10_{file_index}_{record_index:05d}.png"
                image, reason = _record_problem(record)
                if reason is None and filename.casefold() in seen:  # case-only differences clash on many disks
                    reason = f"duplicate filename {filename} (first at {seen[filename.casefold()]}, ignoring case)"
                seen.setdefault(filename.casefold(), where)
                if reason:
                    bad.append({"where": where, "file": filename, "reason": reason})
                    continue
                png = filename if filename.lower().endswith(".png") else f"{filename}.png"
                relative = f"images/train/{png}"
                write_png(staging / relative, image)
                label = int(record["label"])
                rows.append(_patch_row(image, relative, filename, label, "train", store.group_from_filename(filename)))
        except tf.errors.DataLossError:
            bad.append({"where": f"{name} record {record_index + 1}", "file": name,
                        "reason": "corrupted tfrecord file: this record and the rest of the file are unreadable"})
    return rows, bad


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UserError(f"{path.name}: not a readable .npy file ({error})") from None


def _read_test_part(source: Path, part: str, staging: Path) -> tuple[list[dict], list[dict]]:
    data, labels = _load_npy(source / f"{part}_data.npy"), _load_npy(source / f"{part}_labels.npy")
    if data.dtype != np.uint8 or data.ndim not in (3, 4) or (data.ndim == 4 and data.shape[3] != 1):
        raise UserError(f"{part}_data.npy: shape {data.shape} dtype {data.dtype}, expected uint8 (n, H, W, 1)")
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{part}_labels.npy: {labels.shape} labels for {len(data)} patches in {part}_data.npy")
    rows, bad = [], []
    for index in range(len(data)):
        filename = f"{part}_{index:05d}.png"
        label, reason = checks.parse_label(labels[index])
        if reason:
            bad.append({"where": f"{part}_labels.npy row {index}", "file": filename, "reason": reason})
            continue
        image = np.asarray(data[index]).reshape(data.shape[1], data.shape[2])
        relative = f"images/test/{filename}"
        write_png(staging / relative, image)
        rows.append(_patch_row(image, relative, filename, label, "test", Path(filename).stem))
    return rows, bad


def import_kaggle(root, name: str, source, skip_bad: bool = False, replace: bool = False) -> store.Dataset:
    root = workspace.workspace_root(root)
    source = Path(source)
    store.check_new_name(root, name, replace)
    if not source.is_dir():
        raise UserError(f"{source}: source folder not found")
    missing = _required_files(source)
    if missing:
        raise UserError(f"{source}: missing {', '.join(missing)} (the DDSM patch release has all of "
                        f"training10_0..4.tfrecords, cv10_data/labels.npy and test10_data/labels.npy)")
    with store.staging(root, name) as staging:
        rows, bad = _read_training(source, staging)
        for part in TEST_PARTS:
            part_rows, part_bad = _read_test_part(source, part, staging)
            rows, bad = rows + part_rows, bad + part_bad
        store.refuse_or_record(bad, rows, skip_bad)
        return store.save(root, name, store.KAGGLE, {"source": str(source.resolve())},
                          pd.DataFrame(rows), bad, staging, replace)
