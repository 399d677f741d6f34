"""Likely label errors: cleanlab on out-of-sample predicted probabilities. Pure functions, no I/O.

Training patches: a cheap model (standardised features, multinomial logistic regression) is fitted in
K stratified folds, and each patch gets the probabilities of the model that did not see it
(`out_of_fold_probabilities`). Test patches: a run's own predictions are already out-of-sample.
`rank` turns (given labels, probabilities) into cleanlab's label quality score per patch (self-confidence:
the probability of the given label; low = likely wrong), cleanlab's `find_label_issues` flag and the
suggested class (the most probable one).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

FOLDS = 5
PARALLEL_FROM = 20_000  # fit the folds in parallel processes from this many patches (below, starting them costs more)


def cheap_model(seed: int = 0):
    """The label-error model: standardised features into a multinomial logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int = FOLDS, seed: int = 0,
                              n_jobs: int = 1, model=None) -> tuple[np.ndarray, np.ndarray]:
    """(probs (n, k), classes (k,)): each row predicted by a model fitted on the other folds.

    labels are any integer codes; classes are the sorted distinct ones (the probability columns). The
    number of folds drops to the smallest class's size when that is smaller (at least 2 needed). The folds
    are fitted in n_jobs processes from PARALLEL_FROM patches on, in this process below.
    """
    labels = np.asarray(labels)
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("label errors need at least two classes among the training patches")
    smallest = int(np.bincount(codes).min())
    folds = min(folds, smallest)
    if folds < 2:
        raise ValueError("label errors need at least two training patches of every class")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: BLAS threads only contend
        probs = cross_val_predict(model or cheap_model(seed), features, codes, cv=splitter, method="predict_proba",
                                  n_jobs=n_jobs if len(codes) >= PARALLEL_FROM else 1)
    return probs, classes


def rank(given: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Per row: given and suggested (column indices into probs), score (cleanlab label quality, 0-1, low =
    likely wrong), issue (cleanlab find_label_issues) and rank (0 = most likely wrong, by score)."""
    given = np.asarray(given, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    score = get_label_quality_scores(given, probs)
    present = np.unique(given)
    # cleanlab's filter needs every class it is given to be present; judge on the columns of present classes
    issue = np.zeros(len(given), dtype=bool)
    if len(present) >= 2 and len(given) > len(present):
        column = np.searchsorted(present, given)
        sub = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
        issue = find_label_issues(column, sub, filter_by="prune_by_noise_rate")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(given), dtype=np.int64)
    ranks[order] = np.arange(len(given))
    return pd.DataFrame({"given": given, "suggested": probs.argmax(axis=1), "score": score, "issue": issue,
                         "rank": ranks})
