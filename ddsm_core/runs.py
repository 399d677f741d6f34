"""Runs in the workspace: the one owner of a run folder's layout, and its config, status, history and lock.

runs/<run_id>/, a contract other tools rely on; the path functions below are
the only place these names are spelled:
    config.json                  everything needed to rerun it
    status.json                  the one place a run's state lives (STATES)
    history.csv                  one row per finished epoch
    best.keras                   the best checkpoint by the monitored validation metric
    state/state.json             the last complete epoch's checkpoint (state/epoch-NNNN.keras) and the history
    split.parquet                the run's train/validation subsets of the training patches
    predictions/<split>.parquet, metrics/<split>.json   what evaluation stores per split (SPLITS)
    train.log                    output of the background worker that trains and evaluates it
    evaluate.json, evaluate.log  the evaluation the dashboard started, and its output
    gradcam/<patch>-<hash>.npz   Grad-CAM maps of one patch (ddsm_core.explain's cache)
    explain.json, explain.log    the Grad-CAM job the dashboard started, and its output
    .lock                        held by the process training the run
and runs/.dispatch.lock, held while the job queue starts runs.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from . import hardware, verdicts, workspace
from .config import (
    SHUFFLE_BUFFER,
    RunConfig,
    check_dataset,
    check_settings,
    new_run_id,
    resolved,
    uses_feature_cache,
    validate_run_id,
)
from .data import store
from .errors import UserError
from .models import get_backbone
from .processes import pid_alive
from .tasks import get_task

# status.json holds one of the first five; a run marked running whose trainer died (no process holds its
# lock) is reported as interrupted
STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
RESUMABLE = ("cancelled", "failed", "interrupted")  # resuming continues after the last complete epoch
FINAL = ("completed", *RESUMABLE)  # nothing more happens to the run unless someone resumes it
SPLITS = ("test", "val", "train")  # evaluated: the dataset's test split, or the run's own val/train subset
CHECKPOINTS = ("best", "final")  # best by the monitored metric, or the last complete epoch's

_STATE_DIR = "state"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the run folder's layout

def folder(root: Path, run_id: str) -> Path:
    return workspace.run_dir(root, run_id)


def config_file(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "config.json"


def status_file(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "status.json"


def history_file(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "history.csv"


def best_checkpoint(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "best.keras"


def state_dir(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / _STATE_DIR


def state_file(root: Path, run_id: str) -> Path:
    return state_dir(root, run_id) / "state.json"


def epoch_checkpoint_name(epoch: int) -> str:
    """A complete epoch's checkpoint relative to the run folder, as state.json names it."""
    return f"{_STATE_DIR}/epoch-{epoch:04d}.keras"


