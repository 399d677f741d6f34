"""Batched prediction of a run's checkpoint on a split, stored once, and the metrics computed from it.

The predictions file (runs.predictions_file): path, filename, label, group,
noisy, y_true, y_pred, correct, confidence, p_<class> per class. The metrics
file (runs.metrics_file): every number a reviewer needs (see ddsm_core.metrics)
plus which checkpoint made them, and the metrics per slice of the dataset's
metadata columns (ddsm_core.slices). A second evaluation of an unchanged
checkpoint does no inference.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import hardware, runs, slices, workspace
from . import metrics as metric_functions
from .config import RunConfig
from .data import store
from .errors import UserError
from .inference import load_for_inference, load_model, predict
from .tasks import Task, get_task

DEFAULT_BATCH_SIZE = 64


@dataclass
class Evaluation:
    predictions: pd.DataFrame
    metrics: dict
    skipped: bool = False


def probability_column(class_name: str) -> str:
    return "p_" + re.sub(r"[^0-9a-zA-Z]+", "_", class_name).strip("_")


def probability_columns(task: Task) -> list[str]:
    return [probability_column(name) for name in task.class_names]




def split_rows(root: Path, run_id: str, config: RunConfig, split: str) -> tuple[store.Dataset, pd.DataFrame]:
    """The patches of a split, as the run's task sees them (val/train from the run's own split)."""
    if split not in runs.SPLITS:
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(runs.SPLITS)}")
    dataset = store.load(root, config.dataset)
    rows = get_task(config.task).select(dataset.manifest)
    if split == "test":
        rows = rows[rows["split"] == "test"]
    else:
        subsets = pd.read_parquet(runs.split_file(root, run_id))
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


def already_done(root: Path, run_id: str, split: str, sha: str, precision: str) -> dict | None:
    stored = workspace.read_json(runs.metrics_file(root, run_id, split))
    if stored and stored.get("checkpoint_sha256") == sha and stored.get("precision") == precision \
            and runs.predictions_file(root, run_id, split).exists():
        return stored
    return None


def evaluate_run(root: Path, run_id: str, split: str = "test", checkpoint: str = "best",
                 batch_size: int | None = None, precision: str | None = None, jit: bool = False,
                 force: bool = False, log=print) -> Evaluation:
    """Predict a split with a checkpoint and store predictions and metrics (see the module docstring).

    precision: None for the run's own (recorded when it trained), or one of config.PRECISIONS.
    A head run whose feature cache still exists is evaluated from the cached
    features (its head alone, no backbone pass): the same model, up to the
    float16 rounding of the stored features.
    """
    runs.require(root, run_id)
    config = RunConfig.from_dict(runs.read_config(root, run_id))
    task = get_task(config.task)
    # by default the precision the run trained in (auto decided it for its machine)
    precision = hardware.choose_precision(precision or config.precision)
    path = runs.checkpoint_file(root, run_id, checkpoint)
    sha = workspace.file_sha256(path)
    stored = None if force else already_done(root, run_id, split, sha, precision)
    if stored:
        log(f"run {run_id}: {split} predictions already belong to this {checkpoint} checkpoint; nothing to do")
        frame = pd.read_parquet(runs.predictions_file(root, run_id, split))
        return Evaluation(frame, _update_reviewed(root, run_id, split, config, frame, stored), skipped=True)
    dataset, rows = split_rows(root, run_id, config, split)
    paths = dataset.absolute_paths(rows)
    started = time.perf_counter()
    probs, source = _from_feature_cache(root, config, path, rows), "feature cache"
    if probs is None:
        check_files(paths, dataset.name)
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        probs = predict(load_for_inference(path, config, precision, jit), paths, config.image_size, batch_size)
        # a bfloat16 softmax is off from summing to one by up to ~2e-3: rescale, the ranking is unchanged
        probs, source = probs / probs.sum(axis=1, keepdims=True), "patches"
    seconds = max(time.perf_counter() - started, 1e-9)
    frame = predictions_frame(rows, paths, probs, task)
    result = metric_functions.compute_metrics(frame["y_true"].to_numpy(), probs, task.class_names)
    result |= {"run_id": run_id, "split": split, "task": task.id, "checkpoint": checkpoint,
               "checkpoint_sha256": sha, "precision": precision, "jit": jit, "batch_size": batch_size,
               "inputs": source, "inference_seconds": round(seconds, 3),
               "patches_per_second": round(len(paths) / seconds, 1), "evaluated": runs.now(),
               "reviewed_labels": reviewed_metrics(root, config, frame, task),
               "slices": slices.compute(frame, dataset.manifest, task.class_names)}
    workspace.write_together({  # one evaluation's pair, never half of each even if killed
        runs.predictions_file(root, run_id, split): workspace.parquet_writer(frame),
        runs.metrics_file(root, run_id, split): workspace.json_writer(result),
    }, runs.results_journal(root, run_id, split))
    log(f"run {run_id}: evaluated {len(paths)} {split} patches from the {source} in {seconds:.1f} s "
        f"({len(paths) / seconds:.0f} patches/s): accuracy {result['accuracy']:.3f}, "
        f"balanced accuracy {result['balanced_accuracy']:.3f}")
    return Evaluation(frame, result)


def _from_feature_cache(root: Path, config: RunConfig, checkpoint: Path, rows: pd.DataFrame) -> np.ndarray | None:
    """Class probabilities of a head run from its cached features, or None (not a head run, cache removed)."""
    from . import features
    from .config import uses_feature_cache
    from .models import HEAD_LAYER

    if not uses_feature_cache(config):
        return None
    cache = features.find(root, features.cache_inputs(root, config, config.precision))
    if cache is None:
        return None
    head = load_model(checkpoint).get_layer(HEAD_LAYER)
    return np.asarray(head(cache.rows_for(rows["filename"].tolist())), dtype=np.float64)


def reviewed_metrics(root: Path, config: RunConfig, frame: pd.DataFrame, task: Task) -> dict | None:
    """The headline metrics again on the radiologists' reviewed labels (relabels applied, exclusions
    dropped), or None when no relabel or exclusion touches these patches. The stored predictions and the
    original-label metrics never change: this sits beside them, named as what it is."""
    from . import verdicts

    current = verdicts.current(root, config.dataset)
    touching = current[current["verdict"].isin(verdicts.CHANGING) & current["filename"].isin(frame["filename"])]
    if touching.empty:
        return None
    reviewed, summary = verdicts.reviewed_labels(frame, current, task.label_to_output())
    probs = reviewed[probability_columns(task)].to_numpy()
    computed = metric_functions.compute_metrics(reviewed["y_true"].to_numpy(), probs, task.class_names)
    headline = {k: computed.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "confusion_matrix",
                                              "bootstrap")}
    return headline | {"n_patches": len(reviewed), "changes": summary,
                       "verdicts_sha256": verdicts.snapshot(touching)["sha256"]}


def _update_reviewed(root: Path, run_id: str, split: str, config: RunConfig, frame: pd.DataFrame,
                     stored: dict) -> dict:
    """Verdicts change without the checkpoint changing: refresh the reviewed-label metrics alone. An
    evaluation stored before slices were part of it gets them too (from the stored predictions)."""
    task = get_task(config.task)
    updates = {}
    reviewed = reviewed_metrics(root, config, frame, task)
    if reviewed != stored.get("reviewed_labels"):
        updates["reviewed_labels"] = reviewed
    if "slices" not in stored:
        updates["slices"] = slices.compute(frame, store.load(root, config.dataset).manifest, task.class_names)
    if updates:
        stored = stored | updates
        workspace.write_json(runs.metrics_file(root, run_id, split), stored)
    return stored
