"""Review queues: which of a run's patches a reviewer should look at next, and why (pure; no Streamlit, no TF).

A queue ranks a run's predictions on a split by a *reason*. The reasons are a
registry, REASONS (name -> Reason), so more can be added without touching the
pages: register(Reason(name, description, score, needs=(), load=None)) where

    score(predictions, context) -> (score, why)

gets the run's predictions frame (filename, y_true, y_pred, confidence,
p_<class>..., as ddsm_core.evaluation stores them) and a QueueContext, and
returns two Series on the frame's index: a number per patch (higher = look
sooner; NaN = not in this queue) and a short text saying why the patch is
queued. `needs` names the context fields a reason requires (e.g. "other" for a
second run's predictions; the page asks for them); `load(root, dataset, run_id)`
returns what the page reads from the workspace for it, into context.extra.

Public API:
    REASONS, Reason, QueueContext, register(reason)
    rank(predictions, reason, context) -> DataFrame      queued patches, best first, with `score` and `why`
    with_verdicts(rows, current) -> DataFrame             adds `verdict` and `new_label` (the current verdict)
    select(rows, true=None, pred=None, state="any")       filter by true/predicted class and verdict state
    progress(rows) -> (reviewed, total)
    neighbours(filenames, filename) -> (previous, next)   where the queue goes from a patch
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .audit import reasons as audit_reasons
from .errors import UserError
from .verdicts import VERDICTS

# a patch's verdict state, as the queue filters it: any, none yet, any verdict, or one kind
STATES = ("unreviewed", "reviewed", "any", *VERDICTS)


@dataclass(frozen=True)
class QueueContext:
    """What a reason may need beyond the run's own predictions.

    probability_columns: the p_<class> columns, in the task's class order.
    other: a second run's predictions on the same split (same dataset and task), for "disagreement".
    extra: anything a later reason needs (e.g. the data audit's label issues), by name.
    """

    probability_columns: list[str]
    class_names: list[str]
    other: pd.DataFrame | None = None
    other_run: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reason:
    """A way to rank patches. `needs`: QueueContext fields (or extra keys) it cannot do without;
    `load(root, dataset, run_id) -> dict`: what the page reads for it from the workspace, into context.extra."""

    name: str
    description: str
    score: Callable[[pd.DataFrame, QueueContext], tuple[pd.Series, pd.Series]]
    needs: tuple[str, ...] = ()
    load: Callable[..., dict] | None = None


REASONS: dict[str, Reason] = {}


def register(reason: Reason) -> Reason:
    REASONS[reason.name] = reason
    return reason


# ---------------------------------------------------------------- the reasons

def _wrong_confident(predictions: pd.DataFrame, context: QueueContext) -> tuple[pd.Series, pd.Series]:
    wrong = predictions["y_true"] != predictions["y_pred"]
    score = predictions["confidence"].where(wrong)
    names = context.class_names
    why = [f"predicted {names[p]} with {c:.2f}, true {names[t]}"
           for t, p, c in zip(predictions["y_true"], predictions["y_pred"], predictions["confidence"])]
    return score, pd.Series(why, index=predictions.index)


def _smallest_margin(predictions: pd.DataFrame, context: QueueContext) -> tuple[pd.Series, pd.Series]:
    probs = predictions[context.probability_columns].to_numpy(dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    best, second = order[:, 0], order[:, 1]
    rows = np.arange(len(probs))
    margin = probs[rows, best] - probs[rows, second]
    names = context.class_names
    why = [f"margin {m:.3f}: {names[i]} {probs[r, i]:.2f} vs {names[j]} {probs[r, j]:.2f}"
           for r, (m, i, j) in enumerate(zip(margin, best, second))]
    return pd.Series(-margin, index=predictions.index), pd.Series(why, index=predictions.index)


def _disagreement(predictions: pd.DataFrame, context: QueueContext) -> tuple[pd.Series, pd.Series]:
    """Patches the other run predicted differently; both runs sure (the lower of the two confidences) first."""
    other = context.other.drop_duplicates("filename").set_index("filename")
    other_pred = predictions["filename"].map(other["y_pred"])
    other_confidence = predictions["filename"].map(other["confidence"])
    differ = other_pred.notna() & (other_pred != predictions["y_pred"])
    score = np.minimum(predictions["confidence"], other_confidence).where(differ)
    names = context.class_names
    why = [f"this run: {names[p]} ({c:.2f}); {context.other_run or 'the other run'}: "
           f"{names[int(q)]} ({d:.2f})" if ok else ""
           for p, c, q, d, ok in zip(predictions["y_pred"], predictions["confidence"], other_pred.fillna(0),
                                     other_confidence.fillna(0), differ)]
    return score, pd.Series(why, index=predictions.index)


WRONG_CONFIDENT = register(Reason(
    "wrong, most confident first", "misclassified patches, the ones the model was surest of first",
    _wrong_confident))
SMALLEST_MARGIN = register(Reason(
    "smallest margin between the two best classes", "every patch, the closest call between the two most "
    "probable classes first", _smallest_margin))
DISAGREEMENT = register(Reason(
    "disagreement with another run", "patches another run of the same task predicted differently, the ones "
    "both runs were surest of first", _disagreement, needs=("other",)))
LIKELY_LABEL_ERROR = register(Reason(  # the data audit's findings; the page passes them (audit.reasons.review_extra)
    "likely label error", "patches the data audit flagged as likely mislabelled, lowest label quality first",
    audit_reasons.likely_label_error, load=audit_reasons.review_extra))
CROSS_SPLIT_DUPLICATE = register(Reason(
    "cross-split duplicate", "patches with a near-duplicate in the other split (data audit), closest first",
    audit_reasons.cross_split_duplicate, load=audit_reasons.review_extra))


# ---------------------------------------------------------------- building and filtering a queue

def get_reason(name: str) -> Reason:
    try:
        return REASONS[name]
    except KeyError:
        raise UserError(f"unknown review reason {name!r}: choose one of {', '.join(REASONS)}") from None


def rank(predictions: pd.DataFrame, reason: str | Reason, context: QueueContext) -> pd.DataFrame:
    """The patches the reason queues, highest score first (ties: by filename), with `score`, `why` and
    `rank` (1-based) columns added."""
    reason = get_reason(reason) if isinstance(reason, str) else reason
    missing = [need for need in reason.needs if getattr(context, need, context.extra.get(need)) is None]
    if missing:
        raise UserError(f"the review reason {reason.name!r} needs {', '.join(missing)}")
    score, why = reason.score(predictions, context)
    rows = predictions.assign(score=score, why=why)
    rows = rows[rows["score"].notna()]
    rows = rows.sort_values(["score", "filename"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return rows.assign(rank=np.arange(1, len(rows) + 1))


def with_verdicts(rows: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """rows with the patch's current verdict (`verdict`, None when unreviewed) and `new_label`."""
    by_patch = current.drop_duplicates("filename", keep="last").set_index("filename")
    verdict = rows["filename"].map(by_patch["verdict"]) if len(by_patch) else pd.Series(None, index=rows.index)
    new_label = rows["filename"].map(by_patch["new_label"]) if len(by_patch) else pd.Series(None, index=rows.index)
    return rows.assign(verdict=verdict.astype(object).where(verdict.notna(), None), new_label=new_label)


def select(rows: pd.DataFrame, true=None, pred=None, state: str = "any") -> pd.DataFrame:
    """Rows (with_verdicts) of the given true/predicted classes (index lists; None = any) and verdict state."""
    if state not in STATES:
        raise UserError(f"unknown verdict state {state!r}: choose one of {', '.join(STATES)}")
    keep = pd.Series(True, index=rows.index)
    if true:
        keep &= rows["y_true"].isin(list(true))
    if pred:
        keep &= rows["y_pred"].isin(list(pred))
    reviewed = rows["verdict"].notna()
    if state == "unreviewed":
        keep &= ~reviewed
    elif state == "reviewed":
        keep &= reviewed
    elif state != "any":
        keep &= rows["verdict"] == state
    return rows[keep]


def progress(rows: pd.DataFrame) -> tuple[int, int]:
    """(reviewed, total) of a queue (with_verdicts)."""
    return int(rows["verdict"].notna().sum()), len(rows)


def neighbours(filenames: list[str], filename: str | None) -> tuple[str | None, str | None]:
    """The patches before and after `filename` in a queue (None at the ends or when it is not queued)."""
    if filename not in filenames:
        return None, (filenames[0] if filenames else None)
    position = filenames.index(filename)
    return (filenames[position - 1] if position > 0 else None,
            filenames[position + 1] if position + 1 < len(filenames) else None)
