"""Background runs: launch as detached processes, queue beyond a concurrency bound, watch, cancel.

The dashboard and the CLI both use this; neither trains in its own process.
A worker process trains its run, evaluates it, then starts the next queued run,
so the queue drains even when nobody is watching.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from . import runs
from .config import RunConfig
from .errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def max_concurrent() -> int:
    """Runs trained at once: 1 on a CPU machine (two would only share the same cores)."""
    return max(1, int(os.environ.get("DDSM_MAX_JOBS", "1")))


def submit(root: Path, config: RunConfig, run_id: str | None = None) -> str:
    """Check and create a run (queued), then start it if a slot is free. Returns the run id."""
    run_id = runs.create_run(root, config, run_id)
    dispatch(root)
    return run_id


def resume(root: Path, run_id: str) -> str:
    state = runs.effective_state(root, run_id)
    if state not in runs.RESUMABLE:
        raise UserError(f"run {run_id} is {state}; only cancelled, failed or interrupted runs can be resumed")
    runs.write_status(root, run_id, state="queued", error=None, pid=None, queued=runs.now())
    dispatch(root)
    return run_id


def running_ids(root: Path) -> list[str]:
    return [r for r in runs.list_ids(root) if runs.effective_state(root, r) == "running"]


def queued_ids(root: Path) -> list[str]:
    """Queued runs in the order they were queued."""
    queued = [(runs.read_status(root, r), r) for r in runs.list_ids(root)]
    queued = [(s.get("queued") or s.get("created") or "", r) for s, r in queued if s.get("state") == "queued"]
    return [run_id for _, run_id in sorted(queued)]


def dispatch(root: Path) -> list[str]:
    """Start queued runs while fewer than max_concurrent() are running. Returns the ones started."""
    lock_path = runs.dispatch_lock_file(root)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    started = []
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two dispatchers must not both fill the last slot
        free = max_concurrent() - len(running_ids(root))
        for run_id in queued_ids(root)[:max(0, free)]:
            started.append(launch(root, run_id))
    return started


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    """Start `python -m ddsm_core ARGS` detached: its own session (it outlives its launcher), output
    appended to log_path, and reaped in a thread so a long-lived launcher (the dashboard) keeps no zombies."""
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "ddsm_core", *map(str, args)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, close_fds=True, cwd=str(PROJECT_ROOT))
    threading.Thread(target=process.wait, daemon=True).start()
    return process


def launch(root: Path, run_id: str) -> str:
    """Start the worker process that trains and evaluates a run."""
    process = spawn(["worker", "--run", run_id, "--workspace", root], runs.train_log(root, run_id))
    # mark it running before the child takes its lock, so a second dispatch counts it
    runs.write_status(root, run_id, state="running", pid=process.pid, step=0, error=None)
    return run_id


def work(root: Path, run_id: str) -> None:
    """The worker process: train, evaluate, then hand the slot to the next queued run."""
    from .training import train_and_evaluate

    try:
        train_and_evaluate(root, run_id, log=lambda line: print(line, flush=True))
    finally:
        dispatch(root)


def cancel(root: Path, run_id: str) -> str:
    runs.require(root, run_id)
    status = runs.read_status(root, run_id)
    state = runs.effective_state(root, run_id, status)
    if state == "queued":
        runs.write_status(root, run_id, state="cancelled", note="cancelled before it started")
        return f"run {run_id} was queued and is now cancelled"
    if state != "running":
        raise UserError(f"run {run_id} is {state}, not running or queued")
    try:
        os.kill(int(status["pid"]), signal.SIGTERM)
    except (ProcessLookupError, TypeError, KeyError):
        raise UserError(f"run {run_id} has no live process to stop") from None
    return f"asked run {run_id} to stop after its current batch"


def watch(root: Path, run_id: str) -> dict:
    """A run's status as the sidebar shows it, with the effective state."""
    status = runs.read_status(root, run_id)
    return status | {"state": runs.effective_state(root, run_id, status)}
