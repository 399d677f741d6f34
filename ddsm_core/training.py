"""One training run: resumable after a kill, cancellable between batches.

What survives a crash lives in the run folder, always written atomically:
state/state.json names the last complete epoch's checkpoint and holds the
history; history.csv and status.json are rewritten from it. A resumed run
continues after the last complete epoch, so history stays contiguous and no
epoch is counted twice. SIGTERM/SIGINT stop after the current batch; the
partial epoch is dropped and the run is marked cancelled (and can be resumed).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import runs, workspace
from .config import MONITORS, RunConfig, check_settings, config_from_args, validate_run_id
from .jobs import create_run
from .data import store
from .errors import UserError
from .tasks import get_task

# status.json is rewritten at most this often during an epoch (tests set 0 to see every batch)
STATUS_INTERVAL_S = float(os.environ.get("DDSM_STATUS_SECONDS", "1.0"))


class CancelRequested(Exception):
    """Raised from inside fit when SIGTERM/SIGINT asked the run to stop."""


# ---------------------------------------------------------------- data split

def split_train_val(rows: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Mark training rows `subset` = train|val, stratified by class and, when groups exist, by group.

    Patches of one mammogram or patient never straddle train and validation,
    which is what let the seed's validation accuracy run far above test.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    rows = rows[rows["split"] == "train"].reset_index(drop=True)
    n_splits = max(2, round(1 / val_fraction))
    grouped = rows["group"].nunique() < len(rows)
    splitter = (StratifiedGroupKFold if grouped else StratifiedKFold)(n_splits, shuffle=True, random_state=seed)
    train_index, val_index = next(splitter.split(rows, rows["target"], groups=rows["group"] if grouped else None))
    rows["subset"] = "train"
    rows.loc[val_index, "subset"] = "val"
    return rows


def balanced_class_weights(targets: np.ndarray, n_classes: int) -> dict[int, float]:
    """The seed's `compute_class_weight('balanced')`: n / (k * count) per class."""
    counts = np.bincount(targets, minlength=n_classes)
    return {c: float(len(targets) / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


# ---------------------------------------------------------------- run state on disk

class RunFiles:
    """Reads and writes a run's files. A non-chief worker writes into a scratch folder instead."""

    def __init__(self, root: Path, run_id: str, chief: bool = True):
        self.root, self.run_id = root, run_id
        self.folder = runs.folder(root, run_id) if chief else Path(tempfile.mkdtemp(prefix=f"{run_id}-worker-"))
        self.chief = chief
        (self.folder / "state").mkdir(parents=True, exist_ok=True)

    def status(self, **updates) -> None:
        if self.chief:
            runs.write_status(self.root, self.run_id, **updates)

    def load_state(self) -> dict:
        state_file = runs.folder(self.root, self.run_id) / "state" / "state.json"
        return workspace.read_json(state_file, default={"epochs_done": 0, "history": [], "best_value": None,
                                                          "best_epoch": None, "checkpoint": None})

    def save_model(self, model, name: str) -> Path:
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # Keras insists on the .keras suffix, so the temp file keeps it
        workspace.atomic_write(target, lambda tmp: model.save(str(tmp)), suffix=".keras")
        return target

    def save_epoch(self, model, state: dict, improved: bool) -> None:
        epoch = state["epochs_done"]
        if improved:
            self.save_model(model, "best.keras")
        checkpoint = f"state/epoch-{epoch:04d}.keras"
        self.save_model(model, checkpoint)
        previous = state.get("checkpoint")
        state["checkpoint"] = checkpoint
        workspace.write_json(self.folder / "state" / "state.json", state)
        workspace.write_csv(self.folder / "history.csv", pd.DataFrame(state["history"]))
        if previous and previous != checkpoint:
            (self.folder / previous).unlink(missing_ok=True)


# ---------------------------------------------------------------- the callback

class RunRecorder(keras.callbacks.Callback):
    """Status every second, a checkpoint and a history row every epoch, and the cancel check."""

    def __init__(self, files: RunFiles, state: dict, config: RunConfig, steps_per_epoch: int,
                 cancel: threading.Event, log):
        super().__init__()
        self.files, self.state, self.config = files, state, config
        self.steps_per_epoch, self.cancel, self.log = steps_per_epoch, cancel, log
        self.epoch_seconds, self.step_seconds = [], None
        self.last_status = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.epoch_start = epoch, time.time()

    def on_train_batch_end(self, batch, logs=None):
        if self.cancel.is_set():
            raise CancelRequested()
        now = time.time()
        self.step_seconds = (now - self.epoch_start) / (batch + 1)
        if now - self.last_status >= STATUS_INTERVAL_S:
            self.last_status = now
            self.files.status(state="running", epoch=self.epoch, step=batch + 1,
                              steps_per_epoch=self.steps_per_epoch, metrics=self._latest(logs),
                              eta_seconds=self._eta(batch + 1))

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self.epoch_start
        self.epoch_seconds.append(seconds)
        row = {"epoch": epoch + 1} | self._latest(logs) | {"lr": float(self.config.lr), "seconds": round(seconds, 2)}
        improved = self._improved(row.get(self.config.monitor))
        if improved:
            self.state["best_value"], self.state["best_epoch"] = row[self.config.monitor], epoch + 1
        self.state["history"].append(row)
        self.state["epochs_done"] = epoch + 1
        self.files.save_epoch(self.model, self.state, improved)
        self.files.status(state="running", epoch=epoch + 1, step=0, steps_per_epoch=self.steps_per_epoch,
                          metrics=row, eta_seconds=self._eta(0, next_epoch=True),
                          best_epoch=self.state["best_epoch"], best_value=self.state["best_value"])
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "lr")
        self.log(f"epoch {epoch + 1}/{self.config.epochs}  {shown}{'  (best)' if improved else ''}")

    def _improved(self, value) -> bool:
        best = self.state["best_value"]
        if value is None or not np.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if MONITORS[self.config.monitor] == "max" else value < best

    def _eta(self, step, next_epoch=False):
        epochs_left = self.config.epochs - self.epoch - 1
        step_seconds = self.step_seconds or 0.0
        per_epoch = np.mean(self.epoch_seconds) if self.epoch_seconds else step_seconds * self.steps_per_epoch
        in_flight = 0.0 if next_epoch else step_seconds * (self.steps_per_epoch - step)
        return round(float(in_flight + per_epoch * epochs_left), 1)

    @staticmethod
    def _latest(logs) -> dict:
        return {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}


# ---------------------------------------------------------------- strategy and precision

def make_strategy(name: str):
    import tensorflow as tf

    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def split_cpu(n_devices: int) -> None:
    """Present the CPU as n logical devices (to exercise MirroredStrategy without GPUs)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_devices)


def is_chief() -> bool:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cluster.get("task", {})
    return task.get("type", "chief") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                                    and "chief" not in cluster.get("cluster", {}))


# ---------------------------------------------------------------- the run

def _datasets(config: RunConfig, rows: pd.DataFrame, dataset: store.Dataset):
    from .data.pipeline import make_dataset

    distributed = config.strategy != "default"

    def build(subset: pd.DataFrame, training: bool):
        return make_dataset(dataset.absolute_paths(subset), subset["target"], config.image_size,
                            config.batch_size, shuffle=training, augment=training and config.augment,
                            cache=config.cache, seed=config.seed, drop_remainder=distributed)

    train_rows, val_rows = rows[rows["subset"] == "train"], rows[rows["subset"] == "val"]
    return build(train_rows, True), build(val_rows, False), len(train_rows)


def _model(config: RunConfig, files: RunFiles, state: dict, strategy, n_classes: int):
    from .models import build_classifier, custom_objects

    with strategy.scope():
        if state["checkpoint"]:
            return keras.models.load_model(runs.folder(files.root, files.run_id) / state["checkpoint"],
                                           custom_objects=custom_objects())
        model = build_classifier(config.backbone, n_classes, config.image_size, config.weights,
                                 config.fine_tune, config.dropout)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.lr),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=config.jit)
        return model


def _prepare_multiworker_fit(model, dataset, strategy) -> None:
    """Work around Keras 3's known incompatibility with MultiWorkerMirroredStrategy
    (tensorflow/tensorflow#72388), two private spots:

    - fit() builds the metrics from a first batch by reducing a tuple of
      per-replica values, which that strategy rejects: build them here from one
      local batch, so that step has nothing left to do.
    - fit() reduces each scalar log with axis=0, which fails on scalars: the
      logs are already synchronised across workers by then, so each worker
      takes its local value instead.
    """
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(dataset)))
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    keras_tf_trainer._collective_all_reduce_multi_worker = lambda strategy: False


def _watch_signals(cancel: threading.Event):
    def request_stop(signum, frame):
        cancel.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]


def prepare_rows(root: Path, config: RunConfig) -> tuple[store.Dataset, pd.DataFrame]:
    dataset = store.load(root, config.dataset)
    rows = get_task(config.task).select(dataset.manifest)
    return dataset, split_train_val(rows, config.val_fraction, config.seed)


def train_run(root: Path, run_id: str, log=print, config: RunConfig | None = None) -> str:
    """Train (or continue) a run to the end; returns its final state.

    A non-chief worker of a multi-worker run passes its config: it trains in
    step with the chief but writes only to a scratch folder.
    """
    config = config or RunConfig.from_dict(runs.read_config(root, run_id))
    chief = config.strategy != "multiworker" or is_chief()
    lock = runs.RunLock(root, run_id).acquire() if chief else None
    files = RunFiles(root, run_id, chief)
    cancel = threading.Event()
    restore_signals = _watch_signals(cancel)
    try:
        return _train(root, run_id, config, files, cancel, log)
    finally:
        restore_signals()
        if lock:
            lock.release()


def _train(root, run_id, config, files, cancel, log) -> str:
    state = files.load_state()
    files.status(state="running", pid=os.getpid(), host=socket.gethostname(), started=runs.now(),
                 epoch=state["epochs_done"], step=0, error=None)
    try:
        if config.precision != "float32":
            keras.mixed_precision.set_global_policy(config.precision)
        strategy = make_strategy(config.strategy)
        dataset, rows = prepare_rows(root, config)
        if files.chief:
            workspace.write_parquet(files.folder / "split.parquet", rows[["path", "label", "target", "group", "subset"]])
        train_data, val_data, n_train = _datasets(config, rows, dataset)
        task = get_task(config.task)
        model = _model(config, files, state, strategy, task.n_classes)
        steps = int(np.ceil(n_train / config.batch_size))
        recorder = RunRecorder(files, state, config, steps, cancel, log)
        weights = (balanced_class_weights(rows.loc[rows["subset"] == "train", "target"].to_numpy(), task.n_classes)
                   if config.class_weights == "balanced" else None)
        if config.strategy == "multiworker":
            _prepare_multiworker_fit(model, train_data, strategy)
        if state["epochs_done"] < config.epochs:
            log(f"run {run_id}: {task.name}, {config.backbone}, {n_train} training patches, "
                f"epochs {state['epochs_done'] + 1}-{config.epochs}, {strategy.num_replicas_in_sync} replica(s)")
            model.fit(train_data, validation_data=val_data, epochs=config.epochs, initial_epoch=state["epochs_done"],
                      class_weight=weights, callbacks=[recorder], shuffle=False, verbose=0)
    except CancelRequested:
        files.status(state="cancelled", epoch=state["epochs_done"], step=0, pid=None, eta_seconds=None,
                     error=None, note=f"cancelled during epoch {state['epochs_done'] + 1}; resume continues there")
        log(f"run {run_id} cancelled after {state['epochs_done']} complete epoch(s)")
        return "cancelled"
    except Exception as error:
        files.status(state="failed", pid=None, error=f"{type(error).__name__}: {error}".splitlines()[0][:500])
        raise
    files.status(state="completed", epoch=state["epochs_done"], step=0, pid=None, eta_seconds=0,
                 finished=runs.now(), best_epoch=state["best_epoch"], best_value=state["best_value"])
    return "completed"


# ---------------------------------------------------------------- entry points

def train_and_evaluate(root: Path, run_id: str, evaluate: bool = True, log=print) -> str:
    state = train_run(root, run_id, log=log)
    if state == "completed" and evaluate:
        from .evaluation import evaluate_run

        runs.write_status(root, run_id, evaluation="running")
        try:
            evaluate_run(root, run_id, split="test", log=log)
        except Exception as error:
            runs.write_status(root, run_id, evaluation=f"failed: {error}".splitlines()[0][:500])
            raise
        runs.write_status(root, run_id, evaluation="done")
    return state


def train_from_args(args) -> str:
    root = workspace.workspace_root(args.workspace)
    if os.environ.get("DDSM_CPU_DEVICES"):
        split_cpu(int(os.environ["DDSM_CPU_DEVICES"]))
    if args.resume:
        run_id = args.resume
        runs.require(root, run_id)
        if runs.effective_state(root, run_id) == "completed":
            raise UserError(f"run {run_id} is already completed")
    elif getattr(args, "strategy", None) == "multiworker" and not is_chief():
        return _train_as_worker(root, args)
    else:
        run_id = create_run(root, config_from_args(args), args.run_id)
    state = train_and_evaluate(root, run_id, evaluate=not args.no_evaluate)
    if state == "cancelled":
        raise UserError(f"run {run_id} was cancelled; continue it with: python -m ddsm_core train --resume {run_id}")
    return run_id


def _train_as_worker(root: Path, args) -> str:
    """A non-chief worker: same settings and run id as the chief, no files of its own in the workspace."""
    if not args.run_id:
        raise UserError("every worker of a multi-worker run needs the same --run-id as the chief")
    config = config_from_args(args)
    problems = check_settings(config)
    if problems:
        raise UserError(problems)
    train_run(root, validate_run_id(args.run_id), config=config)
    return args.run_id
