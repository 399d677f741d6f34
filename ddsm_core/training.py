"""One training run: resumable after a kill, cancellable between batches.

What survives a crash lives in the run folder (its layout: ddsm_core.runs),
always written atomically: the state file names the last complete epoch's
checkpoint and holds the history; the history and status files are rewritten
from it. A resumed run continues after the last complete epoch, so history
stays contiguous and no epoch is counted twice. SIGTERM/SIGINT stop after the
current batch; the partial epoch is dropped and the run is marked cancelled
(and can be resumed).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import hardware, keras_multiworker, runs, verdicts, workspace
from .config import MONITORS, RunConfig, check_settings, config_from_args, resolved, uses_feature_cache, validate_run_id
from .data import store
from .errors import UserError
from .tasks import get_task

# the status file is rewritten at most this often during an epoch (tests set 0 to see every batch)
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
    """Reads and writes a run's files. A non-chief worker writes its files under a scratch workspace
    (`out`) that nobody reads, and reads the chief's state."""

    def __init__(self, root: Path, run_id: str, chief: bool = True):
        self.root, self.run_id, self.chief = root, run_id, chief
        self.out = root if chief else Path(tempfile.mkdtemp(prefix=f"{run_id}-worker-"))
        runs.state_dir(self.out, run_id).mkdir(parents=True, exist_ok=True)

    def status(self, **updates) -> None:
        if self.chief:
            runs.write_status(self.root, self.run_id, **updates)

    def load_state(self) -> dict:
        return workspace.read_json(runs.state_file(self.root, self.run_id),
                                   default={"epochs_done": 0, "history": [], "best_value": None,
                                            "best_epoch": None, "checkpoint": None})

    @staticmethod
    def save_model(model, target: Path) -> None:
        # Keras insists on the .keras suffix, so the temp file keeps it
        workspace.atomic_write(target, lambda tmp: model.save(str(tmp)), suffix=".keras")

    def save_epoch(self, model, state: dict, improved: bool, export=None) -> None:
        """The epoch's checkpoint (what resume loads) and, when improved, the best one: `export(model)` when
        given (a head trained on cached features becomes the full classifier there)."""
        folder = runs.folder(self.out, self.run_id)
        if improved:
            self.save_model(export(model) if export else model, runs.best_checkpoint(self.out, self.run_id))
        checkpoint = runs.epoch_checkpoint_name(state["epochs_done"])
        self.save_model(model, folder / checkpoint)
        previous = state.get("checkpoint")
        state["checkpoint"] = checkpoint
        workspace.write_json(runs.state_file(self.out, self.run_id), state)
        workspace.write_csv(runs.history_file(self.out, self.run_id), pd.DataFrame(state["history"]))
        if previous and previous != checkpoint:
            (folder / previous).unlink(missing_ok=True)


# ---------------------------------------------------------------- the callback

class RunRecorder(keras.callbacks.Callback):
    """Status every second, a checkpoint and a history row every epoch, and the cancel check."""

    def __init__(self, files: RunFiles, state: dict, config: RunConfig, steps_per_epoch: int,
                 cancel: threading.Event, log, export=None):
        super().__init__()
        self.files, self.state, self.config = files, state, config
        self.steps_per_epoch, self.cancel, self.log, self.export = steps_per_epoch, cancel, log, export
        self.epoch_seconds, self.step_seconds = [], None
        self.last_status = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.epoch_start = epoch, time.time()
        # the rate this epoch trains with (reduce-on-plateau may lower it at the end of the previous one)
        self.epoch_lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

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
        row = {"epoch": epoch + 1} | self._latest(logs) | {"lr": self.epoch_lr, "seconds": round(seconds, 2)}
        improved = self._improved(row.get(self.config.monitor))
        if improved:
            self.state["best_value"], self.state["best_epoch"] = row[self.config.monitor], epoch + 1
        self.state["history"].append(row)
        self.state["epochs_done"] = epoch + 1
        self.files.save_epoch(self.model, self.state, improved, self.export)
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


def _feature_datasets(config: RunConfig, rows: pd.DataFrame, cache):
    """Batches of (cached features, targets): the head's whole input, already in memory."""
    import tensorflow as tf

    def build(subset: pd.DataFrame, training: bool):
        data = tf.data.Dataset.from_tensor_slices((cache.rows_for(subset["filename"].tolist()),
                                                   subset["target"].to_numpy()))
        if training:
            data = data.shuffle(len(subset), seed=config.seed, reshuffle_each_iteration=True)
        return data.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)

    train_rows, val_rows = rows[rows["subset"] == "train"], rows[rows["subset"] == "val"]
    return build(train_rows, True), build(val_rows, False), len(train_rows)


def _model(config: RunConfig, files: RunFiles, state: dict, strategy, build):
    """The model to fit: the last complete epoch's checkpoint, or build() compiled afresh."""
    from .models import custom_objects

    with strategy.scope():
        if state["checkpoint"]:
            return keras.models.load_model(runs.folder(files.root, files.run_id) / state["checkpoint"],
                                           custom_objects=custom_objects())
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.lr),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=config.jit)
        return model


