"""Two runs compared on the patches both predicted, as pure functions (the style of ddsm_core.metrics).

Public API:
    compare_predictions(y_true, probs_a, pred_a, probs_b, pred_b, class_names, n_boot=1000, seed=0) -> dict
    pair(frame_a, frame_b) -> DataFrame          two predictions frames joined on filename
    compare_runs(root, run_a, run_b, split="test", n_boot=1000, seed=0) -> dict   what `compare --json` prints
    patch_across_runs(results, filename) -> DataFrame   one patch as each of several runs predicted it

The headline metrics (METRICS) are those of ddsm_core.metrics and scikit-learn:
accuracy, balanced accuracy (mean recall over the classes present), macro F1
(over the classes present in the true or predicted labels, as sklearn's
f1_score(average="macro")) and ROC AUC (binary: of the second class's
probability; otherwise one-vs-rest macro). For each, b - a and a paired
bootstrap 95% percentile interval of that difference: every resample draws
patches with replacement and scores both runs on the same draw, so what the
runs have in common (hard patches) cancels out. Resamples are weight vectors,
drawn in chunks, with np.random.default_rng(seed): the same seed gives the same
intervals. A resample lacking a class leaves ROC AUC undefined: it is skipped
(and said in notes).

The dict is JSON-serialisable; an undefined number is None with the reason in notes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from . import runs
from .errors import UserError
from .evaluation import probability_columns
from .metrics import _auc_plan, _weighted_auc  # the weighted Mann-Whitney AUC the run metrics' bootstrap uses
from .tasks import get_task

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1",
                 "roc_auc": "ROC AUC"}
N_BOOT = 1000
# resamples are drawn in chunks holding about this many weights (memory: 8 bytes each)
_CHUNK_CELLS = 2_000_000


# ----------------------------------------------------------------------------
# Metrics of many weighted resamples at once
# ----------------------------------------------------------------------------

def _safe_div(num, den) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 of a stack of confusion matrices (b, k, k) -> (b,) each."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    total = cm.sum(axis=(1, 2))
    present = support > 0
    seen = (support + predicted) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": tp.sum(axis=1) / total,
            "balanced_accuracy": _safe_div(tp, support).sum(axis=1) / present.sum(axis=1),
            "macro_f1": (_safe_div(2 * tp, support + predicted) * seen).sum(axis=1) / seen.sum(axis=1),
        }


def _auc_plans(probs: np.ndarray, y_true: np.ndarray) -> list:
    """What ROC AUC ranks: the second class's probability (binary), else each class against the rest."""
    if probs.shape[1] == 2:
        return [_auc_plan(probs[:, 1], y_true == 1)]
    return [_auc_plan(probs[:, c], y_true == c) for c in range(probs.shape[1])]


def _weighted_roc_auc(w: np.ndarray, plans: list) -> np.ndarray:
    """ROC AUC per row of weights (b, n): binary, or the one-vs-rest macro mean (NaN where undefined)."""
    return np.stack([_weighted_auc(w, plan) for plan in plans], axis=1).mean(axis=1)


def _roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1])))


