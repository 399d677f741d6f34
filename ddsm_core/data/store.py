"""Datasets in the workspace: written whole (staging folder + rename), listed and loaded.

A dataset is a folder with dataset.json (source, counts, import report),
manifest.parquet (one row per patch) and, for formats we convert, images/.
Manifest columns: path (relative to the dataset folder, or absolute when the
images stay where the user keeps them), filename, label (0-4), split
(train|test), group, width, height, channels, dark_fraction, saturated_block,
noisy, plus any extra columns the source carried.
"""
from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .. import workspace
from ..errors import UserError
from ..tasks import SOURCE_LABELS
from . import noise

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPLITS = ("train", "test")
SEED_CSV, KAGGLE, CBIS = "seed-csv", "kaggle", "cbis-ddsm"
INFO, MANIFEST = "dataset.json", "manifest.parquet"  # a dataset folder's two files
PATCH_FORMATS = (SEED_CSV, KAGGLE)  # the layouts of ready-cut patches (what `synth` writes); dataset.json's
# "format" is one of these or CBIS
PATIENT_PREFIX = re.compile(r"^(P_\d+)")


@dataclass
class Dataset:
    name: str
    folder: Path
    info: dict
    manifest: pd.DataFrame

    def absolute_paths(self, rows: pd.DataFrame | None = None) -> list[str]:
        rows = self.manifest if rows is None else rows
        return [str(self.folder / p) for p in rows["path"]]


def check_name(name: str) -> None:
    if not name or not NAME_PATTERN.match(name):
        raise UserError(
            f"dataset name {name!r} is not valid: use letters, digits, '_', '-' or '.', up to 64 characters"
        )


def check_new_name(root: Path, name: str, replace: bool) -> None:
    check_name(name)
    if workspace.dataset_dir(root, name).exists() and not replace:
        raise UserError(f"dataset {name!r} already exists in {root}: pass --replace to overwrite it")


def group_from_filename(filename: str) -> str:
    """DDSM file names start with the patient (P_00012_...); otherwise a patch is its own group."""
    match = PATIENT_PREFIX.match(Path(filename).name)
    return match.group(1) if match else Path(filename).stem


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def refuse_or_record(bad: list[dict], good: list[dict], skip_bad: bool) -> None:
    """Refuse an import with bad rows (one line each) unless --skip-bad; never import nothing."""
    bad.sort(key=lambda entry: _natural_key(entry["where"]))
    if bad and not skip_bad:
        lines = [f"{entry['where']}: {entry['file']}: {entry['reason']}" for entry in bad]
        lines.append(f"{len(bad)} bad row(s), nothing was imported: fix them, "
                     f"or pass --skip-bad to import the {len(good)} good row(s)")
        raise UserError(lines)
    for split in SPLITS:
        if not any(row["split"] == split for row in good):
            raise UserError(f"no usable patches in the {split} split: nothing was imported")


def counts_by_split(manifest: pd.DataFrame) -> dict:
    """{"train": {"0": n, ...}, "test": {...}} keyed by source label, every label listed."""
    result = {}
    for split in SPLITS:
        labels = manifest.loc[manifest["split"] == split, "label"]
        result[split] = {str(label): int((labels == label).sum()) for label in SOURCE_LABELS}
    return result


def import_warnings(manifest: pd.DataFrame) -> list[str]:
    """Things worth knowing that do not stop an import: mixed sizes, empty classes, no groups, patients in
    both splits (the official CBIS-DDSM split has a few)."""
    warnings = []
    sizes = (manifest["width"].astype(str) + "x" + manifest["height"].astype(str)).value_counts()
    if len(sizes) > 1:
        listed = ", ".join(f"{size} ({count})" for size, count in sizes.items())
        warnings.append(f"mixed image sizes: {listed}; patches are resized to the run's image size")
    for split, per_label in counts_by_split(manifest).items():
        for label, count in per_label.items():
            if count == 0:
                warnings.append(f"{split} split has no patches of class {label} ({SOURCE_LABELS[int(label)]})")
    if (manifest["group"] == manifest["filename"].map(lambda f: Path(f).stem)).all():
        warnings.append("no patient or mammogram group found: validation splits will be patch-level and may leak")
    splits_per_group = manifest.groupby("group")["split"].nunique()
    if (leaked := sorted(splits_per_group.index[splits_per_group > 1])):
        warnings.append(f"{len(leaked)} patient group(s) have patches in both the train and the test split "
                        f"(e.g. {', '.join(map(str, leaked[:3]))}): test results on them may be optimistic")
    return warnings


