"""The audit's review-queue reasons (registered in ddsm_core.review_queue): pure functions of a run's predictions
and the stored audit, which the page passes as QueueContext.extra["audit"] (`review_extra`).

Both follow review_queue's contract: score(predictions, context) -> (score, why), two Series on the predictions'
index, higher score = look sooner, NaN = not queued. Without a stored audit nothing is queued.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

AUDIT = "audit"  # the QueueContext.extra key


def review_extra(root: Path, dataset: str, run_id: str | None) -> dict:
    """What a page puts in QueueContext.extra for these reasons: the stored audit of the dataset (and run)."""
    from .results import load

    return {AUDIT: load(root, dataset, run_id)}


def _empty(predictions: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    return pd.Series(np.nan, index=predictions.index), pd.Series("", index=predictions.index)


def likely_label_error(predictions: pd.DataFrame, context) -> tuple[pd.Series, pd.Series]:
    """Patches the audit flagged as likely mislabelled, lowest label quality first."""
    found = (context.extra or {}).get(AUDIT)
    if not found or not found.get("label_issues"):
        return _empty(predictions)
    issues = pd.DataFrame(found["label_issues"]).drop_duplicates("filename").set_index("filename")
    quality = predictions["filename"].map(issues["score"])
    why = [f"audit: labelled {issues.at[name, 'given']}, looks like {issues.at[name, 'suggested']} "
           f"(label quality {issues.at[name, 'score']:.3f}, {issues.at[name, 'source']})" if name in issues.index else ""
           for name in predictions["filename"]]
    return 1.0 - quality, pd.Series(why, index=predictions.index)


def cross_split_duplicate(predictions: pd.DataFrame, context) -> tuple[pd.Series, pd.Series]:
    """Patches with a near-duplicate in the other split, closest pair first."""
    found = (context.extra or {}).get(AUDIT)
    pairs = [d for d in (found or {}).get("duplicates") or [] if d["split_a"] != d["split_b"]]
    if not pairs:
        return _empty(predictions)
    frame = pd.DataFrame(pairs)
    both = pd.concat([
        frame.rename(columns={"a": "filename", "b": "partner", "split_b": "partner_split"}),
        frame.rename(columns={"b": "filename", "a": "partner", "split_a": "partner_split"}),
    ])[["filename", "partner", "partner_split", "distance"]]
    closest = both.sort_values("distance", kind="stable").drop_duplicates("filename").set_index("filename")
    distance = predictions["filename"].map(closest["distance"])
    why = [f"near-duplicate of {closest.at[name, 'partner_split']} patch {closest.at[name, 'partner']} "
           f"(distance {closest.at[name, 'distance']:.3f})" if name in closest.index else ""
           for name in predictions["filename"]]
    return 1.0 - distance, pd.Series(why, index=predictions.index)
