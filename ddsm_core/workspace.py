"""The workspace folder and the one way every file in it is written: atomically.

Layout (a contract other tools rely on):
    <root>/datasets/<name>/dataset.json, manifest.parquet, images/...   (see data/store.py)
    <root>/runs/<run_id>/config.json, status.json, history.csv, best.keras, ...   (see runs.py, their one owner)
    <root>/features/<cache>/...   cached backbone features for head runs (see features.py)
    <root>/review.sqlite          radiologists' verdicts on patches (see verdicts.py)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from .processes import pid_alive

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
    tmp = _staged(path, write, suffix)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _staged(path: Path, write, suffix: str) -> Path:
    """write(temp) on a temp file beside path, flushed to disk; on failure no temp file is left, and an
    OSError (a full disk, say) names path, the file the user knows, not the temp file."""
    tmp = _temp_beside(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_together(writes: dict, journal: Path) -> None:
    """Write several files ({path: write(temp_path)}) so that, even if the process is killed, they are all the
    old ones or all the new ones once finish_together(journal) has run (their readers call it first).

    Each file is written whole beside its target; then the journal, written atomically, lists the renames;
    then they happen and the journal goes. Killed before the journal: the old files stand. After it: any
    finish_together completes the renames.
    """
    staged = {}
    try:
        for path, write in writes.items():
            staged[Path(path)] = _staged(Path(path), write, ".tmp")
        write_json(journal, {str(tmp): str(path) for path, tmp in staged.items()})
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    finish_together(journal)


def finish_together(journal: Path) -> None:
    """Complete the renames of a write_together journal, if one is left (idempotent; safe in parallel)."""
    try:
        renames = read_json(journal)
    except (OSError, ValueError):
        return  # vanished under us: another reader finished it
    for tmp, path in (renames or {}).items():
        with contextlib.suppress(FileNotFoundError):  # moved already
            os.replace(tmp, path)
    Path(journal).unlink(missing_ok=True)


def text_writer(text: str):
    """A writer for atomic_write / write_together: the text, as UTF-8."""
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


def json_writer(obj):
    return text_writer(json_text(obj))


def parquet_writer(frame: pd.DataFrame):
    return lambda tmp: frame.to_parquet(tmp, index=False)


def write_text(path, text: str) -> None:
    atomic_write(path, text_writer(text))


def json_text(obj) -> str:
    """How every JSON file in the workspace is written (numpy values and paths allowed)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json(path, obj) -> None:
    atomic_write(path, json_writer(obj))


def write_parquet(path, frame: pd.DataFrame) -> None:
    atomic_write(path, parquet_writer(frame))


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
    """A hidden temp folder beside where `name` will live (same filesystem), tagged with our pid so that a
    later recover_dirs can tell a killed build's leftovers from a build still under way."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.staging-{os.getpid()}-", dir=parent))


_STAGING = re.compile(r"^\.(?P<name>.+)\.staging-(?P<pid>\d+)-[^.]+$")
_ASIDE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def recover_dirs(parent: Path) -> None:
    """Undo what a process killed inside staging_dir/replace_dir left in `parent`: its staging folders are
    deleted; a folder it had renamed aside is put back when nothing replaced it, else deleted. Folders of
    live processes are left alone. Idempotent, so any reader or writer may call it."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        found = _STAGING.match(entry.name) or _ASIDE.match(entry.name)
        if not found or pid_alive(int(found["pid"])):
            continue
        target = parent / found["name"]
        if found.re is _ASIDE and not target.exists():
            os.replace(entry, target)  # killed between the two renames: the old folder is still the current one
        else:
            shutil.rmtree(entry, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