def save(root: Path, name: str, fmt: str, source: dict, manifest: pd.DataFrame,
         skipped: list[dict], staging: Path, replace: bool) -> Dataset:
    """Finish a dataset written into `staging` and move it into place in one rename."""
    manifest = manifest.reset_index(drop=True)
    manifest["noisy"] = noise.flag_noisy(manifest)
    info = {
        "name": name,
        "format": fmt,
        "source": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_patches": int(len(manifest)),
        "counts": counts_by_split(manifest),
        "import_report": {
            "skipped": skipped,
            "warnings": import_warnings(manifest),
            "noise_filter": {
                "dark_level": noise.DARK_LEVEL,
                "saturated_level": noise.SATURATED_LEVEL,
                "dark_fraction": noise.DEFAULT_DARK_FRACTION,
                "saturated_block": noise.DEFAULT_SATURATED_BLOCK,
                "noisy_normals": int((manifest["noisy"] & (manifest["label"] == 0)).sum()),
            },
        },
    }
    workspace.write_parquet(staging / MANIFEST, manifest)
    workspace.write_json(staging / INFO, info)
    target = workspace.dataset_dir(root, name)
    workspace.replace_dir(staging, target)
    return Dataset(name, target, info, manifest)


@contextmanager
def staging(root: Path, name: str):
    """A hidden folder to build a dataset in; removed, with any folder it created, if the build fails.

    A failed or refused import leaves the workspace exactly as it was.
    """
    parent = workspace.datasets_dir(root)
    created = _topmost_missing(parent)
    workspace.recover_dirs(parent)  # what a killed import left behind
    folder = workspace.staging_dir(parent, name)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(created or folder, ignore_errors=True)
        raise


def _topmost_missing(path: Path) -> Path | None:
    """The highest folder of path that does not exist yet (None when path exists)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def list_datasets(root: Path) -> list[str]:
    folder = workspace.datasets_dir(root)
    if not folder.exists():
        return []
    workspace.recover_dirs(folder)  # a dataset a killed import had renamed aside is listed again
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / INFO).exists())


def manifest_file(root: Path, name: str) -> Path:
    return workspace.dataset_dir(root, name) / MANIFEST


def manifest_stamp(root: Path, name: str) -> int:
    """Changes whenever the dataset is imported again (0 when it does not exist): a cache key."""
    path = manifest_file(root, name)
    return path.stat().st_mtime_ns if path.exists() else 0


def load(root: Path, name: str) -> Dataset:
    folder = workspace.dataset_dir(root, name)
    known = [] if (folder / INFO).exists() else list_datasets(root)  # which puts back one a killed import set aside
    if not (folder / INFO).exists():
        raise UserError(f"no dataset named {name!r} in {root} (datasets: {', '.join(known) or 'none yet'})")
    info = workspace.read_json(folder / INFO)
    manifest = pd.read_parquet(folder / MANIFEST)
    return Dataset(name, folder, info, manifest)


def summaries(root: Path) -> list[dict]:
    """What `datasets --json` prints: name, format, counts and size of each dataset."""
    result = []
    for name in list_datasets(root):
        info = workspace.read_json(workspace.dataset_dir(root, name) / INFO)
        result.append({key: info.get(key) for key in ("name", "format", "counts", "n_patches", "created")}
                      | {"skipped": len(info.get("import_report", {}).get("skipped", []))})
    return result
