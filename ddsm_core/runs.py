"""Runs in the workspace: their folder, config, status, history, and the lock a trainer holds.

status.json is the one place a run's state lives:
queued | running | completed | failed | cancelled. A run marked running whose
trainer died (no process holds its lock) is reported as `interrupted`.
"""
from __future__ import annotations

import fcntl
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import workspace
from .errors import UserError
from .tasks import get_task

ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled")
LOCK_NAME = ".lock"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def folder(root: Path, run_id: str) -> Path:
    return workspace.run_dir(root, run_id)


def exists(root: Path, run_id: str) -> bool:
    return (folder(root, run_id) / "config.json").exists()


def require(root: Path, run_id: str) -> Path:
    if not exists(root, run_id):
        raise UserError(f"no run {run_id!r} in {root} (list them with: python -m ddsm_core runs)")
    return folder(root, run_id)


def read_config(root: Path, run_id: str) -> dict:
    return workspace.read_json(require(root, run_id) / "config.json")


def read_status(root: Path, run_id: str) -> dict:
    return workspace.read_json(folder(root, run_id) / "status.json", default={"state": "queued"})


def write_status(root: Path, run_id: str, **updates) -> dict:
    status = read_status(root, run_id) | updates | {"updated": now()}
    workspace.write_json(folder(root, run_id) / "status.json", status)
    return status


def read_history(root: Path, run_id: str) -> pd.DataFrame:
    path = folder(root, run_id) / "history.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def create(root: Path, run_id: str, config: dict) -> Path:
    run = folder(root, run_id)
    if run.exists():
        raise UserError(f"run {run_id!r} already exists: pick another --run-id or use --resume {run_id}")
    run.mkdir(parents=True)
    workspace.write_json(run / "status.json", {"state": "queued", "created": now(), "updated": now()})
    workspace.write_json(run / "config.json", config | {"run_id": run_id, "created": now()})
    return run


class RunLock:
    """An exclusive flock on the run folder: one trainer per run, released even by kill -9."""

    def __init__(self, root: Path, run_id: str):
        self.path = folder(root, run_id) / LOCK_NAME
        self.handle = None

    def acquire(self) -> "RunLock":
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise UserError(f"run {self.path.parent.name} is already being trained (pid {holder})") from None
        self.handle.truncate(0)
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def release(self) -> None:
        if self.handle:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def is_locked(root: Path, run_id: str) -> bool:
    path = folder(root, run_id) / LOCK_NAME
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def pid_alive(pid) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as dead."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def effective_state(root: Path, run_id: str, status: dict | None = None) -> str:
    status = status or read_status(root, run_id)
    state = status.get("state", "queued")
    if state == "running" and not is_locked(root, run_id) and not pid_alive(status.get("pid")):
        return "interrupted"
    return state


def list_ids(root: Path) -> list[str]:
    base = workspace.runs_dir(root)
    if not base.exists():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "config.json").exists())


def record(root: Path, run_id: str) -> dict:
    """One run's summary: what the Runs page and `runs --json` show."""
    config = read_config(root, run_id)
    status = read_status(root, run_id)
    metrics = workspace.read_json(folder(root, run_id) / "metrics" / "test.json", default={}) or {}
    return {
        "run_id": run_id,
        "dataset": config.get("dataset"),
        "task": config.get("task"),
        "task_name": get_task(config.get("task")).name,
        "backbone": config.get("backbone"),
        "state": effective_state(root, run_id, status),
        "epoch": status.get("epoch", 0),
        "epochs": config.get("epochs"),
        "created": config.get("created"),
        "error": status.get("error"),
        "test_accuracy": metrics.get("accuracy"),
        "test_balanced_accuracy": metrics.get("balanced_accuracy"),
        "test_roc_auc": metrics.get("roc_auc"),
        "test_ece": metrics.get("ece"),
        "evaluated": bool(metrics),
    }


def list_runs(root: Path) -> list[dict]:
    return sorted((record(root, run_id) for run_id in list_ids(root)), key=lambda r: r["created"] or "")


def one_line(entry: dict) -> str:
    auc = entry["test_roc_auc"]
    shown = f"AUC {auc:.3f}" if isinstance(auc, float) else "not evaluated"
    return (f"{entry['run_id']}  task {entry['task']}  {entry['backbone']}  {entry['state']}  "
            f"epoch {entry['epoch']}/{entry['epochs']}  {shown}")