def _interval(values: np.ndarray):
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def _paired_bootstrap(y_true, pred_a, pred_b, probs_a, probs_b, k: int, n_boot: int, seed, with_auc: bool) -> dict:
    """b - a per metric for each of n_boot paired resamples: {metric: (n_boot,) array}."""
    n = len(y_true)
    rng = np.random.default_rng(seed)
    cells = [np.zeros((n, k * k)) for _ in range(2)]
    for cell, pred in zip(cells, (pred_a, pred_b)):
        cell[np.arange(n), y_true * k + pred] = 1.0
    plans = [_auc_plans(probs_a, y_true), _auc_plans(probs_b, y_true)] if with_auc else []
    differences = {name: [] for name in METRICS}
    chunk = max(1, min(n_boot, _CHUNK_CELLS // n))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        w = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        a_scores, b_scores = (_from_confusion((w @ cell).reshape(b, k, k)) for cell in cells)
        for name in a_scores:
            differences[name].append(b_scores[name] - a_scores[name])
        if plans:
            differences["roc_auc"].append(_weighted_roc_auc(w, plans[1]) - _weighted_roc_auc(w, plans[0]))
        done += b
    return {name: np.concatenate(values) if values else np.empty(0) for name, values in differences.items()}


# ----------------------------------------------------------------------------
# Two sets of predictions of the same patches
# ----------------------------------------------------------------------------

def _check(y_true, probs_a, pred_a, probs_b, pred_b, class_names):
    y_true = np.asarray(y_true, dtype=np.int64)
    k = len(class_names)
    arrays = [np.asarray(probs_a, dtype=np.float64), np.asarray(pred_a, dtype=np.int64),
              np.asarray(probs_b, dtype=np.float64), np.asarray(pred_b, dtype=np.int64)]
    n = len(y_true)
    if n == 0:
        raise ValueError("no patches to compare.")
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {k}.")
    for name, array in zip(("probs_a", "pred_a", "probs_b", "pred_b"), arrays):
        if len(array) != n:
            raise ValueError(f"{name} has {len(array)} rows but y_true has {n}.")
    for name, probs in (("probs_a", arrays[0]), ("probs_b", arrays[2])):
        if probs.shape != (n, k):
            raise ValueError(f"{name} must have shape ({n}, {k}), got {probs.shape}.")
    for name, labels in (("y_true", y_true), ("pred_a", arrays[1]), ("pred_b", arrays[3])):
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"{name} must hold class indices in 0..{k - 1}.")
    return y_true, *arrays


def compare_predictions(y_true, probs_a, pred_a, probs_b, pred_b, class_names, n_boot: int = N_BOOT,
                        seed=0) -> dict:
    """Run a against run b on the same patches (row i of every array is patch i).

    y_true, pred_a, pred_b: class indices (n,); probs_a, probs_b: (n, k) probabilities.
    Returns {n, class_names, metrics: {name: {a, b, difference, ci}}, confusion_matrices: {a, b},
    disagreements, n_boot, seed, notes}; `ci` is the paired bootstrap 95% interval of b - a.
    """
    y_true, probs_a, pred_a, probs_b, pred_b = _check(y_true, probs_a, pred_a, probs_b, pred_b, class_names)
    k = len(class_names)
    notes: list[str] = []
    matrices = [np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k) for pred in (pred_a, pred_b)]
    point = [{name: float(value[0]) for name, value in _from_confusion(cm[None].astype(np.float64)).items()}
             for cm in matrices]
    absent = [class_names[c] for c in range(k) if not np.any(y_true == c)]
    with_auc = not absent
    if with_auc:
        point[0]["roc_auc"], point[1]["roc_auc"] = _roc_auc(y_true, probs_a), _roc_auc(y_true, probs_b)
    else:
        notes.append(f"ROC AUC is undefined: no true patches of class {', '.join(map(repr, absent))}.")
        point[0]["roc_auc"] = point[1]["roc_auc"] = None
    differences = (_paired_bootstrap(y_true, pred_a, pred_b, probs_a, probs_b, k, n_boot, seed, with_auc)
                   if n_boot else {name: np.empty(0) for name in METRICS})
    if not n_boot:
        notes.append("Bootstrap skipped: n_boot is 0.")
    skipped = int(np.sum(~np.isfinite(differences["roc_auc"]))) if with_auc else 0
    if skipped:
        notes.append(f"The ROC AUC bootstrap skipped {skipped} of {n_boot} resamples lacking a class.")
    metrics = {}
    for name in METRICS:
        a, b = point[0].get(name), point[1].get(name)
        metrics[name] = {"a": a, "b": b, "difference": None if a is None or b is None else b - a,
                         "ci": _interval(differences[name]) if a is not None and b is not None else None}
    return {
        "n": int(len(y_true)),
        "class_names": list(class_names),
        "metrics": metrics,
        "confusion_matrices": {"a": matrices[0].tolist(), "b": matrices[1].tolist()},
        "disagreements": int(np.sum(pred_a != pred_b)),
        "n_boot": int(n_boot),
        "seed": seed,
        "notes": notes,
    }