def split_file(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "split.parquet"


def predictions_dir(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "predictions"


def predictions_file(root: Path, run_id: str, split: str) -> Path:
    """The split's predictions; like metrics_file, it first completes a replacement a killed evaluation left."""
    finish_results(root, run_id, split)
    return predictions_dir(root, run_id) / f"{split}.parquet"


def predicted_splits(root: Path, run_id: str) -> set[str]:
    """The splits that have a predictions file."""
    return {path.stem for path in predictions_dir(root, run_id).glob("*.parquet")}


def metrics_dir(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "metrics"


def metrics_file(root: Path, run_id: str, split: str) -> Path:
    """The split's metrics. Every reader and writer of the pair gets its path here, so a replacement a killed
    evaluation left half done is completed first (finish_results): the two are always of one evaluation."""
    finish_results(root, run_id, split)
    return metrics_dir(root, run_id) / f"{split}.json"


def results_journal(root: Path, run_id: str, split: str) -> Path:
    """Lists the renames of an evaluation's predictions + metrics while they are replaced together."""
    return metrics_dir(root, run_id) / f".{split}.replacing.json"


def finish_results(root: Path, run_id: str, split: str) -> None:
    """Complete the replacement of an evaluation's two files if one was killed half way
    (workspace.write_together); costs one stat when none was."""
    workspace.finish_together(results_journal(root, run_id, split))


def train_log(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "train.log"


def evaluate_job_file(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "evaluate.json"


def evaluate_log(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "evaluate.log"


def gradcam_dir(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "gradcam"


def gradcam_file(root: Path, run_id: str, filename: str) -> Path:
    """gradcam/<readable part of the patch filename>-<hash of it>.npz: unique for any filename."""
    readable = re.sub(r"[^0-9A-Za-z._-]+", "_", Path(filename).stem)[:80]
    digest = hashlib.sha256(filename.encode("utf-8")).hexdigest()[:12]
    return gradcam_dir(root, run_id) / f"{readable}-{digest}.npz"


def explain_job_file(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "explain.json"


def explain_log(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / "explain.log"


def lock_file(root: Path, run_id: str) -> Path:
    return folder(root, run_id) / ".lock"


def dispatch_lock_file(root: Path) -> Path:
    """Held while the job queue starts runs (one dispatcher at a time)."""
    return workspace.runs_dir(root) / ".dispatch.lock"


def checkpoint_file(root: Path, run_id: str, which: str) -> Path:
    """The `which` (CHECKPOINTS) checkpoint; refused when the run has not finished an epoch."""
    if which == "best":
        path = best_checkpoint(root, run_id)
    else:
        name = (workspace.read_json(state_file(root, run_id), default={}) or {}).get("checkpoint")
        path = folder(root, run_id) / name if name else None
    if path is None or not path.is_file():
        raise UserError(f"run {run_id} has no {which} checkpoint yet (it has not finished an epoch)")
    return path


# ---------------------------------------------------------------- creating and reading runs

def exists(root: Path, run_id: str) -> bool:
    return config_file(root, run_id).exists()


def require(root: Path, run_id: str) -> Path:
    if not exists(root, run_id):
        raise UserError(f"no run {run_id!r} in {root} (list them with: python -m ddsm_core runs)")
    return folder(root, run_id)


def read_config(root: Path, run_id: str) -> dict:
    require(root, run_id)
    return workspace.read_json(config_file(root, run_id))


def update_config(root: Path, run_id: str, **decided) -> dict:
    """Record what was decided when the run started (e.g. the precision `auto` chose on its machine)."""
    config = read_config(root, run_id) | decided
    workspace.write_json(config_file(root, run_id), config)
    return config


def read_status(root: Path, run_id: str) -> dict:
    return workspace.read_json(status_file(root, run_id), default={"state": "queued"})


def write_status(root: Path, run_id: str, **updates) -> dict:
    status = read_status(root, run_id) | updates | {"updated": now()}
    workspace.write_json(status_file(root, run_id), status)
    return status


def read_history(root: Path, run_id: str) -> pd.DataFrame:
    path = history_file(root, run_id)
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def create_run(root: Path, config: RunConfig, run_id: str | None = None) -> str:
    """Check every setting and that the dataset can serve the task, then create the run folder, queued.

    Returns the run id (`run_id` when given, else a new one). On any problem it
    raises a UserError naming them all and writes nothing.
    """
    problems = check_settings(config)
    if problems:
        raise UserError(problems)
    manifest = store.load(root, config.dataset).manifest
    problems = check_dataset(config, manifest)
    if problems:
        raise UserError(problems)
    check_memory(config, manifest)
    run_id = validate_run_id(run_id) if run_id else new_run_id(config)
    run = folder(root, run_id)
    if run.exists():
        raise UserError(f"run {run_id!r} already exists: pick another --run-id or use --resume {run_id}")
    created = now()
    # the precision is decided by the process that trains (it knows the machine it runs on: training.py)
    recorded = resolved(config, config.precision) | {"run_id": run_id, "created": created}
    if config.reviews == "apply":
        as_of = datetime.now(UTC).isoformat(timespec="microseconds")  # verdicts are timed to the microsecond
        recorded["reviews_snapshot"] = verdicts.snapshot(verdicts.current(root, config.dataset, as_of)) | {"as_of": as_of}
    run.mkdir(parents=True)
    workspace.write_json(status_file(root, run_id), {"state": "queued", "created": created, "updated": created})
    workspace.write_json(config_file(root, run_id), recorded)
    return run_id


def check_memory(config: RunConfig, manifest) -> None:
    """Refuse, in one sentence, a run whose estimated memory would not fit in what is available now."""
    backbone = get_backbone(config.backbone)
    n_train = int((get_task(config.task).select(manifest)["split"] == "train").sum())
    cached_features = uses_feature_cache(config)
    estimate = hardware.estimate_training_memory(
        n_cached_patches=n_train if (config.cache or cached_features) else 0, image_size=config.image_size,
        batch_size=config.batch_size, n_params=backbone.parameters,
        shuffle_buffer=0 if cached_features else min(n_train, SHUFFLE_BUFFER),
        cache_dtype_bytes=1 if config.cache and not cached_features else 0,
        feature_dim=backbone.feature_dim if cached_features else None,
        activations_per_pixel=0 if cached_features else hardware.ACTIVATIONS_PER_PIXEL[backbone.name])
    hardware.check_fits(estimate)


class RunLock:
    """An exclusive flock on the run folder: one trainer per run, released even by kill -9."""

    def __init__(self, root: Path, run_id: str):
        self.path = lock_file(root, run_id)
        self.handle = None

    def acquire(self) -> RunLock:
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
    path = lock_file(root, run_id)
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


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
    return sorted(p.name for p in base.iterdir() if exists(root, p.name))


def record(root: Path, run_id: str) -> dict:
    """One run's summary: what the Runs page and `runs --json` show."""
    config = read_config(root, run_id)
    status = read_status(root, run_id)
    metrics = workspace.read_json(metrics_file(root, run_id, "test"), default={}) or {}
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
