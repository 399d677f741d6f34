"""The reliability suite: bad input to every importer and every CLI command that takes user input, processes
killed with SIGKILL at random moments, and a full disk during each kind of write.

Every bad-input case is a small mutation of good data and must end with an error line naming the file or row
and the reason, a non-zero exit status, no traceback, and the workspace byte-for-byte as it was. The suite
records each outcome; when the whole module runs, docs/RELIABILITY.md is written from those records (the
table of what is tried and what is promised).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ddsm_core import runs, synth, verdicts, workspace
from ddsm_core.data import store
from ddsm_core.data.images import SIXTEEN_BIT_TRANSFORM, to_8bit, window_of
from support import PROJECT, cli, cli_env, edit_csv, seed_csv_args, snapshot

pytestmark = pytest.mark.slow
DOC = PROJECT / "docs" / "RELIABILITY.md"
RECORDS: dict[str, dict] = {}  # case id -> {"section", "tried", "promise", "passed"}


# ---------------------------------------------------------------- good data every case mutates

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Good sources (seed CSV, Kaggle release) and a workspace holding a dataset and an untrained run."""
    from ddsm_core.config import RunConfig
    from ddsm_core.data.seed_csv import import_seed_csv

    base = tmp_path_factory.mktemp("reliability")
    synth.write_seed_csv(base / "seed", n_train=40, n_test=20, size=48, seed=3)
    synth.write_kaggle(base / "kaggle", n_train=30, n_test=20, size=48, seed=4)
    root = base / "workspace"
    import_seed_csv(root, "base", base / "seed/train.csv", base / "seed/train_images", base / "seed/test.csv",
                    base / "seed/test_images")
    run_id = runs.create_run(root, RunConfig(dataset="base", task=0, backbone="small_cnn", epochs=1, image_size=32))
    return {"seed": base / "seed", "kaggle": base / "kaggle", "root": root, "run": run_id}


@dataclass
class Case:
    id: str
    tried: str  # what is wrong, as a person would say it
    mutate: Callable[[Path, dict], list]  # (private copy of the sources, good) -> CLI arguments
    where: str | Callable[[dict], str]  # the error line names this (file, row, argument; or good -> it)
    reason: str  # and says this


def _set(path: Path, column: str, row: int, value) -> None:
    edit_csv(path, lambda f: f.__setitem__(column, f[column].where(f.index != row, value)))


def _name(src: Path, split: str, row: int) -> str:
    return pd.read_csv(src / "seed" / f"{split}.csv", dtype=str)["filename"][row]


