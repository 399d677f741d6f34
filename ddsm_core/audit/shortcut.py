"""The shortcut probe: how well do image properties alone, blind to tissue, predict a task's labels?

Pure functions, no I/O. The properties (PROPERTIES) are the manifest's dark_fraction and
saturated_block (computed at import, data/noise.py) and the audit's mean, std and border_fraction
(audit/patches.py). A cross-validated logistic regression on them gives out-of-fold probabilities for
every patch of a task; their ROC AUC (one-vs-rest macro for several classes) with a 95 % bootstrap
interval, both from ddsm_core.metrics, is the properties-only baseline. A value near the model's own AUC
says the task can be solved without looking at the tissue; near 0.5, the properties carry no label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..metrics import compute_metrics

PROPERTIES = ("dark_fraction", "saturated_block", "mean", "std", "border_fraction")
FOLDS = 5
N_BOOT = 200
WARN_AUC = 0.8  # a properties-only AUC above this is worth a warning


def probe(properties: np.ndarray, targets: np.ndarray, class_names: list[str], folds: int = FOLDS,
          seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """{"auc", "ci", "n", "note"} of a properties-only logistic regression, from out-of-fold probabilities.

    properties (n, p), targets (n,) class indices into class_names. auc and ci are None (with a note) when a
    class has fewer than two patches.
    """
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(targets, minlength=len(class_names))
    folds = min(folds, int(counts.min()))
    if folds < 2:
        return {"auc": None, "ci": None, "n": int(len(targets)),
                "note": "a class has fewer than two patches: no cross-validated AUC"}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):  # five columns: BLAS threads only contend
        probs = cross_val_predict(model, np.asarray(properties, dtype=np.float64), targets, cv=splitter,
                                  method="predict_proba")
    probs = probs / probs.sum(axis=1, keepdims=True)
    metrics = compute_metrics(targets, probs, class_names, n_boot=n_boot, seed=seed)
    return {"auc": metrics["roc_auc"], "ci": metrics["bootstrap"]["roc_auc"], "n": int(len(targets)), "note": None}


def correlations(properties: pd.DataFrame, probabilities: pd.DataFrame) -> dict:
    """{property: {probability column: Spearman rho}} over the rows both frames share (same index order).

    A rho far from 0 means the model's output moves with a property (None where a column is constant).
    """
    result = {}
    for name in properties.columns:
        result[name] = {}
        for column in probabilities.columns:
            x, y = properties[name].to_numpy(), probabilities[column].to_numpy()
            constant = np.ptp(x) == 0 or np.ptp(y) == 0
            result[name][column] = None if constant else float(spearmanr(x, y).statistic)
    return result