def _inputs_and_model(root: Path, config: RunConfig, files: RunFiles, state: dict, strategy, rows, dataset, log):
    """(train data, validation data, training patches, model, export of the best model).

    A head run on cached features fits the head alone on them; its best
    checkpoint is exported as the full classifier (frozen backbone + head).
    """
    from . import features, models

    n_classes = get_task(config.task).n_classes
    if not uses_feature_cache(config):
        train_data, val_data, n_train = _datasets(config, rows, dataset)
        model = _model(config, files, state, strategy, lambda: models.build_classifier(
            config.backbone, n_classes, config.image_size, config.weights, config.fine_tune, config.dropout))
        return train_data, val_data, n_train, model, None
    cache = features.ensure(root, config, config.precision, log)
    train_data, val_data, n_train = _feature_datasets(config, rows, cache)
    model = _model(config, files, state, strategy,
                   lambda: models.build_head(cache.meta["dim"], n_classes, config.dropout))

    def export(head):
        return models.classifier_with_head(config.backbone, config.image_size, cache.weights_file, head,
                                           config.dropout)

    return train_data, val_data, n_train, model, export


def _schedule_callbacks(config: RunConfig) -> list:
    """Reduce-on-plateau and early stopping on the monitored metric, when asked for. Their patience counters
    start again when a run is resumed."""
    mode = MONITORS[config.monitor]
    callbacks = []
    if config.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, mode=mode, factor=0.5,
                                                           patience=config.reduce_lr_patience, min_lr=1e-7))
    if config.early_stop_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=config.monitor, mode=mode,
                                                       patience=config.early_stop_patience))
    return callbacks


def _watch_signals(cancel: threading.Event):
    def request_stop(signum, frame):
        cancel.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]


def prepare_rows(root: Path, config: RunConfig, reviews_as_of: str | None = None) -> tuple[store.Dataset, pd.DataFrame]:
    """The task's training rows, split into train and validation subsets.

    With config.reviews == "apply", the verdicts as they stood at reviews_as_of
    (when the run was created) change the training split first: relabeled
    patches take their new label, excluded ones are left out. The test split
    is never changed (evaluation reports reviewed-label metrics beside it).
    """
    dataset = store.load(root, config.dataset)
    manifest = dataset.manifest
    if config.reviews == "apply":
        manifest, _ = verdicts.apply(manifest, verdicts.current(root, config.dataset, as_of=reviews_as_of))
    rows = get_task(config.task).select(manifest)
    return dataset, split_train_val(rows, config.val_fraction, config.seed)


def decide_precision(root: Path, run_id: str, config: RunConfig, chief: bool) -> RunConfig:
    """Turn precision `auto` into this machine's choice, recorded in the run's config on its first start."""
    chosen = hardware.choose_precision(config.precision)
    if chosen != config.precision and chief:
        runs.update_config(root, run_id, precision=chosen)
    return replace(config, precision=chosen)


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
        config = decide_precision(root, run_id, config, files.chief)
        if config.precision != "float32" and not uses_feature_cache(config):
            keras.mixed_precision.set_global_policy(config.precision)
        strategy = make_strategy(config.strategy)
        recorded = runs.read_config(root, run_id) if files.chief else {}
        dataset, rows = prepare_rows(root, config, (recorded.get("reviews_snapshot") or {}).get("as_of"))
        if files.chief:
            workspace.write_parquet(runs.split_file(root, run_id),
                                    rows[["path", "filename", "label", "target", "group", "subset"]])
        train_data, val_data, n_train, model, export = _inputs_and_model(root, config, files, state, strategy,
                                                                         rows, dataset, log)
        task = get_task(config.task)
        steps = int(np.ceil(n_train / config.batch_size))
        recorder = RunRecorder(files, state, config, steps, cancel, log, export)
        weights = (balanced_class_weights(rows.loc[rows["subset"] == "train", "target"].to_numpy(), task.n_classes)
                   if config.class_weights == "balanced" else None)
        if config.strategy == "multiworker":
            keras_multiworker.prepare_fit(model, train_data, strategy)
        if state["epochs_done"] < config.epochs:
            log(f"run {run_id}: {task.name}, {config.backbone}, {n_train} training patches, "
                f"epochs {state['epochs_done'] + 1}-{config.epochs}, {strategy.num_replicas_in_sync} replica(s)")
            model.fit(train_data, validation_data=val_data, epochs=config.epochs, initial_epoch=state["epochs_done"],
                      class_weight=weights, callbacks=[*_schedule_callbacks(config), recorder], shuffle=False,
                      verbose=0)
    except CancelRequested:
        files.status(state="cancelled", epoch=state["epochs_done"], step=0, pid=None, eta_seconds=None,
                     error=None, note=f"cancelled during epoch {state['epochs_done'] + 1}; resume continues there")
        log(f"run {run_id} cancelled after {state['epochs_done']} complete epoch(s)")
        return "cancelled"
    except Exception as error:
        files.status(state="failed", pid=None, error=f"{type(error).__name__}: {error}".splitlines()[0][:500])
        raise
    stopped_early = state["epochs_done"] < config.epochs
    if stopped_early:
        log(f"run {run_id}: early stopping after epoch {state['epochs_done']} "
            f"({config.early_stop_patience} epoch(s) without a better {config.monitor})")
    files.status(state="completed", epoch=state["epochs_done"], step=0, pid=None, eta_seconds=0,
                 finished=runs.now(), best_epoch=state["best_epoch"], best_value=state["best_value"],
                 stopped_early=stopped_early)
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
        run_id = runs.create_run(root, config_from_args(args), args.run_id)
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
    config = RunConfig.from_dict(resolved(config, config.precision))  # the chief's defaults, decided the same way
    train_run(root, validate_run_id(args.run_id), config=config)
    return args.run_id
