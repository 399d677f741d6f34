"""Tests of ddsm_core.metrics: every number against scikit-learn or a hand computation."""
import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ddsm_core import metrics
from ddsm_core.metrics import compute_metrics, confidence, predict

TOL = 1e-9
KEYS = {
    "n", "class_names", "threshold", "accuracy", "balanced_accuracy", "confusion_matrix",
    "confusion_matrix_normalized", "per_class", "roc_auc", "pr_auc", "sensitivity",
    "specificity", "ece", "reliability", "certainty", "bootstrap", "notes",
}


def make_data(n, k, seed, signal=1.0, missing=None):
    """Seeded labels and softmax probabilities that carry some signal about the labels."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(k) if c != missing]
    y = rng.choice(classes, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return y, probs, [f"class_{c}" for c in range(k)]


CASES = {
    "binary": dict(n=400, k=2, seed=1, threshold=0.5),
    "binary_t03": dict(n=400, k=2, seed=2, threshold=0.3),
    "four": dict(n=300, k=4, seed=3, threshold=0.5),
    "five": dict(n=600, k=5, seed=4, threshold=0.5),
}


def expected_pred(probs, threshold):
    if probs.shape[1] == 2:
        return np.where(probs[:, 1] >= threshold, 1, 0)
    return probs.argmax(axis=1)


def assert_plain_json(value, path="result"):
    """Only plain Python types, no numpy scalars, no NaN or infinity."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, path
            assert_plain_json(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_plain_json(item, f"{path}[{i}]")
    else:
        assert value is None or type(value) in (int, float, str, bool), (path, type(value))
        if type(value) is float:
            assert np.isfinite(value), path


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    spec = CASES[request.param]
    y, probs, names = make_data(spec["n"], spec["k"], spec["seed"])
    result = compute_metrics(y, probs, names, threshold=spec["threshold"], n_boot=200, seed=7)
    return dict(spec, y=y, probs=probs, names=names, result=result)


# ----------------------------------------------------------------------------
# Agreement with scikit-learn
# ----------------------------------------------------------------------------

def test_keys_and_json(case):
    result = case["result"]
    assert set(result) == KEYS
    assert_plain_json(result)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert result["n"] == case["n"]
    assert result["class_names"] == case["names"]


def test_confusion_matrix_exact(case):
    y, probs, k = case["y"], case["probs"], case["k"]
    y_pred = expected_pred(probs, case["threshold"])
    expected = confusion_matrix(y, y_pred, labels=list(range(k)))
    assert case["result"]["confusion_matrix"] == expected.tolist()
    assert np.array(case["result"]["confusion_matrix"]).shape == (k, k)


def test_normalized_rows(case):
    y, probs, k = case["y"], case["probs"], case["k"]
    normalized = np.array(case["result"]["confusion_matrix_normalized"])
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0, rtol=0, atol=TOL)
    y_pred = expected_pred(probs, case["threshold"])
    expected = confusion_matrix(y, y_pred, labels=list(range(k)), normalize="true")
    np.testing.assert_allclose(normalized, expected, rtol=0, atol=TOL)


def test_scalar_metrics_match_sklearn(case):
    y, probs, k, result = case["y"], case["probs"], case["k"], case["result"]
    y_pred = expected_pred(probs, case["threshold"])
    assert result["accuracy"] == pytest.approx(accuracy_score(y, y_pred), abs=TOL)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, y_pred), abs=TOL)
    if k == 2:
        auc = roc_auc_score(y, probs[:, 1])
        ap = average_precision_score(y, probs[:, 1])
    else:
        auc = roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(k)))
        ap = np.mean([average_precision_score(y == c, probs[:, c]) for c in range(k)])
    assert result["roc_auc"] == pytest.approx(auc, abs=TOL)
    assert result["pr_auc"] == pytest.approx(ap, abs=TOL)


def test_per_class_match_sklearn(case):
    y, probs, k, names = case["y"], case["probs"], case["k"], case["names"]
    y_pred = expected_pred(probs, case["threshold"])
    p, r, f, s = precision_recall_fscore_support(y, y_pred, labels=list(range(k)), zero_division=0)
    rows = case["result"]["per_class"]
    assert [row["class"] for row in rows] == names
    for c, row in enumerate(rows):
        assert row["precision"] == pytest.approx(p[c], abs=TOL)
        assert row["recall"] == pytest.approx(r[c], abs=TOL)
        assert row["f1"] == pytest.approx(f[c], abs=TOL)
        assert row["support"] == int(s[c])


