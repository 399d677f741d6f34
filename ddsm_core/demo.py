"""The demo workspace: a synthetic dataset through the real importer, and one small_cnn run per task
trained and evaluated through the real job queue.

Run ids are fixed (demo-task<k>-small_cnn), so running the demo again finds
its own runs: complete ones are left alone, interrupted ones resumed.
Progress goes to the terminal and to <workspace>/demo.json for the dashboard.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from . import jobs, runs, synth, workspace
from .config import RunConfig
from .data import store
from .errors import UserError
from .tasks import TASKS

DATASET = "demo"
DEFAULTS = {"n_train": 1500, "n_test": 500, "image_size": 64, "epochs": 8}
SOURCE_SIZE = 96
POLL_SECONDS = 1.0
PRINT_SECONDS = 5.0


def run_id_for(task_id: int) -> str:
    return f"demo-task{task_id}-small_cnn"


def progress_file(root: Path) -> Path:
    return Path(root) / "demo.json"


def demo_progress(root: Path) -> dict | None:
    return workspace.read_json(progress_file(root))


def _report(root: Path, log, **progress) -> None:
    workspace.write_json(progress_file(root), progress | {"updated": runs.now()})
    if progress.get("message"):
        log(progress["message"])


def is_complete(root: Path) -> bool:
    return all(_evaluated(root, task_id) for task_id in TASKS)


def _evaluated(root: Path, task_id: int) -> bool:
    run_id = run_id_for(task_id)
    return (runs.exists(root, run_id) and runs.effective_state(root, run_id) == "completed"
            and runs.metrics_file(root, run_id, "test").exists())


def build_dataset(root: Path, n_train: int, n_test: int, log) -> None:
    """Synthetic patches in the public release's layout, imported by the real importer (it copies the PNGs)."""
    from .data.kaggle import import_kaggle

    source = Path(tempfile.mkdtemp(prefix="ddsm-demo-source-"))
    try:
        synth.write_kaggle(source, n_train, n_test, size=SOURCE_SIZE, seed=0)
        import_kaggle(root, DATASET, source, replace=True)
    finally:
        shutil.rmtree(source, ignore_errors=True)
    log(f"demo dataset: {n_train} training and {n_test} test patches imported as {DATASET!r}")


def _queue_runs(root: Path, image_size: int, epochs: int) -> None:
    for task_id in TASKS:
        run_id = run_id_for(task_id)
        if not runs.exists(root, run_id):
            config = RunConfig(dataset=DATASET, task=task_id, backbone="small_cnn", epochs=epochs,
                               image_size=image_size, batch_size=32, lr=1e-3, augment=False)
            jobs.submit(root, config, run_id)
        elif runs.effective_state(root, run_id) in runs.RESUMABLE:
            jobs.resume(root, run_id)
        elif runs.effective_state(root, run_id) == "completed" and not _evaluated(root, task_id):
            runs.write_status(root, run_id, state="queued", queued=runs.now())  # the worker evaluates it
    jobs.dispatch(root)


def _progress_line(root: Path) -> tuple[str, int]:
    done = sum(_evaluated(root, task_id) for task_id in TASKS)
    current = next((t for t in TASKS if runs.exists(root, run_id_for(t)) and
                    runs.effective_state(root, run_id_for(t)) == "running"), None)
    line = f"[{done}/{len(TASKS)} runs done]"
    if current is not None:
        status = runs.read_status(root, run_id_for(current))
        config = runs.read_config(root, run_id_for(current))
        line += (f" task {current} ({TASKS[current].name}): epoch {status.get('epoch', 0) + 1}/{config['epochs']}"
                 f" step {status.get('step', 0)}/{status.get('steps_per_epoch') or '?'}")
    return line, done


def _wait(root: Path, log) -> None:
    """Poll the queue until all six runs are evaluated; a progress line on each new run or every few seconds."""
    last_done, last_time = -1, 0.0
    while not is_complete(root):
        failed = [run_id_for(t) for t in TASKS if runs.exists(root, run_id_for(t))
                  and runs.effective_state(root, run_id_for(t)) in runs.RESUMABLE]
        if failed:
            errors = "; ".join(f"{r}: {runs.read_status(root, r).get('error') or runs.effective_state(root, r)}"
                               for r in failed)
            raise UserError(f"demo run(s) did not finish ({errors}); run the demo again to resume them")
        jobs.dispatch(root)
        line, done = _progress_line(root)
        if done != last_done or time.time() - last_time >= PRINT_SECONDS:
            _report(root, log, state="running", done=done + 1, total=len(TASKS) + 1, message=line)
            last_done, last_time = done, time.time()
        time.sleep(POLL_SECONDS)


def summary(root: Path) -> list[dict]:
    rows = []
    for task_id, task in TASKS.items():
        metrics = workspace.read_json(runs.metrics_file(root, run_id_for(task_id), "test"), default={})
        rows.append({"task": task_id, "name": task.name, "run_id": run_id_for(task_id),
                     "accuracy": metrics.get("accuracy"), "balanced_accuracy": metrics.get("balanced_accuracy"),
                     "roc_auc": metrics.get("roc_auc")})
    return rows


def print_summary(root: Path, log) -> None:
    log(f"{'task':<5}{'name':<38}{'accuracy':>9}{'bal.acc':>9}{'AUC':>7}")
    for row in summary(root):
        values = [row[k] if row[k] is not None else float("nan") for k in ("accuracy", "balanced_accuracy", "roc_auc")]
        log(f"{row['task']:<5}{row['name']:<38}{values[0]:>9.3f}{values[1]:>9.3f}{values[2]:>7.3f}")


def run_demo(root: Path, n_train=None, n_test=None, image_size=None, epochs=None,
             if_empty: bool = False, log=print) -> None:
    root = Path(root)
    if if_empty and (runs.list_ids(root) or store.list_datasets(root)):
        log(f"workspace {root} already has data; not building the demo")
        return
    if is_complete(root):
        log(f"the demo workspace in {root} is complete (six evaluated runs); nothing to do")
        print_summary(root, log)
        return
    settings = {k: v if v is not None else DEFAULTS[k] for k, v in
                {"n_train": n_train, "n_test": n_test, "image_size": image_size, "epochs": epochs}.items()}
    started = time.time()
    try:
        if DATASET not in store.list_datasets(root):
            _report(root, log, state="running", done=0, total=len(TASKS) + 1, message="building the demo dataset")
            build_dataset(root, settings["n_train"], settings["n_test"], log)
        _queue_runs(root, settings["image_size"], settings["epochs"])
        _wait(root, log)
    except BaseException as error:
        _report(root, log, state="failed", done=0, total=len(TASKS) + 1, message=f"demo stopped: {error}")
        raise
    _report(root, log, state="completed", done=len(TASKS) + 1, total=len(TASKS) + 1,
            message=f"demo complete in {time.time() - started:.0f} s: six trained and evaluated runs")
    print_summary(root, log)


def start_demo_job(root: Path) -> None:
    """Build the demo in a detached process (the dashboard's button); progress in demo.json."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _report(root, lambda _: None, state="running", done=0, total=len(TASKS) + 1, message="starting the demo")
    jobs.spawn(["demo", "--workspace", root], root / "demo.log")
