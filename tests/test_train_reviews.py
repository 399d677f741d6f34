"""Retraining with the radiologists' verdicts: relabels and exclusions change the training split (never the
test split), the run records the verdicts it used, and evaluation reports reviewed-label metrics beside
the original ones."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

from ddsm_core import runs, synth, verdicts
from ddsm_core.config import RunConfig
from ddsm_core.data import store
from ddsm_core.data.seed_csv import import_seed_csv
from ddsm_core.evaluation import evaluate_run
from ddsm_core.tasks import get_task
from ddsm_core.training import train_and_evaluate

pytestmark = pytest.mark.slow
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """Dataset `f` whose first 12 training masses carry the other mass label (2 <-> 4): known wrong labels,
    plus the truth to correct them with."""
    root, source = tmp_path_factory.mktemp("ws"), tmp_path_factory.mktemp("src")
    synth.write_seed_csv(source, n_train=240, n_test=80, size=48, seed=9)
    train = pd.read_csv(source / "train.csv")
    masses = train.index[train["y"].isin([2, 4])][:12]
    truth = dict(zip(train.loc[masses, "filename"], train.loc[masses, "y"]))
    train.loc[masses, "y"] = 6 - train.loc[masses, "y"]
    train.to_csv(source / "train.csv", index=False)
    import_seed_csv(root, "f", source / "train.csv", source / "train_images", source / "test.csv",
                    source / "test_images")
    return root, truth


def test_apply_trains_on_corrected_labels_without_the_excluded_patches(flipped):
    root, truth = flipped
    names = sorted(truth)
    relabeled, excluded = names[:8], names[8:]
    for name in relabeled:
        verdicts.add(root, "f", name, "relabel", new_label=truth[name], reviewer="dr a")
    for name in excluded:
        verdicts.add(root, "f", name, "exclude", note="duplicate", reviewer="dr b")
    test_patch = store.load(root, "f").manifest.query("split == 'test' and label == 2")["filename"].iloc[0]
    verdicts.add(root, "f", test_patch, "exclude", reviewer="dr b")
    run_id = runs.create_run(root, RunConfig("f", 5, "small_cnn", epochs=1, image_size=32, reviews="apply",
                                             precision="float32"))
    # a verdict recorded after the run was created does not change what it trains on
    verdicts.add(root, "f", relabeled[0], "exclude", reviewer="dr c")
    assert train_and_evaluate(root, run_id, **QUIET) == "completed"

    split = pd.read_parquet(runs.split_file(root, run_id)).set_index("filename")
    for name in relabeled:
        assert split.loc[name, "label"] == truth[name]
        assert split.loc[name, "target"] == get_task(5).label_to_output()[truth[name]]
    assert not set(excluded) & set(split.index)
    recorded = runs.read_config(root, run_id)["reviews_snapshot"]
    assert recorded["count"] == 13 and len(recorded["sha256"]) == 64
    predictions = pd.read_parquet(runs.predictions_file(root, run_id, "test"))
    assert test_patch in set(predictions["filename"])  # the test split itself is never changed


def test_ignore_trains_on_the_labels_as_imported(flipped):
    root, truth = flipped
    run_id = runs.create_run(root, RunConfig("f", 5, "small_cnn", epochs=1, image_size=32, precision="float32"))
    assert train_and_evaluate(root, run_id, **QUIET) == "completed"
    split = pd.read_parquet(runs.split_file(root, run_id)).set_index("filename")
    assert all(split.loc[name, "label"] == 6 - label for name, label in truth.items())
    assert "reviews_snapshot" not in runs.read_config(root, run_id)


def test_reviewed_label_metrics_sit_beside_the_originals_and_equal_scikit_learn(flipped):
    root, _ = flipped
    run_id = runs.create_run(root, RunConfig("f", 5, "small_cnn", epochs=1, image_size=32, precision="float32"))
    train_and_evaluate(root, run_id, **QUIET)
    frame = pd.read_parquet(runs.predictions_file(root, run_id, "test"))
    masses = frame["filename"].tolist()
    flip, drop = masses[:5], masses[5:8]
    for name in flip:
        label = int(frame.loc[frame["filename"] == name, "label"].iloc[0])
        verdicts.add(root, "f", name, "relabel", new_label=6 - label, reviewer="dr a")
    for name in drop:
        verdicts.add(root, "f", name, "exclude", reviewer="dr a")
    stored = evaluate_run(root, run_id, **QUIET).metrics  # same checkpoint: no inference, reviewed refreshed
    reviewed = stored["reviewed_labels"]
    expected = frame[~frame["filename"].isin(drop)].copy()
    expected.loc[expected["filename"].isin(flip), "y_true"] = 1 - expected["y_true"]
    assert reviewed["n_patches"] == len(expected) == len(frame) - 3
    assert reviewed["changes"]["relabeled"] == 5 and reviewed["changes"]["excluded"] == 3
    assert reviewed["accuracy"] == pytest.approx(accuracy_score(expected["y_true"], expected["y_pred"]))
    assert reviewed["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(expected["y_true"], expected["y_pred"]))
    assert np.array_equal(reviewed["confusion_matrix"], confusion_matrix(expected["y_true"], expected["y_pred"]))
    # the original-label metrics are untouched
    assert stored["accuracy"] == pytest.approx(accuracy_score(frame["y_true"], frame["y_pred"]))