def _seed(src: Path, good: dict) -> list:
    return seed_csv_args("new", src / "seed", good["root"])


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height in its header and carries no pixel data (a 'bomb' costs nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def _mutating(edit: Callable[[Path], None]) -> Callable[[Path, dict], list]:
    def mutate(src: Path, good: dict) -> list:
        edit(src)
        return _seed(src, good)
    return mutate


def _image(src: Path, split: str, row: int) -> Path:
    return src / "seed" / f"{split}_images" / _name(src, split, row)


def _same_name_in_both_splits(src: Path) -> None:
    name = _name(src, "train", 0)
    shutil.copy(src / "seed/train_images" / name, src / "seed/test_images" / name)
    edit_csv(src / "seed/test.csv", lambda f: f.__setitem__("filename", f["filename"].where(f.index != 2, name)))


def _case_collision(src: Path) -> None:
    name = _name(src, "train", 3)
    shutil.copy(src / "seed/train_images" / name, src / "seed/train_images" / name.lower())
    edit_csv(src / "seed/train.csv", lambda f: f.loc.__setitem__(len(f), [name.lower()] + list(f.iloc[3, 1:])))


def _symlink_out(src: Path) -> None:
    outside = src / "outside.png"
    shutil.copy(_image(src, "train", 4), outside)
    link = src / "seed/train_images/link.png"
    link.symlink_to(outside)
    _set(src / "seed/train.csv", "filename", 4, "link.png")


def _palette_gif(src: Path) -> None:
    Image.new("P", (48, 48), 3).save(src / "seed/train_images/palette.gif")
    _set(src / "seed/train.csv", "filename", 6, "palette.gif")


def _non_utf8(src: Path) -> None:
    text = (src / "seed/test.csv").read_text(encoding="utf-8")
    (src / "seed/test.csv").write_bytes(text.replace("P_", "P\xe9_", 1).encode("latin-1"))


def _duplicated_header(src: Path) -> None:
    lines = (src / "seed/train.csv").read_text().splitlines()
    lines = [lines[0] + ",y"] + [line + "," + line.split(",")[1] for line in lines[1:]]
    (src / "seed/train.csv").write_text("\n".join(lines) + "\n")


def _kaggle(src: Path, good: dict) -> list:
    return ["import", "kaggle", "--workspace", good["root"], "--name", "new", "--source", src / "kaggle"]


def _kaggle_mutating(edit: Callable[[Path], None]) -> Callable[[Path, dict], list]:
    def mutate(src: Path, good: dict) -> list:
        edit(src / "kaggle")
        return _kaggle(src, good)
    return mutate


def _append_record(path: Path, label: int, image: bytes, label_normal: int | None = None) -> None:
    import tensorflow as tf

    feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
               "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    if label_normal is not None:
        feature["label_normal"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label_normal]))
    records = [bytes(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records + [tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()]:
            writer.write(record)


def _npy_edit(name: str, edit) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        np.save(folder / name, edit(np.load(folder / name)))
    return change


def _labels_with(value: int) -> Callable[[np.ndarray], np.ndarray]:
    def edit(labels: np.ndarray) -> np.ndarray:
        labels = labels.copy()
        labels[1] = value
        return labels
    return edit


def _cbis(layout: str, bad: tuple = (), edit: Callable[[Path], None] | None = None) -> Callable[[Path, dict], list]:
    """A small CBIS-DDSM tree in `layout`, with one planted bad row (synth_cbis's kinds) or an edit of its files."""
    def mutate(src: Path, good: dict) -> list:
        from ddsm_core import synth_cbis

        synth_cbis.write(src / "cbis", layout, n_images=6, seed=5, bad=bad)
        if edit:
            edit(src / "cbis")
        return ["import", "cbis-ddsm", "--workspace", good["root"], "--name", "new", "--source", src / "cbis",
                "--patch-size", "64"]
    return mutate


def _first_case_csv(folder: Path) -> Path:
    return sorted(folder.rglob("mass_case_description_train_set.csv"))[0]


def _review_file(src: Path, good: dict, rows: list[dict], header: str = ",".join(verdicts.COLUMNS)) -> list:
    path = src / "verdicts.csv"
    lines = [header] + [",".join(str(row.get(c, "")) for c in header.split(",")) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return ["review", "import", "--workspace", good["root"], "--dataset", "base", "--file", path]


def _private_copy(good: dict, tmp_path: Path) -> Path:
    """A copy of the good workspace for a test that writes to it."""
    root = tmp_path / "ws"
    shutil.copytree(good["root"], root)
    return root


def _patch(good: dict) -> str:
    return store.load(good["root"], "base").manifest["filename"].iloc[0]


def _train(good: dict, *extra) -> list:
    return ["train", "--workspace", good["root"], "--dataset", "base", "--task", "0", "--backbone", "small_cnn",
            "--epochs", "1", "--image-size", "32", "--no-evaluate", *extra]


BAD_INPUT = [
    # ---- seed-csv importer
    Case("seed-missing-column", "seed CSV without its y column",
         _mutating(lambda s: edit_csv(s / "seed/train.csv", lambda f: f.rename(columns={"y": "label"}, inplace=True))),
         "train.csv", "missing column(s) y"),
    Case("seed-empty-csv", "empty test CSV (0 bytes)",
         _mutating(lambda s: (s / "seed/test.csv").write_bytes(b"")), "test.csv", "empty file"),
    Case("seed-duplicate-row", "a row repeated",
         _mutating(lambda s: _set(s / "seed/train.csv", "filename", 9, _name(s, "train", 2))),
         "train.csv line 11", "duplicate filename (first on line 4)"),
    Case("seed-negative-label", "label -1", _mutating(lambda s: _set(s / "seed/test.csv", "y", 4, "-1")),
         "test.csv line 6", "is not an integer 0-4"),
    Case("seed-fractional-label", "label 2.5", _mutating(lambda s: _set(s / "seed/test.csv", "y", 4, "2.5")),
         "test.csv line 6", "is not an integer 0-4"),
    Case("seed-empty-label", "empty label", _mutating(lambda s: _set(s / "seed/train.csv", "y", 0, "")),
         "train.csv line 2", "is not an integer 0-4"),
    Case("seed-label-out-of-range", "label 5", _mutating(lambda s: _set(s / "seed/train.csv", "y", 1, "5")),
         "train.csv line 3", "is not an integer 0-4"),
    Case("seed-empty-filename", "empty file name", _mutating(lambda s: _set(s / "seed/train.csv", "filename", 5, "")),
         "train.csv line 7", "empty filename"),
    Case("seed-folder-as-filename", "a folder named as the image",
         _mutating(lambda s: ((s / "seed/train_images/sub").mkdir(), _set(s / "seed/train.csv", "filename", 5, "sub"))),
         "train.csv line 7", "is a folder, not an image file"),
    Case("seed-missing-file", "image file missing", _mutating(lambda s: _image(s, "test", 3).unlink()),
         "test.csv line 5", "file not found"),
    Case("seed-traversal", "file name climbing out with ..",
         _mutating(lambda s: _set(s / "seed/train.csv", "filename", 2, "../test_images/x.png")),
         "train.csv line 4", "path leaves the image folder"),
    Case("seed-symlink-out", "a symlink pointing out of the image folder", _mutating(_symlink_out),
         "train.csv line 6", "path leaves the image folder (through a link)"),
    Case("seed-truncated-png", "PNG cut in half",
         _mutating(lambda s: _image(s, "train", 7).write_bytes(_image(s, "train", 7).read_bytes()[:200])),
         "train.csv line 9", "not a decodable image"),
    Case("seed-empty-png", "PNG of 0 bytes", _mutating(lambda s: _image(s, "train", 8).write_bytes(b"")),
         "train.csv line 10", "not a decodable image"),
    Case("seed-zero-sized-png", "PNG declaring 0 x 48 pixels", _mutating(lambda s: _png_header_only(_image(s, "test", 1), 0, 48)),
         "test.csv line 3", "not a decodable image"),
    Case("seed-oversized-png", "PNG of 20,000 x 20,000 pixels (Pillow's decompression bomb)",
         _mutating(lambda s: _png_header_only(_image(s, "test", 2), 20_000, 20_000)),
         "test.csv line 4", "image too large to be a patch"),
    Case("seed-large-png", "PNG of 5,000 x 5,000 pixels (under Pillow's limit, far over a patch)",
         _mutating(lambda s: _png_header_only(_image(s, "test", 2), 5_000, 5_000)),
         "test.csv line 4", "too large to be a patch"),
    Case("seed-palette-gif", "a palette GIF", _mutating(_palette_gif), "train.csv line 8", "unsupported image mode P"),
    Case("seed-same-name-both-splits", "one file name in train.csv and test.csv (from the two image folders)",
         _mutating(_same_name_in_both_splits), "test.csv line 4", "also in the train split"),
    Case("seed-case-collision", "two file names that differ only by case", _mutating(_case_collision),
         "train.csv line 42", "differs only by case"),
    Case("seed-non-utf8", "a CSV in Latin-1", _mutating(_non_utf8), "test.csv", "not UTF-8 text"),
    Case("seed-duplicated-header", "a column named twice in the header", _mutating(_duplicated_header),
         "train.csv", "appear more than once in the header"),
    Case("seed-no-image-folder", "image folder missing",
         _mutating(lambda s: shutil.rmtree(s / "seed/test_images")), "test_images", "image folder not found"),
    Case("seed-bad-name", "dataset name with a path in it",
         lambda s, g: ["import", "seed-csv", *seed_csv_args("../evil", s / "seed", g["root"])[2:]],
         "'../evil'", "is not valid"),
    Case("seed-existing-name", "dataset name already taken", lambda s, g: seed_csv_args("base", s / "seed", g["root"]),
         "'base'", "already exists"),
    # ---- kaggle importer
    Case("kaggle-label-out-of-range", "tfrecord label 7",
         _kaggle_mutating(lambda k: _append_record(k / "training10_1.tfrecords", 7, bytes(48 * 48))),
         "training10_1.tfrecords record", "not an integer 0-4"),
    Case("kaggle-tfrecord-wrong-dimensions", "tfrecord image of 100 bytes (not a square patch)",
         _kaggle_mutating(lambda k: _append_record(k / "training10_2.tfrecords", 2, bytes(100))),
         "training10_2.tfrecords record", "not a square uint8 patch"),
    Case("kaggle-label-normal-disagrees", "tfrecord label 3 with label_normal 0",
         _kaggle_mutating(lambda k: _append_record(k / "training10_0.tfrecords", 3, bytes(48 * 48), 0)),
         "training10_0.tfrecords record", "label_normal 0 disagrees"),
    Case("kaggle-truncated-tfrecord", "tfrecord file cut short",
         _kaggle_mutating(lambda k: (k / "training10_3.tfrecords").write_bytes(
             (k / "training10_3.tfrecords").read_bytes()[:-10])),
         "training10_3.tfrecords record", "corrupted tfrecord file"),
    Case("kaggle-npy-wrong-dimensions", "test patches of 3 channels in the npy",
         _kaggle_mutating(_npy_edit("cv10_data.npy", lambda a: np.repeat(a.reshape(*a.shape[:3], 1), 3, axis=3))),
         "cv10_data.npy", "expected uint8 (n, H, W, 1)"),
    Case("kaggle-npy-label-out-of-range", "npy label 9", _kaggle_mutating(_npy_edit("test10_labels.npy", _labels_with(9))),
         "test10_labels.npy row 1", "not an integer 0-4"),
    Case("kaggle-npy-label-count", "fewer labels than patches",
         _kaggle_mutating(_npy_edit("cv10_labels.npy", lambda a: a[:-1])), "cv10_labels.npy", "labels for"),
    Case("kaggle-npy-not-npy", "an npy file that is text",
         _kaggle_mutating(lambda k: (k / "test10_data.npy").write_text("not numpy")), "test10_data.npy",
         "not a readable .npy file"),
    Case("kaggle-missing-file", "a tfrecord file missing",
         _kaggle_mutating(lambda k: (k / "training10_4.tfrecords").unlink()), "kaggle", "missing training10_4.tfrecords"),
    # ---- cbis-ddsm importer (one planted bad row each; the first abnormality is line 2 of the mass train CSV)
    Case("cbis-missing-series", "ROI series folder missing (TCIA)", _cbis("tcia", ("missing",)),
         "mass_case_description_train_set.csv line 2", "series folder not found"),
    Case("cbis-unreadable-dicom", "ROI mask file is not DICOM (TCIA)", _cbis("tcia", ("unreadable",)),
         "mass_case_description_train_set.csv line 2", "not a readable DICOM image"),
    Case("cbis-mask-size", "ROI mask 8 rows shorter than its mammogram (TCIA)", _cbis("tcia", ("mask_size",)),
         "mass_case_description_train_set.csv line 2", "but its full mammogram is"),
    Case("cbis-empty-mask", "ROI mask all zero (TCIA)", _cbis("tcia", ("empty_mask",)),
         "mass_case_description_train_set.csv line 2", "mask is empty"),
    Case("cbis-missing-jpeg", "ROI JPEG missing (JPEG re-release)", _cbis("jpeg", ("missing",)),
         "mass_case_description_train_set.csv line 2", "file not found"),
    Case("cbis-unknown-pathology", "pathology 'MAYBE' in a case CSV",
         _cbis("tcia", edit=lambda c: _set(_first_case_csv(c), "pathology", 0, "MAYBE")),
         "mass_case_description_train_set.csv line 2", "is not one of MALIGNANT"),
    Case("cbis-no-csvs", "a folder without the case description CSVs",
         _cbis("tcia", edit=lambda c: [p.unlink() for p in c.rglob("*_case_description_*_set.csv")]), "cbis",
         "no case description CSV found"),
    Case("cbis-patch-size", "patch size 8", lambda s, g: [*_cbis("tcia")(s, g)[:-1], "8"], "--patch-size",
         "must be at least 32"),
    # ---- commands that take user input
    Case("train-unknown-dataset", "train on a dataset that does not exist",
         lambda s, g: [*_train(g)[:4], "nope", *_train(g)[5:]], "'nope'", "no dataset named"),
    Case("train-zero-epochs", "train for 0 epochs", lambda s, g: [*_train(g), "--epochs", "0"], "epochs",
         "must be a positive whole number"),
    Case("train-tiny-images", "train at 8 pixels", lambda s, g: [*_train(g), "--image-size", "8"], "image size 8",
         "too small"),
    Case("train-learning-rate", "learning rate 5", lambda s, g: [*_train(g), "--lr", "5"], "learning rate 5",
         "is outside (0, 1)"),
    Case("train-not-a-number", "epochs given as a word", lambda s, g: [*_train(g), "--epochs", "ten"], "--epochs",
         "invalid int value"),
    Case("evaluate-unknown-run", "evaluate a run that does not exist",
         lambda s, g: ["evaluate", "--workspace", g["root"], "--run", "nope"], "nope", "no run"),
    Case("evaluate-untrained-run", "evaluate a run that never trained",
         lambda s, g: ["evaluate", "--workspace", g["root"], "--run", g["run"]], lambda g: g["run"],
         "has no best checkpoint yet"),
    Case("review-import-unknown-patch", "a verdict on a patch not in the dataset",
         lambda s, g: _review_file(s, g, [{"filename": "nope.png", "verdict": "agree", "reviewer": "dr"}]),
         "verdicts.csv line 2: nope.png", "not a patch of dataset"),
    Case("review-import-bad-verdict", "an unknown verdict",
         lambda s, g: _review_file(s, g, [{"filename": _patch(g), "verdict": "maybe", "reviewer": "dr"}]),
         "verdicts.csv line 2", "unknown verdict"),
    Case("review-import-label-out-of-range", "a relabel to 7",
         lambda s, g: _review_file(s, g, [{"filename": _patch(g), "verdict": "relabel", "new_label": 7, "reviewer": "dr"}]),
         "verdicts.csv line 2", "0-4"),
    Case("review-import-missing-column", "a verdicts file without a verdict column",
         lambda s, g: _review_file(s, g, [{"filename": _patch(g), "reviewer": "dr"}],
                                   header="filename,new_label,note,reviewer,time"),
         "verdicts.csv", "missing column(s) verdict"),
    Case("review-add-unknown-patch", "review add on a patch not in the dataset",
         lambda s, g: ["review", "add", "--workspace", g["root"], "--dataset", "base", "--filename", "nope.png",
                       "--verdict", "agree", "--reviewer", "dr"], "nope.png", "no patch with this filename"),
    Case("compare-unknown-run", "compare with a run that does not exist",
         lambda s, g: ["compare", "--workspace", g["root"], "--runs", g["run"], "nope"], "nope", "no run"),
    Case("audit-unknown-dataset", "audit a dataset that does not exist",
         lambda s, g: ["audit", "--workspace", g["root"], "--dataset", "nope"], "'nope'", "no dataset named"),
]


@contextmanager
def recorded(case_id: str, section: str, tried: str, promise: str):
    """Run the block as one row of docs/RELIABILITY.md: passed when it ends without an exception."""
    RECORDS[case_id] = {"section": section, "tried": tried, "promise": promise, "passed": False}
    yield
    RECORDS[case_id]["passed"] = True


@pytest.mark.parametrize("case", BAD_INPUT, ids=[case.id for case in BAD_INPUT])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case, good, tmp_path):
    named = "the run" if callable(case.where) else case.where
    with recorded(case.id, "Bad input", case.tried, f"refused: an error line names {named} and says "
                  f"\"{case.reason}\"; exit status non-zero, no traceback, workspace unchanged"):
        source = tmp_path / "source"
        shutil.copytree(good["seed"], source / "seed", symlinks=True)
        shutil.copytree(good["kaggle"], source / "kaggle")
        args = case.mutate(source, good)
        where = case.where(good) if callable(case.where) else case.where
        before = snapshot(good["root"])
        result = cli(*args)
        assert result.returncode != 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        lines = [line for line in result.stderr.splitlines() if "error" in line and where in line]
        assert any(case.reason in line for line in lines), result.stderr
        assert snapshot(good["root"]) == before, "a refused command must leave the workspace byte-for-byte as it was"


# ---------------------------------------------------------------- accepted, on purpose

def test_a_csv_with_a_byte_order_mark_imports_like_one_without(good, tmp_path):
    with recorded("seed-csv-with-bom", "Accepted input", "a CSV saved with a UTF-8 byte-order mark (Excel)",
                  "imported exactly as without the mark"):
        source = tmp_path / "seed"
        shutil.copytree(good["seed"], source)
        for split in ("train", "test"):
            text = (source / f"{split}.csv").read_text(encoding="utf-8")
            (source / f"{split}.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
        cli(*seed_csv_args("bom", source, tmp_path / "ws"), check=True)
        plain = store.load(good["root"], "base").manifest
        assert store.load(tmp_path / "ws", "bom").manifest["filename"].tolist() == plain["filename"].tolist()


def test_sixteen_bit_pngs_are_mapped_to_eight_bits_by_the_recorded_transform(good, tmp_path):
    with recorded("seed-16-bit-png", "Accepted input", "16-bit grayscale PNGs (DICOM exports)",
                  f"mapped to 8 bits by the one 16-bit rule ({SIXTEEN_BIT_TRANSFORM['description']}), recorded "
                  "in dataset.json under source.sixteen_bit"):
        source = tmp_path / "seed"
        shutil.copytree(good["seed"], source)
        name = _name(tmp_path, "train", 0)
        rng = np.random.default_rng(0)
        pixels = (rng.integers(0, 4096, (48, 48)) * 16).astype(np.uint16)  # 12-bit data, as DICOM exports hold
        Image.fromarray(pixels).save(source / "train_images" / name)
        cli(*seed_csv_args("wide", source, tmp_path / "ws"), check=True)
        dataset = store.load(tmp_path / "ws", "wide")
        row = dataset.manifest.set_index("filename").loc[name]
        assert not Path(row["path"]).is_absolute(), "the 8-bit copy lives in the dataset folder"
        with Image.open(dataset.folder / row["path"]) as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), to_8bit(pixels, window_of(pixels)))
        rule = dataset.info["source"]["sixteen_bit"]
        assert rule["converted_patches"] == 1
        assert {k: rule[k] for k in SIXTEEN_BIT_TRANSFORM} == SIXTEEN_BIT_TRANSFORM


# ---------------------------------------------------------------- SIGKILL at random moments

KILL_SEEDS = (11, 12, 13)
HEAD_CONFIG = dict(dataset="base", task=0, backbone="small_cnn", epochs=1, image_size=32, fine_tune="head",
                   precision="float32")


def _kill_after(process: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the process (and its children) after `seconds`; False when it had already finished."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


def _kill_midway(args: tuple, whole: float, seed: int) -> float:
    """Run the command and SIGKILL it at a seeded moment inside its run: a fraction (0.15-0.85, from seed) of
    `whole`, the seconds an uninterrupted run of it took here. A run that ends first (the machine was faster
    this time) must have succeeded, and is run again with the moment halved, so that the test always kills
    a process that is still working. Returns the moment."""
    fraction = np.random.default_rng(seed).uniform(0.15, 0.85)
    for attempt in range(4):
        moment = whole * fraction / 2**attempt
        process = _start(*args)
        if _kill_after(process, moment):
            return moment
        assert process.returncode == 0, f"the command failed by itself: {args}"
    pytest.fail(f"the command always finished before the kill, lastly at {moment:.2f} s: {args}")


def _timed(*args) -> float:
    """Seconds of an uninterrupted run of the command, as _kill_midway starts it."""
    started = time.monotonic()
    process = _start(*args)
    assert process.wait() == 0, f"the command failed: {args}"
    return time.monotonic() - started


def _start(*args, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], env=cli_env(), cwd=PROJECT, start_new_session=True,
                            stdout=stdout, stderr=subprocess.DEVNULL, text=True)


@pytest.fixture(scope="module")
def big_seed(tmp_path_factory):
    source = tmp_path_factory.mktemp("big-seed")
    synth.write_seed_csv(source, n_train=900, n_test=300, size=96, seed=8)
    return source


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_an_import_killed_at_a_random_moment_leaves_the_old_dataset_or_the_new_one(big_seed, tmp_path, seed):
    with recorded(f"kill-import-{seed}", "Faults", f"SIGKILL during `import seed-csv --replace` (seed {seed})",
                  "the previous dataset or the new one, whole; leftovers are cleaned and the import then succeeds"):
        root = tmp_path / "ws"
        args = ("-m", "ddsm_core", *seed_csv_args("data", big_seed, root))
        whole = _timed(*args)
        old = snapshot(root / "datasets" / "data")
        _kill_midway((*args, "--replace"), whole, seed)
        names = store.list_datasets(root)  # puts back a dataset renamed aside by the killed import
        assert names == ["data"], names
        now = snapshot(root / "datasets" / "data")
        # the same source imports to the same bytes, dataset.json's time aside: old or new, it must be whole
        assert {k: v for k, v in now.items() if k != store.INFO} == {k: v for k, v in old.items() if k != store.INFO}
        cli(*seed_csv_args("data", big_seed, root), "--replace", check=True)  # the same import then succeeds
        assert sorted(p.name for p in (root / "datasets").iterdir()) == ["data"], "no staging or old folder left"


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_an_evaluation_killed_at_a_random_moment_leaves_old_or_new_results_never_half(workspace_copy, seed):
    from ddsm_core.review import RunResults

    with recorded(f"kill-evaluate-{seed}", "Faults", f"SIGKILL during `evaluate --force` (seed {seed})",
                  "predictions and metrics are both the old ones or both the new ones"):
        root, run_id = workspace_copy.root, workspace_copy.run_t0
        args = ("-m", "ddsm_core", "evaluate", "--workspace", root, "--run", run_id, "--force")
        whole = _timed(*args)
        predictions, metrics = runs.predictions_file(root, run_id, "test"), runs.metrics_file(root, run_id, "test")
        marked = pd.read_parquet(predictions).assign(marker="old")  # the old pair, recognisable as one
        workspace.write_parquet(predictions, marked)
        workspace.write_json(metrics, workspace.read_json(metrics) | {"evaluated": "old"})
        _kill_midway(args, whole, seed)
        results = RunResults.load(root, run_id)
        old_predictions = "marker" in results.predictions.columns
        old_metrics = results.metrics["evaluated"] == "old"
        assert old_predictions == old_metrics, "predictions and metrics of two different evaluations"
        assert np.sum(results.metrics["confusion_matrix"]) == len(results.predictions)


def test_a_kill_between_the_two_renames_is_completed_by_the_next_reader(tmp_path, monkeypatch):
    """The narrowest moment, forced: the process dies right after the first of the two renames."""
    with recorded("kill-between-renames", "Faults", "death between the renames of an evaluation's two files",
                  "the next reader completes them from the journal: both new"):
        first, second, journal = tmp_path / "a.parquet", tmp_path / "a.json", tmp_path / ".journal.json"
        first.write_text("old a")
        second.write_text("old b")
        real_replace = os.replace

        def die_after_first(source, target):
            real_replace(source, target)
            if Path(target) == first:
                raise SystemExit("killed")
        monkeypatch.setattr(os, "replace", die_after_first)
        with pytest.raises(SystemExit):
            workspace.write_together({first: lambda t: Path(t).write_text("new a"),
                                      second: lambda t: Path(t).write_text("new b")}, journal)
        monkeypatch.setattr(os, "replace", real_replace)
        assert (first.read_text(), second.read_text()) == ("new a", "old b") and journal.exists()
        workspace.finish_together(journal)
        assert (first.read_text(), second.read_text()) == ("new a", "new b") and not journal.exists()


_WRITER = """
import sys
from ddsm_core import verdicts
root, names = sys.argv[1], sys.argv[2:]
for i in range(10_000):
    verdicts.add(root, "base", names[i % len(names)], "agree", reviewer="writer", note=str(i))
    print(i, flush=True)
"""


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_a_verdict_writer_killed_at_a_random_moment_loses_nothing_acknowledged(good, tmp_path, seed):
    with recorded(f"kill-verdicts-{seed}", "Faults", f"SIGKILL of a process writing verdicts (seed {seed})",
                  "every acknowledged verdict is kept, the database passes integrity_check and takes new ones"):
        root = _private_copy(good, tmp_path)
        names = store.load(root, "base").manifest["filename"].head(5).tolist()
        process = _start("-c", _WRITER, root, *names, stdout=subprocess.PIPE)
        time.sleep(np.random.default_rng(seed).uniform(1.5, 4.0))
        os.killpg(process.pid, signal.SIGKILL)
        acknowledged = len(process.communicate()[0].split())
        with sqlite3.connect(verdicts.database_path(root)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = len(verdicts.history(root, "base"))
        assert acknowledged <= stored <= acknowledged + 1, (acknowledged, stored)
        verdicts.add(root, "base", names[0], "unsure", reviewer="after")  # and the database takes new verdicts


_BUILD = f"""
import sys
from ddsm_core import features
from ddsm_core.config import RunConfig
features.ensure(sys.argv[1], RunConfig(**{HEAD_CONFIG!r}), "float32", log=lambda *_: None)
"""


@pytest.fixture(scope="module")
def feature_reference(good, tmp_path_factory):
    """(features, seconds) of an uninterrupted feature-cache build on a copy of the good workspace."""
    from ddsm_core import features
    from ddsm_core.config import RunConfig

    reference = tmp_path_factory.mktemp("features") / "workspace"
    shutil.copytree(good["root"], reference)
    seconds = _timed("-c", _BUILD, reference)
    return features.ensure(reference, RunConfig(**HEAD_CONFIG), "float32", log=lambda *_: None).features(), seconds


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_a_feature_cache_build_killed_at_a_random_moment_is_rebuilt_whole(good, feature_reference, tmp_path, seed):
    from ddsm_core import features
    from ddsm_core.config import RunConfig

    with recorded(f"kill-feature-cache-{seed}", "Faults", f"SIGKILL during a feature-cache build (seed {seed})",
                  "no cache or a whole one; the next build finishes it, equal to an uninterrupted build, "
                  "and removes the killed build's staging folder"):
        root = _private_copy(good, tmp_path)
        expected, whole = feature_reference
        _kill_midway(("-c", _BUILD, root), whole, seed)
        cache = features.ensure(root, RunConfig(**HEAD_CONFIG), "float32", log=lambda *_: None)
        assert np.array_equal(cache.features(), expected)
        leftovers = [p.name for p in features.cache_root(root).iterdir() if ".staging-" in p.name or ".old-" in p.name]
        assert not leftovers, leftovers


# ---------------------------------------------------------------- a full disk

def _disk_full_on_fsync(monkeypatch) -> None:
    """Every workspace write ends in an fsync (the moment a full disk is often reported): make it fail."""
    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)


def _main(*args) -> tuple[int, str]:
    """The CLI in this process (so a monkeypatched fault applies): its exit status and what it printed to stderr."""
    from ddsm_core import cli as ddsm_cli

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = ddsm_cli.main([str(a) for a in args])
    return status, stderr.getvalue()


def test_a_full_disk_during_an_import_keeps_the_previous_dataset(good, tmp_path, monkeypatch):
    with recorded("enospc-import", "Full disk", "ENOSPC while `import --replace` writes the new dataset",
                  "the previous dataset unchanged; the error names the file and says the disk is full"):
        root = _private_copy(good, tmp_path)
        before = snapshot(root)
        _disk_full_on_fsync(monkeypatch)
        status, stderr = _main(*seed_csv_args("base", good["seed"], root), "--replace")
        assert status == 1 and "No space left on device" in stderr and "manifest.parquet" in stderr, stderr
        assert snapshot(root) == before


def test_a_full_disk_during_an_evaluation_keeps_the_previous_results(workspace_copy, monkeypatch):
    with recorded("enospc-evaluate", "Full disk", "ENOSPC while an evaluation writes predictions and metrics",
                  "the previous predictions and metrics unchanged, no temp file left; the error says the disk is full"):
        root, run_id = workspace_copy.root, workspace_copy.run_t0
        before = {p: p.read_bytes() for p in (runs.predictions_file(root, run_id, "test"),
                                             runs.metrics_file(root, run_id, "test"))}
        _disk_full_on_fsync(monkeypatch)
        status, stderr = _main("evaluate", "--workspace", root, "--run", run_id, "--force")
        assert status == 1 and "No space left on device" in stderr, stderr
        assert {p: p.read_bytes() for p in before} == before
        assert not list(runs.metrics_dir(root, run_id).glob(".*")), "no temp file or journal left behind"


def test_a_full_disk_during_a_verdict_write_keeps_every_stored_verdict(good, tmp_path, monkeypatch):
    """SQLite itself reports the full disk: the database may not grow by a single page."""
    with recorded("enospc-verdicts", "Full disk", "the database full while `review import` adds 40 verdicts",
                  "none of the 40 is added, every stored verdict kept; the error says the disk is full"):
        root = _private_copy(good, tmp_path)
        name = _patch(good)
        verdicts.add(root, "base", name, "agree", reviewer="before")
        stored = verdicts.history(root, "base")
        real_open = verdicts._open

        def full_database(where):
            conn = real_open(where)
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
            return conn
        monkeypatch.setattr(verdicts, "_open", full_database)
        notes = [f"note {i} " + "x" * 3000 for i in range(40)]  # more than the free pages of the file can hold
        rows = pd.DataFrame({"filename": name, "verdict": "unsure", "new_label": "", "note": notes, "reviewer": "dr",
                             "time": ""})
        rows.to_csv(tmp_path / "many.csv", index=False)
        status, stderr = _main("review", "import", "--workspace", root, "--dataset", "base", "--file",
                               tmp_path / "many.csv")
        assert status == 1 and "the disk is full" in stderr and "review.sqlite" in stderr, stderr
        monkeypatch.setattr(verdicts, "_open", real_open)
        pd.testing.assert_frame_equal(verdicts.history(root, "base"), stored)


def test_a_full_disk_during_a_feature_cache_build_leaves_no_cache_and_no_staging(good, tmp_path, monkeypatch):
    from ddsm_core import features
    from ddsm_core.config import RunConfig

    with recorded("enospc-feature-cache", "Full disk", "ENOSPC while a feature cache is written",
                  "no cache and no staging folder left; the next build succeeds"):
        root = _private_copy(good, tmp_path)
        config = RunConfig(**HEAD_CONFIG)
        _disk_full_on_fsync(monkeypatch)
        with pytest.raises(OSError) as raised:
            features.ensure(root, config, "float32", log=lambda *_: None)
        assert raised.value.errno == errno.ENOSPC
        monkeypatch.undo()
        assert [p.name for p in features.cache_root(root).iterdir() if not p.name.endswith(".lock")] == []
        assert features.ensure(root, config, "float32", log=lambda *_: None).meta["n_patches"] == 60


# ---------------------------------------------------------------- the table

def test_every_case_has_a_distinct_id():
    ids = [case.id for case in BAD_INPUT]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


@pytest.fixture(scope="module", autouse=True)
def write_table(request):
    """After the module: docs/RELIABILITY.md from the records, when every test of the module ran."""
    yield
    ran = [item for item in request.session.items if item.module is request.module]
    if len(ran) < len(request.node.collect()) or not RECORDS:
        return  # a partial run (-k, a single test) does not rewrite the table
    DOC.write_text(render(RECORDS), encoding="utf-8")


def render(records: dict[str, dict]) -> str:
    lines = ["# Reliability", "",
             "Generated by `tests/test_reliability.py` (part of `make test`) from its own results: each row is one",
             "case the suite ran and what it checked. Bad-input cases run the real CLI in a subprocess against a",
             "workspace holding a dataset and a run, and compare a hash of every file before and after. The load",
             "measurement (many dashboard sessions at once) is in docs/PERFORMANCE.md, from `bench/load.py`.", ""]
    for section in ("Bad input", "Accepted input", "Faults", "Full disk"):
        rows = [(case_id, r) for case_id, r in records.items() if r["section"] == section]
        if not rows:
            continue
        lines += [f"## {section} ({len(rows)})", "", "| case | tried | promised | result |", "|---|---|---|---|"]
        lines += [f"| `{case_id}` | {r['tried']} | {r['promise']} | {'pass' if r['passed'] else '**FAIL**'} |"
                  for case_id, r in rows]
        lines.append("")
    return "\n".join(lines)