# ----------------------------------------------------------------------------
# Two runs in a workspace
# ----------------------------------------------------------------------------

def pair(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> pd.DataFrame:
    """The patches both frames predicted, joined on filename (a's order); b's columns get a `_b` suffix."""
    a = frame_a.drop_duplicates("filename")
    b = frame_b.drop_duplicates("filename")
    return a.merge(b, on="filename", how="inner", suffixes=("", "_b"), sort=False).reset_index(drop=True)


def _problems(root: Path, run_a: str, run_b: str, split: str) -> tuple[list[str], dict, dict]:
    config_a, config_b = runs.read_config(root, run_a), runs.read_config(root, run_b)
    problems = []
    if run_a == run_b:
        problems.append(f"both runs are {run_a}: pick two different runs to compare")
    if config_a.get("dataset") != config_b.get("dataset"):
        problems.append(f"runs {run_a} and {run_b} were trained on different datasets ({config_a.get('dataset')} "
                        f"and {config_b.get('dataset')}): compare runs of one dataset")
    if config_a.get("task") != config_b.get("task"):
        problems.append(f"runs {run_a} and {run_b} solve different tasks ({config_a.get('task')} and "
                        f"{config_b.get('task')}), whose classes differ: compare runs of one task")
    for run_id in (run_a, run_b):
        if not runs.predictions_file(root, run_id, split).is_file():
            problems.append(f"run {run_id} has no {split} predictions: evaluate it first "
                            f"(python -m ddsm_core evaluate --run {run_id} --split {split})")
    return problems, config_a, config_b


def compare_runs(root: Path, run_a: str, run_b: str, split: str = "test", n_boot: int = N_BOOT, seed=0) -> dict:
    """compare_predictions on the `split` patches both runs predicted, plus which runs and patches.

    Refuses (UserError, one sentence per problem) two runs of different datasets
    or tasks, a run without predictions on the split, and pairs with no patch in
    common or with different true classes for a patch. Adds to the result:
    runs {a, b}, dataset, task, split, only_a and only_b (patches one run alone
    predicted) and patches: one {filename, y_true, pred_a, pred_b, confidence_a,
    confidence_b} per disagreement (class indices; class_names names them).
    """
    problems, config, _ = _problems(root, run_a, run_b, split)
    if n_boot < 0:
        problems.append(f"--n-boot must be 0 or more, not {n_boot}")
    if problems:
        raise UserError(problems)
    task = get_task(config["task"])
    columns = ["filename", "y_true", "y_pred", "confidence", *probability_columns(task)]
    frames = [pd.read_parquet(runs.predictions_file(root, run_id, split), columns=columns) for run_id in (run_a, run_b)]
    joined = pair(*frames)
    if joined.empty:
        raise UserError(f"runs {run_a} and {run_b} have no {split} patch in common: nothing to compare")
    differ = joined["y_true"] != joined["y_true_b"]
    if differ.any():
        raise UserError(f"runs {run_a} and {run_b} disagree on the true class of {int(differ.sum())} patch(es) "
                        f"(e.g. {joined.loc[differ, 'filename'].iat[0]}): was the dataset re-imported between them? "
                        "Re-evaluate the older run")
    probability = probability_columns(task)
    result = compare_predictions(joined["y_true"], joined[probability].to_numpy(), joined["y_pred"],
                                 joined[[f"{c}_b" for c in probability]].to_numpy(), joined["y_pred_b"],
                                 task.class_names, n_boot=n_boot, seed=seed)
    disagree = joined[joined["y_pred"] != joined["y_pred_b"]]
    patches = [{"filename": row.filename, "y_true": int(row.y_true), "pred_a": int(row.y_pred),
                "pred_b": int(row.y_pred_b), "confidence_a": float(row.confidence),
                "confidence_b": float(row.confidence_b)} for row in disagree.itertuples(index=False)]
    names = set(joined["filename"])
    return {"runs": {"a": run_a, "b": run_b}, "dataset": config["dataset"], "task": int(config["task"]),
            "split": split, **result,
            "only_a": int((~frames[0]["filename"].isin(names)).sum()),
            "only_b": int((~frames[1]["filename"].isin(names)).sum()),
            "patches": patches}


def disagreement_groups(result: dict) -> dict[str, list[dict]]:
    """The disagreement patches of compare_runs by who was right: 'a right', 'b right', 'both wrong'."""
    groups = {"a right": [], "b right": [], "both wrong": []}
    for patch in result["patches"]:
        key = ("a right" if patch["pred_a"] == patch["y_true"] else
               "b right" if patch["pred_b"] == patch["y_true"] else "both wrong")
        groups[key].append(patch)
    return groups


def text_report(result: dict) -> str:
    """compare_runs' result as the CLI prints it: metrics table, both confusion matrices, disagreements."""
    a, b = result["runs"]["a"], result["runs"]["b"]
    lines = [f"a = {a}", f"b = {b}",
             f"dataset {result['dataset']}, task {result['task']}, {result['split']} split: {result['n']} patches "
             f"predicted by both ({result['only_a']} by a only, {result['only_b']} by b only)", "",
             f"{'metric':<20}{'a':>8}{'b':>8}{'b - a':>9}   95% CI of b - a (paired bootstrap, {result['n_boot']})"]
    for name, values in result["metrics"].items():
        shown = [f"{values[key]:>8.3f}" if values[key] is not None else f"{'-':>8}" for key in ("a", "b")]
        difference = f"{values['difference']:>+9.3f}" if values["difference"] is not None else f"{'-':>9}"
        ci = f"[{values['ci'][0]:+.3f}, {values['ci'][1]:+.3f}]" if values["ci"] else "-"
        lines.append(f"{METRIC_LABELS.get(name, name):<20}{''.join(shown)}{difference}   {ci}")
    names = result["class_names"]
    for key in ("a", "b"):
        lines += ["", f"confusion matrix of {key} (rows true, columns predicted: {', '.join(names)})"]
        lines += ["  " + " ".join(f"{count:>6d}" for count in row) for row in result["confusion_matrices"][key]]
    groups = disagreement_groups(result)
    lines += ["", f"{result['disagreements']} patch(es) where the runs disagree: "
              + ", ".join(f"{len(patches)} {group}" for group, patches in groups.items())]
    for patch in result["patches"][:20]:
        lines.append(f"  {patch['filename']}  true {names[patch['y_true']]}  a: {names[patch['pred_a']]}  "
                     f"b: {names[patch['pred_b']]}")
    if len(result["patches"]) > 20:
        lines.append(f"  ... and {len(result['patches']) - 20} more (all of them with --json)")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# One patch across runs
# ----------------------------------------------------------------------------

PATCH_COLUMNS = ["run", "task", "true", "predicted", "confidence", "correct"]


def patch_across_runs(results, filename: str) -> pd.DataFrame:
    """One row per run whose predictions hold `filename`: run, task, true and predicted class, confidence,
    correct. `results`: RunResults-like objects (run_id, task, predictions with true_name/pred_name)."""
    rows = []
    for result in results:
        frame = result.predictions
        hit = frame[frame["filename"] == filename]
        if hit.empty:
            continue
        row = hit.iloc[0]
        rows.append({"run": result.run_id, "task": result.task.id, "true": row["true_name"],
                     "predicted": row["pred_name"], "confidence": float(row["confidence"]),
                     "correct": bool(row["y_true"] == row["y_pred"])})
    return pd.DataFrame(rows, columns=PATCH_COLUMNS)
