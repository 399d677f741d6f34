"""ddsm_core.review: what the dashboard asks, answered without Streamlit (real trained runs from conftest)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ddsm_core import jobs, review, runs, workspace
from ddsm_core.config import RunConfig
from ddsm_core.data import store
from ddsm_core.errors import UserError
from ddsm_core.metrics import compute_metrics
from ddsm_core.tasks import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(trained_workspace):
    loaded = review.RunResults.load(trained_workspace.root, trained_workspace.run_t0, "test")
    assert loaded is not None
    return loaded


def test_confusion_matches_metrics_json_and_predictions(results, trained_workspace):
    stored = review.read_metrics(trained_workspace.root, trained_workspace.run_t0)
    names = get_task(0).class_names
    counts, fractions = results.confusion(False), results.confusion(True)
    assert list(counts.index) == names and list(counts.columns) == names
    assert counts.to_numpy().tolist() == stored["confusion_matrix"]
    assert np.allclose(fractions.to_numpy(), stored["confusion_matrix_normalized"])
    frame = results.predictions
    recount = pd.crosstab(frame["y_true"], frame["y_pred"]).reindex(index=range(5), columns=range(5), fill_value=0)
    assert (recount.to_numpy() == counts.to_numpy()).all()
    table = results.confusion_table(normalized=True)
    i, j = 2, 2
    assert table.iat[i, j] == f"{100 * stored['confusion_matrix_normalized'][i][j]:.1f}% ({stored['confusion_matrix'][i][j]})"
    assert results.confusion_table(normalized=False).to_numpy().tolist() == stored["confusion_matrix"]


def test_cell_rows_are_that_cell_sorted_by_confidence(results):
    total = 0
    for true in results.class_names:
        for pred in results.class_names:
            rows = results.cell(true, pred)
            total += len(rows)
            assert (rows["true_name"] == true).all() and (rows["pred_name"] == pred).all()
            assert rows["confidence"].is_monotonic_decreasing
            assert len(rows) == results.confusion(False).loc[true, pred]
    assert total == len(results)
    assert results.cell_from_table(1, "predicted benign mass") == (1, 2)
    with pytest.raises(UserError):
        results.cell("no such class", 0)


def test_worst_cell_is_the_largest_off_diagonal(results):
    true, pred = results.worst_cell()
    counts = results.confusion(False).to_numpy().copy()
    np.fill_diagonal(counts, -1)
    assert results.confusion(False).loc[true, pred] == counts.max() and true != pred


def test_extremes_are_highest_and_lowest_confidence(results):
    for index, name in enumerate(results.class_names):
        mine = results.predictions[results.predictions["y_pred"] == index]
        highest, lowest = results.extremes(name, 3)
        assert len(highest) == len(lowest) == min(3, len(mine))
        if len(mine):
            assert highest["confidence"].iloc[0] == mine["confidence"].max()
            assert lowest["confidence"].iloc[0] == mine["confidence"].min()
            assert highest["confidence"].is_monotonic_decreasing and lowest["confidence"].is_monotonic_increasing
            assert (highest["pred_name"] == name).all() and (lowest["pred_name"] == name).all()


def test_filter_narrows_and_combines(results):
    everything = results.filter()
    assert len(everything) == len(results)
    wrong = results.filter(outcome="wrong")
    assert len(wrong) == (~results.predictions["correct"]).sum() and not wrong["correct"].any()
    by_true = results.filter(true=["normal", "benign mass"])
    assert set(by_true["true_name"]) <= {"normal", "benign mass"}
    assert len(by_true) == results.predictions["y_true"].isin([0, 2]).sum()
    confident = results.filter(confidence=(0.5, 1.0), sort="confidence, low first")
    assert (confident["confidence"] >= 0.5).all() and confident["confidence"].is_monotonic_increasing
    combined = results.filter(true="normal", pred=2, outcome="wrong")
    assert len(combined) == results.confusion(False).loc["normal", "benign mass"]
    with pytest.raises(UserError):
        results.filter(outcome="maybe")


def test_page_splits_rows_and_clips_numbers():
    rows = pd.DataFrame({"x": range(45)})
    first, pages = review.page(rows, 1, 20)
    assert pages == 3 and list(first["x"]) == list(range(20))
    last, _ = review.page(rows, 3, 20)
    assert list(last["x"]) == list(range(40, 45))
    assert list(review.page(rows, 99, 20)[0]["x"]) == list(range(40, 45))
    assert review.page(rows.head(0), 1, 20)[1] == 1


def test_last_page_of_fifteen_thousand_predictions():
    rows = review.sort_rows(pd.DataFrame({"confidence": np.random.default_rng(0).random(15000), "filename": "x"}))
    shown, pages = review.page(rows, 750, 20)
    assert pages == 750 and len(shown) == 20
    assert shown["confidence"].tolist() == sorted(rows["confidence"], reverse=True)[-20:]


def test_probabilities_and_caption(results):
    row = results.predictions.iloc[0]
    probs = results.probabilities(row)
    assert list(probs) == results.class_names and abs(sum(probs.values()) - 1) < 1e-4
    caption = results.caption(row)
    assert row["filename"] in caption and f"true: {row['true_name']}" in caption
    assert f"predicted: {row['pred_name']}" in caption


def test_certainty_and_reliability(results, trained_workspace):
    frame = results.certainty_frame()
    assert len(frame) == len(results) and set(frame["outcome"]) <= {"correct", "wrong"}
    bins = results.reliability()
    stored = review.read_metrics(trained_workspace.root, trained_workspace.run_t0)
    assert len(bins) == len(stored["reliability"]) and bins["count"].sum() == len(results)
    assert results.ece == stored["ece"]
    summary = results.certainty_summary()
    everything = summary[summary["outcome"] == "all"].set_index("predicted")["count"]
    predicted = frame["predicted"].value_counts()
    assert all(everything[name] == predicted.get(name, 0) for name in results.class_names)


def test_window_level():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert (review.window_level(image, 255, 127.5) == image).all()
    narrow = review.window_level(image, 50, 100)
    assert narrow.dtype == np.uint8
    assert (narrow[image <= 75] == 0).all() and (narrow[image >= 125] == 255).all()
    assert review.window_level(image, 0, 10).dtype == np.uint8  # a zero window is widened, not a division by 0


def test_missing_files_give_a_message(results, tmp_path):
    rows = results.predictions.head(3).copy()
    assert review.missing_files(rows) == []
    rows.loc[rows.index[0], "path"] = str(tmp_path / "moved.png")
    assert review.missing_files(rows) == [str(tmp_path / "moved.png")]
    patch = review.load_patch(tmp_path / "moved.png")
    assert patch.image is None and "missing" in patch.problem
    good = review.load_patch(rows["path"].iloc[1], 100, 120)
    assert good.image.dtype == np.uint8 and good.image.ndim == 2


def test_a_class_missing_in_test_still_gives_every_class():
    task = get_task(0)
    rng = np.random.default_rng(0)
    y_true = rng.choice([0, 1, 2, 4], size=60)  # no malignant calcification
    probs = rng.dirichlet(np.ones(5), size=60)
    metrics = compute_metrics(y_true, probs, task.class_names, n_boot=20)
    frame = pd.DataFrame({"path": "x", "filename": [f"f{i}.png" for i in range(60)], "label": y_true,
                          "y_true": y_true, "y_pred": probs.argmax(1), "confidence": probs.max(1)})
    frame["correct"] = frame["y_true"] == frame["y_pred"]
    for column, values in zip(review.probability_columns(task), probs.T):
        frame[column] = values
    results = review.RunResults("r", "test", task, frame, metrics)
    assert results.confusion(False).shape == (5, 5)
    assert results.confusion(False).loc["malignant calcification"].sum() == 0
    assert any("malignant calcification" in note for note in results.notes)
    assert results.cell("malignant calcification", 0).empty


def test_default_run_prefers_latest_completed():
    records = [{"run_id": "a", "state": "completed", "created": "2026-01-01"},
               {"run_id": "b", "state": "completed", "created": "2026-01-03"},
               {"run_id": "c", "state": "failed", "created": "2026-01-05"}]
    assert review.default_run(records) == "b"
    assert review.default_run(records[2:]) == "c"
    assert review.default_run([]) is None


def test_picker_options_cascade(trained_workspace):
    records = runs.list_runs(trained_workspace.root)
    assert review.picker_options(records) == ["synth"]
    assert review.picker_options(records, "synth") == [0, 5]
    assert review.picker_options(records, "synth", 5) == ["small_cnn"]
    assert review.picker_options(records, "synth", 5, "small_cnn") == [trained_workspace.run_t5]
    assert review.default_run(records) == trained_workspace.run_t5


def test_runs_signature_changes_with_status(workspace_copy):
    before = review.runs_signature(workspace_copy.root)
    runs.write_status(workspace_copy.root, workspace_copy.run_t0, note="touched")
    assert review.runs_signature(workspace_copy.root) != before
    assert review.runs_signature(workspace_copy.root / "nowhere") == ()


def test_state_messages():
    failed = review.state_message({"run_id": "r", "state": "failed", "error": "ValueError: boom", "epoch": 1, "epochs": 3})
    assert failed[0] == "error" and "ValueError: boom" in failed[1] and "Resume" in failed[1]
    assert review.state_message({"run_id": "r", "state": "cancelled", "epoch": 1, "epochs": 3})[0] == "warning"
    assert review.state_message({"run_id": "r", "state": "completed"}) is None
    assert set(review.STATE_MESSAGES) == set(runs.STATES) - {"completed"}, "every other state is explained"


def test_job_progress_and_eta():
    status = {"state": "running", "epoch": 1, "step": 3, "steps_per_epoch": 6, "eta_seconds": 75,
              "metrics": {"accuracy": 0.5, "loss": 1.2, "lr": 0.001}}
    progress = review.job_progress(status, 4)
    assert progress["fraction"] == pytest.approx(1.5 / 4)
    assert progress["text"] == "running: epoch 2/4, step 3/6"
    assert progress["eta"] == "about 1 min 15 s left" and progress["metrics"] == {"accuracy": 0.5, "loss": 1.2}
    assert review.job_progress({"state": "completed", "epoch": 4}, 4)["fraction"] == 1.0
    assert review.eta_text(None) == "" and review.eta_text(7300) == "about 2 h 1 min left"


def test_compare_metrics_and_histories(trained_workspace):
    root, ids = trained_workspace.root, trained_workspace.run_ids
    table = review.compare_metrics(root, ids)
    assert list(table.columns) == ids
    assert table.loc["accuracy", ids[0]] == review.read_metrics(root, ids[0])["accuracy"]
    stacked = review.histories(root, ids)
    assert set(stacked["run_id"]) == set(ids) and len(stacked) == 4
    long = review.curves(review.history(root, ids[0]), "loss")
    assert set(long["subset"]) == {"train", "validation"} and len(long) == 4
    assert review.best_epoch(root, ids[0]) in (1, 2)


def test_submit_refuses_bad_settings_without_creating_a_run(workspace_copy):
    before = runs.list_ids(workspace_copy.root)
    with pytest.raises(UserError) as caught:
        jobs.submit(workspace_copy.root, RunConfig(dataset="synth", task=0, backbone="small_cnn", lr=1.5, epochs=0))
    problems = caught.value.problems
    assert any("learning rate 1.5" in p for p in problems) and any("epochs" in p for p in problems)
    with pytest.raises(UserError, match="no dataset named"):
        jobs.submit(workspace_copy.root, RunConfig(dataset="nope", task=0, backbone="small_cnn"))
    assert runs.list_ids(workspace_copy.root) == before


def test_dataset_overview(trained_workspace):
    dataset = store.load(trained_workspace.root, "synth")
    balance = review.class_balance(dataset)
    assert balance["patches"].sum() == len(dataset.manifest) == 360
    assert balance.groupby("split")["patches"].sum().to_dict() == {"test": 120, "train": 240}
    tasks = review.task_balance(dataset)
    task1 = tasks[tasks["task"].str.startswith("1:")]
    task0 = tasks[tasks["task"].str.startswith("0:")]
    noise = review.noise_filter(dataset)
    removed = sum(c["removed"] for c in noise["counts"].values())
    assert removed == int((dataset.manifest["noisy"] & (dataset.manifest["label"] == 0)).sum()) > 0
    assert task0[["train", "test"]].to_numpy().sum() - task1[["train", "test"]].to_numpy().sum() == removed
    assert len(noise["removed"]) == removed and noise["thresholds"]["dark_fraction"] == 0.5
    samples = review.sample_patches(dataset, 2)
    assert samples.groupby("label").size().to_dict() == {label: 2 for label in range(5)}
    assert all(Path(p).is_file() for p in samples["abs_path"])
    report = review.import_report(dataset)
    assert list(report["skipped"].columns) == ["where", "file", "reason"] and report["n_patches"] == 360


def test_evaluation_state_reports_a_failed_launch(workspace_copy):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    assert review.evaluation_state(root, run_id)["state"] == "none"
    workspace.write_json(runs.evaluate_job_file(root, run_id),
                         {"pid": 999999999, "split": "test", "started": "now", "returncode": 1})
    runs.evaluate_log(root, run_id).write_text("error: something broke\n")
    state = review.evaluation_state(root, run_id)
    assert state["state"] == "failed" and "something broke" in state["message"]