def test_sensitivity_specificity(case):
    result, y, probs = case["result"], case["y"], case["probs"]
    if case["k"] != 2:
        assert result["sensitivity"] is None and result["specificity"] is None
        assert result["threshold"] is None
        return
    y_pred = expected_pred(probs, case["threshold"])
    tn, fp, fn, tp = confusion_matrix(y, y_pred, labels=[0, 1]).ravel()
    assert result["sensitivity"] == pytest.approx(tp / (tp + fn), abs=TOL)
    assert result["specificity"] == pytest.approx(tn / (tn + fp), abs=TOL)
    assert result["threshold"] == case["threshold"]


def test_certainty_quantiles(case):
    y, probs, names, result = case["y"], case["probs"], case["names"], case["result"]
    y_pred = expected_pred(probs, case["threshold"])
    conf = probs.max(axis=1)
    correct = y_pred == y
    assert set(result["certainty"]) == set(names)
    for c, name in enumerate(names):
        groups = {"all": y_pred == c, "correct": (y_pred == c) & correct, "wrong": (y_pred == c) & ~correct}
        for group, mask in groups.items():
            got = result["certainty"][name][group]
            assert got["count"] == int(mask.sum())
            if mask.any():
                q = np.quantile(conf[mask], [0, 0.25, 0.5, 0.75, 1])
                assert [got[key] for key in ("min", "q1", "median", "q3", "max")] == pytest.approx(q, abs=TOL)
            else:
                assert got["min"] is None and got["median"] is None and got["max"] is None


