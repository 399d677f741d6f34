"""Batched prediction of a run's checkpoint on a split, stored once, and the metrics computed from it.

predictions/<split>.parquet: path, filename, label, group, noisy, y_true,
y_pred, correct, confidence, p_<class> per class. metrics/<split>.json: every
number a reviewer needs (see ddsm_core.metrics) plus which checkpoint made
them. A second evaluation of an unchanged checkpoint does no inference.
"""
from __future__ import annotations

import hashlib
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as metric_functions
from . import runs, workspace
from .config import RunConfig
from .data import store
from .errors import UserError
from .tasks import Task, get_task

DEFAULT_BATCH_SIZE = 64
SPLITS = ("test", "val", "train")


@dataclass
class Evaluation:
    predictions: pd.DataFrame
    metrics: dict
    skipped: bool = False


def probability_column(class_name: str) -> str:
    return "p_" + re.sub(r"[^0-9a-zA-Z]+", "_", class_name).strip("_")


def probability_columns(task: Task) -> list[str]:
    return [probability_column(name) for name in task.class_names]


def checkpoint_file(root: Path, run_id: str, which: str) -> Path:
    folder = runs.folder(root, run_id)
    if which == "best":
        path = folder / "best.keras"
    else:
        state = workspace.read_json(folder / "state" / "state.json", default={}) or {}
        path = folder / state["checkpoint"] if state.get("checkpoint") else folder / "missing-final.keras"
    if not path.is_file():
        raise UserError(f"run {run_id} has no {which} checkpoint yet (it has not finished an epoch)")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_rows(root: Path, run_id: str, config: RunConfig, split: str) -> tuple[store.Dataset, pd.DataFrame]:
    """The patches of a split, as the run's task sees them (val/train from the run's own split)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    dataset = store.load(root, config.dataset)
    rows = get_task(config.task).select(dataset.manifest)
    if split == "test":
        rows = rows[rows["split"] == "test"]
    else:
        subsets = pd.read_parquet(runs.folder(root, run_id) / "split.parquet")
        wanted = subsets.loc[subsets["subset"] == split, "path"]
        rows = rows[(rows["split"] == "train") & rows["path"].isin(set(wanted))]
    if rows.empty:
        raise UserError(f"run {run_id}: the {split} split has no patches for task {config.task}")
    return dataset, rows.reset_index(drop=True)


def check_files(paths: list[str], dataset_name: str) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{len(missing)} image file(s) of dataset {dataset_name!r} are missing "
                        f"(moved or deleted?): {shown}; re-import the dataset with --replace")


# grappler's graph rewrite for each reduced precision: bfloat16 for oneDNN on CPUs (AMX, AVX-512 BF16),
# float16 on GPUs. Rewriting the frozen graph converts every op it can, where a Keras mixed policy keeps
# batch norm in float32 and pays a cast around each one.
GRAPPLER_PRECISION = {"mixed_bfloat16": "auto_mixed_precision_onednn_bfloat16",
                      "mixed_float16": "auto_mixed_precision"}


def load_for_inference(path: Path, config: RunConfig, precision: str = "float32", jit: bool = False):
    """The checkpoint as a function from a batch of patches to class probabilities.

    The graph is frozen (weights become constants), so grappler folds batch
    norm into the convolutions; with a reduced precision it also rewrites the
    graph to that precision. With jit the model is compiled by XLA instead.
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from .models import custom_objects

    if precision != "float32" and precision not in GRAPPLER_PRECISION:
        raise UserError(f"unknown precision {precision!r}: use float32, mixed_bfloat16 or mixed_float16")
    if jit and precision != "float32":
        raise UserError("choose --jit or a reduced --precision, not both: XLA here runs in float32")
    model = keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    size = config.image_size
    function = tf.function(lambda batch: model(batch, training=False), jit_compile=jit or None)
    if jit:
        return function
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(tf.TensorSpec([None, size, size, 1])))
    rewrite = GRAPPLER_PRECISION.get(precision)

    def infer(batch):
        with _grappler_option(rewrite):
            return frozen(batch)[0]

    return infer


