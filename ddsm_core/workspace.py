"""The workspace folder and the one way every file in it is written: atomically.

Layout (a contract other tools rely on):
    <root>/datasets/<name>/dataset.json, manifest.parquet, images/...   (see data/store.py)
    <root>/runs/<run_id>/config.json, status.json, history.csv, best.keras, ...   (see runs.py, their one owner)
    <root>/features/<cache>/...   cached backbone features for head runs (see features.py)
    <root>/review.sqlite          radiologists' verdicts on patches (see verdicts.py)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

DEFAULT_WORKSPACE = "artifacts"


def workspace_root(path: str | os.PathLike | None = None) -> Path:
    """The workspace folder: the argument, else $DDSM_WORKSPACE, else ./artifacts."""
    chosen = path or os.environ.get("DDSM_WORKSPACE") or DEFAULT_WORKSPACE
    return Path(chosen).expanduser().resolve()


def datasets_dir(root: Path) -> Path:
    return Path(root) / "datasets"


def dataset_dir(root: Path, name: str) -> Path:
    return datasets_dir(root) / name


def runs_dir(root: Path) -> Path:
    return Path(root) / "runs"


def run_dir(root: Path, run_id: str) -> Path:
    return runs_dir(root) / run_id


def _temp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write(path: str | os.PathLike, write, suffix: str = ".tmp") -> None:
    """Call write(temp_path), then rename the temp file over path.

    Readers never see half a file and a crash never leaves one: the rename is
    atomic on one filesystem, and the temp file sits beside the target.
    """
    path = Path(path)
    tmp = _temp_beside(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_parquet(path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_csv(path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_json(path, default=None):
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def _json_default(value):
    # numpy scalars and arrays show up in metrics and counts
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written staging folder into place, replacing target if present.

    The old folder is renamed aside first and deleted only after the new one is
    in place, so a crash can never leave a half-written dataset under target.
    """
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if target.exists():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, aside)
    os.replace(staging, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def staging_dir(parent: Path, name: str) -> Path:
    """A hidden temp folder beside where `name` will live (same filesystem)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=parent))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