def test_reliability_consistent_with_ece(case):
    result = case["result"]
    bins = result["reliability"]
    assert len(bins) == 10
    assert sum(b["count"] for b in bins) == case["n"]
    ece = sum(b["count"] / case["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert result["ece"] == pytest.approx(ece, abs=TOL)


# ----------------------------------------------------------------------------
# Calibration by hand
# ----------------------------------------------------------------------------

# Binary, threshold 0.5, 5 bins [0,.2) [.2,.4) [.4,.6) [.6,.8) [.8,1.0].
HAND_PROBS = np.array([
    [0.10, 0.90],   # y=1, predict 1, conf 0.90, correct -> bin 4
    [0.05, 0.95],   # y=0, predict 1, conf 0.95, wrong   -> bin 4
    [0.00, 1.00],   # y=1, predict 1, conf 1.00, correct -> bin 4 (1.0 goes in the last bin)
    [0.30, 0.70],   # y=1, predict 1, conf 0.70, correct -> bin 3
    [0.60, 0.40],   # y=1, predict 0, conf 0.60, wrong   -> bin 3 (lower edge is inclusive)
    [0.45, 0.55],   # y=0, predict 1, conf 0.55, wrong   -> bin 2
])
HAND_Y = np.array([1, 0, 1, 1, 1, 0])


def test_ece_by_hand():
    # bin 4: 3 patches, mean conf (0.90+0.95+1.00)/3 = 0.95, accuracy 2/3 -> 3/6 * |2/3 - 0.95| = 0.85/6
    # bin 3: 2 patches, mean conf 0.65, accuracy 1/2                    -> 2/6 * 0.15 = 0.30/6
    # bin 2: 1 patch,   mean conf 0.55, accuracy 0                      -> 1/6 * 0.55 = 0.55/6
    # ECE = (0.85 + 0.30 + 0.55) / 6 = 1.70 / 6
    result = compute_metrics(HAND_Y, HAND_PROBS, ["benign", "malignant"], n_bins=5, n_boot=0)
    assert result["ece"] == pytest.approx(0.28333333333333333, abs=TOL)
    bins = result["reliability"]
    assert [b["count"] for b in bins] == [0, 0, 1, 2, 3]
    assert [b["lower"] for b in bins] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert [b["upper"] for b in bins] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[4]["confidence"] == pytest.approx(0.95, abs=TOL)
    assert bins[4]["accuracy"] == pytest.approx(2 / 3, abs=TOL)
    assert bins[3]["confidence"] == pytest.approx(0.65, abs=TOL)
    assert bins[3]["accuracy"] == pytest.approx(0.5, abs=TOL)
    assert bins[2]["confidence"] == pytest.approx(0.55, abs=TOL)
    assert bins[2]["accuracy"] == 0.0


def test_ece_by_hand_with_threshold():
    # threshold 0.6: the last row is now predicted benign (correct), its confidence stays 0.55.
    # bin 2 becomes 1/6 * |1 - 0.55| = 0.45/6, so ECE = (0.85 + 0.30 + 0.45) / 6 = 1.60 / 6
    result = compute_metrics(HAND_Y, HAND_PROBS, ["benign", "malignant"], threshold=0.6, n_bins=5, n_boot=0)
    assert result["ece"] == pytest.approx(0.26666666666666667, abs=TOL)
    assert result["certainty"]["benign"]["correct"] == {
        "count": 1, "min": 0.55, "q1": 0.55, "median": 0.55, "q3": 0.55, "max": 0.55,
    }


# ----------------------------------------------------------------------------
# Prediction rule
# ----------------------------------------------------------------------------

def test_predict_and_confidence():
    binary = np.array([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8]])
    assert predict(binary).tolist() == [0, 1, 1]            # >= threshold is positive
    assert predict(binary, threshold=0.25).tolist() == [1, 1, 1]
    assert predict(binary, threshold=0.9).tolist() == [0, 0, 0]
    assert confidence(binary).tolist() == [0.7, 0.5, 0.8]   # max prob, whatever the threshold
    multi = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert predict(multi, threshold=0.99).tolist() == [1, 0]
    assert confidence(multi).tolist() == [0.5, 0.6]
    assert predict(binary).dtype.kind == "i"


# ----------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------

def test_bootstrap_contains_point_and_is_deterministic():
    y, probs, names = make_data(1000, 5, seed=11)
    first = compute_metrics(y, probs, names, n_boot=300, seed=3)
    again = compute_metrics(y, probs, names, n_boot=300, seed=3)
    other = compute_metrics(y, probs, names, n_boot=300, seed=4)
    assert first["bootstrap"] == again["bootstrap"]
    assert first["bootstrap"] != other["bootstrap"]
    for key in ("accuracy", "balanced_accuracy", "roc_auc"):
        lo, hi = first["bootstrap"][key]
        assert lo < first[key] < hi, key
        assert hi - lo < 0.2, key


def test_bootstrap_binary_threshold():
    y, probs, names = make_data(800, 2, seed=12)
    result = compute_metrics(y, probs, names, threshold=0.35, n_boot=300, seed=0)
    for key in ("accuracy", "balanced_accuracy", "roc_auc"):
        lo, hi = result["bootstrap"][key]
        assert lo < result[key] < hi, key


@pytest.mark.parametrize("k, rounding", [(2, None), (5, None), (2, 1), (4, 2)])
def test_weighted_auc_equals_sklearn_on_resamples(k, rounding):
    """The bootstrap AUC (weights instead of copies, ties as 1/2) equals sklearn on the explicit resample."""
    y, probs, _ = make_data(300, k, seed=20 + k)
    if rounding is not None:                                 # many ties
        probs = np.round(probs, rounding)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, len(y), size=(6, len(y)))
    w = np.stack([np.bincount(row, minlength=len(y)) for row in idx]).astype(float)
    for c in ([1] if k == 2 else range(k)):
        got = metrics._weighted_auc(w, metrics._auc_plan(probs[:, c], y == c))
        want = [roc_auc_score(y[row] == c, probs[row, c]) for row in idx]
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_weighted_accuracies_equal_sklearn_on_resamples():
    """Bootstrap accuracy and balanced accuracy (weights instead of copies) equal sklearn per resample,
    also when a rare class is missing from a resample (balanced accuracy over present classes)."""
    rng = np.random.default_rng(9)
    n, k = 40, 4
    y = rng.choice(k, size=n, p=[0.45, 0.45, 0.07, 0.03])
    y_pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    onehot = np.eye(k)[y]
    idx = rng.integers(0, n, size=(30, n))
    w = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)
    assert any(len(np.unique(y[row])) < k for row in idx)   # the case that matters is exercised
    accuracy, balanced = metrics._weighted_accuracies(w, onehot, y_pred == y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_bal = [balanced_accuracy_score(y[row], y_pred[row]) for row in idx]
    np.testing.assert_allclose(accuracy, [accuracy_score(y[row], y_pred[row]) for row in idx], rtol=0, atol=TOL)
    np.testing.assert_allclose(balanced, want_bal, rtol=0, atol=TOL)


def test_bootstrap_zero_resamples():
    y, probs, names = make_data(100, 3, seed=13)
    result = compute_metrics(y, probs, names, n_boot=0)
    assert result["bootstrap"] == {"accuracy": None, "balanced_accuracy": None, "roc_auc": None}
    assert any("n_boot" in note for note in result["notes"])


# ----------------------------------------------------------------------------
# Undefined metrics
# ----------------------------------------------------------------------------

def test_missing_class_multiclass():
    y, probs, names = make_data(500, 5, seed=15, missing=3)
    result = compute_metrics(y, probs, names, n_boot=100)
    assert result["roc_auc"] is None
    assert any("ROC AUC" in note and "class_3" in note for note in result["notes"])
    assert any("class_3" in note and "no true patches" in note for note in result["notes"])
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (5, 5)
    assert cm[3].sum() == 0 and cm.sum() == 500
    normalized = np.array(result["confusion_matrix_normalized"])
    assert normalized[3].tolist() == [0.0] * 5
    np.testing.assert_allclose(np.delete(normalized, 3, axis=0).sum(axis=1), 1.0, atol=TOL)
    y_pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # sklearn warns about the absent class
        bal = balanced_accuracy_score(y, y_pred)
    assert result["balanced_accuracy"] == pytest.approx(bal, abs=TOL)
    ap = np.mean([average_precision_score(y == c, probs[:, c]) for c in (0, 1, 2, 4)])
    assert result["pr_auc"] == pytest.approx(ap, abs=TOL)
    assert result["per_class"][3]["support"] == 0 and result["per_class"][3]["recall"] == 0.0
    assert result["bootstrap"]["roc_auc"] is None
    assert result["bootstrap"]["accuracy"] is not None
    json.dumps(result, allow_nan=False)
    assert_plain_json(result)


def test_missing_positive_class_binary():
    y = np.zeros(50, dtype=int)
    p1 = np.linspace(0.01, 0.99, 50)
    result = compute_metrics(y, np.c_[1 - p1, p1], ["benign", "malignant"], n_boot=50)
    assert result["roc_auc"] is None and result["pr_auc"] is None and result["sensitivity"] is None
    assert result["specificity"] == pytest.approx(np.mean(p1 < 0.5), abs=TOL)
    assert np.array(result["confusion_matrix"]).shape == (2, 2)
    assert any("Sensitivity" in note for note in result["notes"])
    json.dumps(result, allow_nan=False)
    assert_plain_json(result)


def test_never_predicted_class_gets_zero_precision_and_note():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    result = compute_metrics(y, probs, ["a", "b", "c"], n_boot=20)
    assert result["per_class"][1]["precision"] == 0.0
    assert any("'b' was never predicted" in note for note in result["notes"])
    assert result["certainty"]["b"]["all"]["count"] == 0
    assert result["certainty"]["b"]["all"]["median"] is None


# ----------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------

GOOD_Y = np.array([0, 1, 2, 1])
GOOD_P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
GOOD_NAMES = ["calc", "mass", "normal"]


def with_nan():
    p = GOOD_P.copy()
    p[0, 0] = np.nan
    return p


def with_negative():
    p = GOOD_P.copy()
    p[0] = [-0.2, 0.7, 0.5]                                  # sums to 1, one entry negative
    return p


def with_inf():
    p = GOOD_P.copy()
    p[1, 1] = np.inf
    return p


BAD = {
    "fewer labels than rows": (GOOD_Y[:3], GOOD_P, GOOD_NAMES, {}),
    "names do not match columns": (GOOD_Y, GOOD_P, GOOD_NAMES[:2], {}),
    "one class": (np.zeros(4, int), np.ones((4, 1)), ["only"], {}),
    "label too large": (np.array([0, 1, 3, 1]), GOOD_P, GOOD_NAMES, {}),
    "negative label": (np.array([0, -1, 2, 1]), GOOD_P, GOOD_NAMES, {}),
    "fractional label": (np.array([0, 1.5, 2, 1]), GOOD_P, GOOD_NAMES, {}),
    "string labels": (np.array(["a", "b", "c", "a"]), GOOD_P, GOOD_NAMES, {}),
    "2-D labels": (GOOD_Y[:, None], GOOD_P, GOOD_NAMES, {}),
    "nan prob": (GOOD_Y, with_nan(), GOOD_NAMES, {}),
    "inf prob": (GOOD_Y, with_inf(), GOOD_NAMES, {}),
    "1-D probs": (GOOD_Y, GOOD_P[:, 0], GOOD_NAMES, {}),
    "rows do not sum to 1": (GOOD_Y, GOOD_P * 2, GOOD_NAMES, {}),
    "negative prob": (GOOD_Y, with_negative(), GOOD_NAMES, {}),
    "empty": (np.zeros(0, int), np.zeros((0, 3)), GOOD_NAMES, {}),
    "duplicate names": (GOOD_Y, GOOD_P, ["a", "a", "b"], {}),
    "names as one string": (GOOD_Y, GOOD_P, "abc", {}),
    "zero bins": (GOOD_Y, GOOD_P, GOOD_NAMES, {"n_bins": 0}),
    "negative n_boot": (GOOD_Y, GOOD_P, GOOD_NAMES, {"n_boot": -1}),
    "threshold above 1": (np.array([0, 1]), np.array([[0.6, 0.4], [0.2, 0.8]]), ["b", "m"], {"threshold": 1.5}),
    "nan threshold": (np.array([0, 1]), np.array([[0.6, 0.4], [0.2, 0.8]]), ["b", "m"], {"threshold": float("nan")}),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_value_error(name):
    y, probs, names, kwargs = BAD[name]
    with pytest.raises(ValueError) as info:
        compute_metrics(y, probs, names, **{"n_boot": 10, **kwargs})
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_good_input_variants_accepted():
    # plain lists, integral floats and rows off by float32 rounding are fine
    result = compute_metrics(GOOD_Y.astype(float).tolist(), GOOD_P.astype(np.float32).tolist(), GOOD_NAMES, n_boot=10)
    assert result["n"] == 4 and result["accuracy"] == 1.0