@contextmanager
def _grappler_option(name: str | None):
    """Turn one grappler rewrite on while a function runs: the option is part of the key under which the
    optimised graph is cached, so it must hold at every call, not only the first."""
    import tensorflow as tf

    if name is None:
        yield
        return
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({name: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(previous | {name: previous.get(name, False)})


def predict(infer, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    """Class probabilities for every path, in order, in batches."""
    from .data.pipeline import make_dataset

    data = make_dataset(paths, np.zeros(len(paths), dtype=int), image_size, batch_size)
    batches = [np.asarray(infer(images), dtype=np.float64) for images, _ in data]
    return np.concatenate(batches) if batches else np.zeros((0, 0))


def predictions_frame(rows: pd.DataFrame, paths: list[str], probs: np.ndarray, task: Task) -> pd.DataFrame:
    y_pred = metric_functions.predict(probs)
    frame = pd.DataFrame({
        "path": paths, "filename": rows["filename"].to_numpy(), "label": rows["label"].to_numpy(),
        "group": rows["group"].astype(str).to_numpy(), "noisy": rows["noisy"].astype(bool).to_numpy(),
        "y_true": rows["target"].to_numpy(), "y_pred": y_pred,
        "confidence": metric_functions.confidence(probs),
    })
    frame["correct"] = frame["y_true"] == frame["y_pred"]
    for column, values in zip(probability_columns(task), probs.T):
        frame[column] = values
    return frame


def already_done(folder: Path, split: str, sha: str, precision: str) -> dict | None:
    stored = workspace.read_json(folder / "metrics" / f"{split}.json")
    if stored and stored.get("checkpoint_sha256") == sha and stored.get("precision") == precision \
            and (folder / "predictions" / f"{split}.parquet").exists():
        return stored
    return None


def evaluate_run(root: Path, run_id: str, split: str = "test", checkpoint: str = "best",
                 batch_size: int | None = None, precision: str = "float32", jit: bool = False,
                 force: bool = False, log=print) -> Evaluation:
    folder = runs.require(root, run_id)
    config = RunConfig.from_dict(runs.read_config(root, run_id))
    task = get_task(config.task)
    path = checkpoint_file(root, run_id, checkpoint)
    sha = file_sha256(path)
    stored = None if force else already_done(folder, split, sha, precision)
    if stored:
        log(f"run {run_id}: {split} predictions already belong to this {checkpoint} checkpoint; nothing to do")
        return Evaluation(pd.read_parquet(folder / "predictions" / f"{split}.parquet"), stored, skipped=True)
    dataset, rows = split_rows(root, run_id, config, split)
    paths = dataset.absolute_paths(rows)
    check_files(paths, dataset.name)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    infer = load_for_inference(path, config, precision, jit)
    started = time.perf_counter()
    probs = predict(infer, paths, config.image_size, batch_size)
    seconds = time.perf_counter() - started
    frame = predictions_frame(rows, paths, probs, task)
    result = metric_functions.compute_metrics(frame["y_true"].to_numpy(), probs, task.class_names)
    result |= {"run_id": run_id, "split": split, "task": task.id, "checkpoint": checkpoint,
               "checkpoint_sha256": sha, "precision": precision, "jit": jit, "batch_size": batch_size,
               "inference_seconds": round(seconds, 3), "patches_per_second": round(len(paths) / seconds, 1),
               "evaluated": runs.now()}
    workspace.write_parquet(folder / "predictions" / f"{split}.parquet", frame)
    workspace.write_json(folder / "metrics" / f"{split}.json", result)
    log(f"run {run_id}: evaluated {len(paths)} {split} patches in {seconds:.1f} s "
        f"({len(paths) / seconds:.0f} patches/s): accuracy {result['accuracy']:.3f}, "
        f"balanced accuracy {result['balanced_accuracy']:.3f}")
    return Evaluation(frame, result)
