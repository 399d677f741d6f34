"""Metrics per slice of a split, for the manifest's metadata columns (breast density, subtlety, assessment,
view, ...), as a pure function.

    compute(predictions, manifest, class_names) -> dict

`predictions` is an evaluation predictions frame (evaluation.predictions_frame): `filename`, `y_true` (class
index) and the probability columns `p_*`, in class order. `manifest` is the dataset's manifest
(data/store.py). A slice column is any manifest column that is not one of the importers' own
(STANDARD_COLUMNS) and has 2 to MAX_LEVELS distinct values among the predicted patches; missing values form
their own slice. Each slice's accuracy, balanced accuracy and ROC AUC (one-vs-rest macro for several classes)
and their 95 % bootstrap intervals come from ddsm_core.metrics.compute_metrics, the one place they are
computed. A slice smaller than `min_size` is listed with its size only; an undefined AUC (a class absent
from the slice) is None with a note.

Returned (JSON-serialisable):
    {"min_size": int, "n_boot": int,
     "columns": {column: [{"value", "n", "accuracy", "accuracy_ci", "balanced_accuracy",
                           "balanced_accuracy_ci", "roc_auc", "roc_auc_ci", "note"}, ...]}}
with slices in natural order of their values, missing last. No slice column gives {"columns": {}}.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .metrics import compute_metrics

__all__ = ["compute", "slice_columns"]

# What the importers write for every dataset (data/store.py) and the seed CSV's group sources: not metadata.
STANDARD_COLUMNS = frozenset({
    "path", "filename", "label", "split", "group", "width", "height", "channels", "dark_fraction",
    "saturated_block", "noisy", "target", "y", "patient_id", "patient", "mammogram_id", "mammogram",
    "source_image", "source_width", "source_height", "box_x", "box_y", "box_size", "context", "roi_outline",
    "abnormality_id",  # the CBIS-DDSM importer's: where a patch was cut, and the abnormality's number in its image
})
MAX_LEVELS = 12
MIN_SIZE = 30
N_BOOT = 200
MISSING = "(missing)"


def slice_columns(frame: pd.DataFrame, max_levels: int = MAX_LEVELS) -> list[str]:
    """Metadata columns of a frame worth slicing by: not STANDARD_COLUMNS, 2 to max_levels distinct values."""
    return [column for column in frame.columns
            if column not in STANDARD_COLUMNS and 2 <= frame[column].nunique(dropna=False) <= max_levels]


def _natural_key(value):
    """Numbers by value, then text with its digit runs compared as numbers ("view 2" before "view 10")."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (0, float(value), [])
    return (1, 0.0, [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(value))])


def _plain(value):
    """A JSON-friendly slice value: python scalar, MISSING for NaN/None."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return MISSING
    return value.item() if hasattr(value, "item") else value


def _slice_metrics(y_true, probs, class_names, min_size, n_boot, seed) -> dict:
    n = int(len(y_true))
    empty = {"n": n, "accuracy": None, "accuracy_ci": None, "balanced_accuracy": None,
             "balanced_accuracy_ci": None, "roc_auc": None, "roc_auc_ci": None}
    if n < min_size:
        return empty | {"note": f"fewer than {min_size} patches"}
    metrics = compute_metrics(y_true, probs, class_names, n_boot=n_boot, seed=seed)
    interval = metrics["bootstrap"]
    note = None if metrics["roc_auc"] is not None else "AUC undefined: a class has no patches in this slice"
    return {"n": n, "accuracy": metrics["accuracy"], "accuracy_ci": interval["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"], "balanced_accuracy_ci": interval["balanced_accuracy"],
            "roc_auc": metrics["roc_auc"], "roc_auc_ci": interval["roc_auc"], "note": note}


def compute(predictions: pd.DataFrame, manifest: pd.DataFrame, class_names, min_size: int = MIN_SIZE,
            n_boot: int = N_BOOT, seed: int = 0, max_levels: int = MAX_LEVELS) -> dict:
    """Metrics per slice of every metadata column (see the module docstring). Raises ValueError on a
    predictions frame without filename/y_true/one p_* column per class, or a patch missing from the manifest."""
    class_names = [str(name) for name in class_names]
    columns = [c for c in predictions.columns if str(c).startswith("p_")]
    missing = [c for c in ("filename", "y_true") if c not in predictions.columns]
    if missing or len(columns) != len(class_names):
        raise ValueError(f"predictions need filename, y_true and one p_* column per class ({len(class_names)}); "
                         f"missing {missing or 'none'}, found {len(columns)} p_* column(s)")
    metadata = manifest.drop_duplicates("filename").set_index("filename")
    unknown = ~predictions["filename"].isin(metadata.index)
    if unknown.any():
        raise ValueError(f"{int(unknown.sum())} predicted patch(es) are not in the manifest, "
                         f"e.g. {predictions.loc[unknown, 'filename'].iloc[0]}")
    rows = metadata.loc[predictions["filename"].to_numpy()].reset_index()
    y_true = predictions["y_true"].to_numpy(dtype=np.int64)
    probs = predictions[columns].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    result = {"min_size": int(min_size), "n_boot": int(n_boot), "columns": {}}
    for column in slice_columns(rows.drop(columns=["filename"]), max_levels):
        values = rows[column]
        masks = [(_plain(level), (values == level).fillna(False).to_numpy(dtype=bool))
                 for level in sorted(values.dropna().unique().tolist(), key=_natural_key)]
        if values.isna().any():
            masks.append((MISSING, values.isna().to_numpy()))
        entries = [{"value": value} | _slice_metrics(y_true[mask], probs[mask], class_names, min_size, n_boot, seed)
                   for value, mask in masks]
        result["columns"][str(column)] = entries
    return result
