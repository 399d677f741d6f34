"""The dashboard pages under AppTest, on real trained runs: content, not just the absence of exceptions."""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import ddsm_core
from ddsm_core import jobs, review, runs, workspace
from ddsm_core.metrics import compute_metrics
from ddsm_core.tasks import get_task
from support import APP, assert_clean, plotly_values, texts

pytestmark = pytest.mark.slow
PAGES = ["streamlit_app.py", "pages/training_curves.py", "pages/confusion_matrix.py", "pages/certainty.py",
         "pages/gallery.py", "pages/data.py"]


def captions_of_images(at: AppTest) -> list[str]:
    return [caption for image in at.get("image") for caption in image.captions]


def frame_with(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first st.dataframe whose columns include all of `columns` (display-only tables carry no key)."""
    for element in at.dataframe:
        if set(columns) <= set(element.value.columns):
            return element.value
    raise AssertionError(f"no table with columns {columns}")


def metrics_of(root, run_id) -> dict:
    return review.read_metrics(root, run_id)


# ---------------------------------------------------------------- sidebar: run picker

def test_default_run_is_latest_completed_and_goes_in_the_url(trained_workspace, open_app):
    at = open_app(trained_workspace.root)
    assert at.query_params["run"] == [trained_workspace.run_t5] or at.query_params["run"] == trained_workspace.run_t5
    assert at.selectbox(key="pick_run").value == trained_workspace.run_t5
    assert at.selectbox(key="pick_task").value == 5


@pytest.mark.parametrize("page", PAGES)
def test_link_picks_the_run_and_it_survives_page_changes(trained_workspace, open_app, page):
    at = open_app(trained_workspace.root, run=trained_workspace.run_t0)
    assert at.selectbox(key="pick_run").value == trained_workspace.run_t0
    at.switch_page(page).run()
    assert_clean(at)
    assert at.selectbox(key="pick_run").value == trained_workspace.run_t0
    assert at.selectbox(key="pick_task").value == 0


def test_picker_switches_every_view_to_another_run(trained_workspace, open_app):
    root, t0, t5 = trained_workspace.root, trained_workspace.run_t0, trained_workspace.run_t5
    at = open_app(root, "pages/confusion_matrix.py", run=t0)
    assert list(at.dataframe(key="cm_table").value.columns) == [f"predicted {n}" for n in get_task(0).class_names]
    at.selectbox(key="pick_task").set_value(5).run()
    assert_clean(at)
    assert at.selectbox(key="pick_run").value == t5
    assert at.session_state[("review_run_id")] == t5
    assert list(at.dataframe(key="cm_table").value.columns) == ["predicted benign mass", "predicted malignant mass"]
    for page, check in [
        ("pages/training_curves.py", lambda a: any(t5 in c for c in texts(a.caption))),
        ("pages/certainty.py", lambda a: any(t5 in c for c in texts(a.caption))),
        ("pages/gallery.py", lambda a: texts(a.subheader)[:2] == ["Predicted benign mass", "Predicted malignant mass"]),
    ]:
        at.switch_page(page).run()
        assert_clean(at)
        assert check(at), page
    at.selectbox(key="pick_task").set_value(0).run()
    assert texts(at.subheader)[:5] == [f"Predicted {n}" for n in get_task(0).class_names]


def test_unknown_run_in_the_link_is_explained(trained_workspace, monkeypatch):
    monkeypatch.setenv("DDSM_WORKSPACE", str(trained_workspace.root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = "no-such-run"
    at.run()
    assert_clean(at)
    assert any("no-such-run" in w for w in texts(at.sidebar.warning))
    assert at.selectbox(key="pick_run").value == trained_workspace.run_t5


# ---------------------------------------------------------------- pages

def test_runs_page_lists_runs_and_compares_selected(trained_workspace, open_app):
    root = trained_workspace.root
    at = open_app(root, "streamlit_app.py")
    table = at.dataframe(key="runs_table").value
    assert set(table["run_id"]) == set(trained_workspace.run_ids)
    for record in runs.list_runs(root):
        row = table[table["run_id"] == record["run_id"]].iloc[0]
        assert row["state"] == "completed" and row["test_accuracy"] == pytest.approx(record["test_accuracy"])
        assert row["test_roc_auc"] == pytest.approx(record["test_roc_auc"])
    assert not at.get("plotly_chart")
    at.session_state["runs_table"] = {"selection": {"rows": [0, 1]}}
    at.run()
    assert_clean(at)
    compare = frame_with(at, *trained_workspace.run_ids)
    assert set(compare.columns) == set(trained_workspace.run_ids)
    t0 = trained_workspace.run_t0
    assert float(compare.loc["accuracy", t0]) == pytest.approx(metrics_of(root, t0)["accuracy"])
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    spec = json.loads(charts[0].proto.spec)
    assert {trace["legendgroup"].split(",")[0] for trace in spec["data"]} == set(trained_workspace.run_ids)


def test_training_curves_show_train_and_validation_with_best_epoch(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    at = open_app(root, "pages/training_curves.py", run=t0)
    best = runs.read_status(root, t0)["best_epoch"]
    assert any(f"best epoch {best}" in c for c in texts(at.caption))
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2
    history = runs.read_history(root, t0)
    for spec, metric in zip(charts, ("accuracy", "loss")):
        by_name = {trace["name"]: trace for trace in spec["data"]}
        assert set(by_name) == {"train", "validation"}
        assert plotly_values(by_name["validation"]["y"]) == pytest.approx(list(history[f"val_{metric}"]))
        assert any(shape.get("x0") == best for shape in spec["layout"].get("shapes", []))


def test_confusion_matrix_cells_equal_the_stored_metrics(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    stored = metrics_of(root, t0)
    at = open_app(root, "pages/confusion_matrix.py", run=t0)
    table = at.dataframe(key="cm_table").value
    names = get_task(0).class_names
    assert list(table.index) == [f"true {n}" for n in names]
    expected = [[f"{100 * stored['confusion_matrix_normalized'][i][j]:.1f}% ({stored['confusion_matrix'][i][j]})"
                 for j in range(5)] for i in range(5)]
    assert table.to_numpy().tolist() == expected
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    shown = [t.replace("<br>", " ") for t in figure["data"][0]["text"]]
    assert shown == [cell for row in expected for cell in row]
    at.toggle(key="cm_raw").set_value(True).run()
    assert at.dataframe(key="cm_table").value.to_numpy().tolist() == stored["confusion_matrix"]


def test_selecting_a_cell_opens_its_patches(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    stored = metrics_of(root, t0)
    at = open_app(root, "pages/confusion_matrix.py", run=t0)
    names = get_task(0).class_names
    # default: the largest off-diagonal cell
    counts = pd.DataFrame(stored["confusion_matrix"], index=names, columns=names)
    true, pred = at.selectbox(key="cm_true").value, at.selectbox(key="cm_pred").value
    assert true != pred and counts.loc[true, pred] == max(counts.iat[i, j] for i in range(5) for j in range(5) if i != j)
    # a table cell (what a click does), then the fallback selectboxes
    target = max(((i, j) for i in range(5) for j in range(5)), key=lambda c: stored["confusion_matrix"][c[0]][c[1]])
    at.session_state["cm_table"] = {"selection": {"cells": [[target[0], f"predicted {names[target[1]]}"]]}}
    at.run()
    assert_clean(at)
    n = stored["confusion_matrix"][target[0]][target[1]]
    heading = f"True {names[target[0]]}, predicted {names[target[1]]}: {n} patch(es), most confident first"
    assert heading in texts(at.subheader)
    captions = captions_of_images(at)
    assert len(captions) == min(n, 15)
    assert all(f"true: {names[target[0]]} | predicted: {names[target[1]]}" in c for c in captions)
    confidences = [float(re.search(rf"{re.escape(review.short_name(names[target[1]]))} ([0-9.]+)", c).group(1))
                   for c in captions]
    assert confidences == sorted(confidences, reverse=True)
    at.selectbox(key="cm_true").set_value("malignant mass").run()
    at.selectbox(key="cm_pred").set_value("normal").run()
    n = stored["confusion_matrix"][4][0]
    assert f"True malignant mass, predicted normal: {n} patch(es), most confident first" in texts(at.subheader)
    assert at.dataframe(key="cm_table").value.shape == (5, 5)  # the table selection did not override the boxes


def test_certainty_page_shows_distributions_and_reliability(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    stored = metrics_of(root, t0)
    at = open_app(root, "pages/certainty.py", run=t0)
    assert f"Reliability diagram: ECE {stored['ece']:.3f}" in texts(at.subheader)
    box, reliability = (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
    assert {trace["name"] for trace in box["data"]} <= {"correct", "wrong"} and box["data"][0]["type"] == "box"
    assert all(trace.get("boxpoints") == "all" for trace in box["data"])
    bins = frame_with(at, "lower", "upper", "count")
    assert bins["count"].tolist() == [b["count"] for b in stored["reliability"]]


def test_gallery_shows_k_extremes_per_predicted_class(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    results = review.RunResults.load(root, t0)
    at = open_app(root, "pages/gallery.py", run=t0)
    at.slider(key="gallery_k").set_value(3).run()
    assert_clean(at)
    names = results.class_names
    assert texts(at.subheader) == [f"Predicted {n}" for n in names] + ["Run", "Retrain"]
    expected = []
    for name in names:
        highest, lowest = results.extremes(name, 3)
        expected += [results.caption(row) for _, row in highest.iterrows()]
        expected += [results.caption(row) for _, row in lowest.iterrows()]
    captions = captions_of_images(at)
    assert captions[:len(expected)] == expected
    predicted = (results.predictions["pred_name"].value_counts())
    for name in names:
        shown = [c for c in captions[:len(expected)] if f"predicted: {name} (" in c]
        assert len(shown) == 2 * min(3, predicted.get(name, 0))


def test_gallery_filters_narrow_the_browser(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    results = review.RunResults.load(root, t0)
    at = open_app(root, "pages/gallery.py", run=t0)
    total = len(results)
    assert f"**{total} of {total} patches match**" in texts(at.markdown)
    at.radio(key="gallery_outcome").set_value("wrong").run()
    wrong = int((~results.predictions["correct"]).sum())
    assert f"**{wrong} of {total} patches match**" in texts(at.markdown)
    browse = [c for c in captions_of_images(at) if "(wrong)" in c or "(correct)" in c][-min(20, wrong):]
    assert all("(wrong)" in c for c in browse)
    at.multiselect(key="gallery_true").set_value(["malignant mass"]).run()
    narrowed = len(results.filter(true="malignant mass", outcome="wrong"))
    assert narrowed < wrong and f"**{narrowed} of {total} patches match**" in texts(at.markdown)
    at.slider(key="gallery_confidence").set_value((0.99, 1.0)).run()
    assert any("No patch matches" in i for i in texts(at.info)) or \
        f"**{len(results.filter(true='malignant mass', outcome='wrong', confidence=(0.99, 1.0)))} of {total} patches match**" \
        in texts(at.markdown)


def test_data_page_shows_balance_noise_filter_and_report(trained_workspace, open_app):
    at = open_app(trained_workspace.root, "pages/data.py")
    tasks = frame_with(at, "task", "class", "train", "test")
    assert set(tasks["task"].str[:2]) == {f"{k}:" for k in range(6)}
    noisy = frame_with(at, "filename", "dark_fraction")
    from ddsm_core.data import store
    manifest = store.load(trained_workspace.root, "synth").manifest
    assert len(noisy) == int((manifest["noisy"] & (manifest["label"] == 0)).sum()) > 0
    assert {"dark_fraction", "saturated_block"} <= set(noisy.columns)
    assert len(captions_of_images(at)) >= 5 * 5
    assert any("No rows were skipped" in s for s in texts(at.success))
    balance = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {trace["name"] for trace in balance["data"]} == {"train", "test"}


# ---------------------------------------------------------------- states

def test_empty_workspace_offers_the_demo(tmp_path, open_app, monkeypatch):
    calls = []
    progress = {"value": None}
    fake = types.ModuleType("ddsm_core.demo")
    fake.start_demo_job = lambda root: calls.append(Path(root)) or progress.update(
        value={"state": "running", "message": "training run 2", "done": 2, "total": 7})
    fake.demo_progress = lambda root: progress["value"]
    monkeypatch.setitem(sys.modules, "ddsm_core.demo", fake)
    monkeypatch.setattr(ddsm_core, "demo", fake, raising=False)
    for page in PAGES:
        at = open_app(tmp_path, page)
        assert any("no trained runs yet" in i for i in texts(at.info)), page
        assert [b.label for b in at.button if b.key == "start_demo"] == ["Build the demo workspace"]
    at.button(key="start_demo").click().run()
    assert_clean(at)
    assert calls == [tmp_path.resolve()]
    bars = at.get("progress")
    assert any("training run 2" in bar.proto.text and "(2/7)" in bar.proto.text for bar in bars)
    assert not [b for b in at.button if b.key == "start_demo"]  # no second demo while one runs


def test_run_without_predictions_offers_evaluation_and_runs_it(workspace_copy, open_app):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    shutil.rmtree(runs.predictions_dir(root, t0))
    shutil.rmtree(runs.metrics_dir(root, t0))
    at = open_app(root, "pages/confusion_matrix.py", run=t0)
    assert any("has not been evaluated" in w for w in texts(at.warning))
    at.button(key=f"evaluate_{t0}").click().run()
    assert_clean(at)
    assert any("Evaluating run" in i for i in texts(at.info))
    deadline = time.time() + 120
    while review.evaluation_state(root, t0)["state"] == "running" and time.time() < deadline:
        time.sleep(1)
    assert review.evaluation_state(root, t0)["state"] == "done", review.evaluation_state(root, t0)
    at.run()
    assert_clean(at)
    assert at.dataframe(key="cm_table").value.shape == (5, 5)


def test_failed_and_cancelled_runs_explain_themselves(workspace_copy, open_app):
    root, t0, t5 = workspace_copy.root, workspace_copy.run_t0, workspace_copy.run_t5
    runs.write_status(root, t0, state="failed", error="ResourceExhaustedError: out of memory")
    runs.write_status(root, t5, state="cancelled")
    at = open_app(root, "pages/training_curves.py", run=t0)
    assert any("out of memory" in e and "Resume" in e for e in texts(at.error))
    at = open_app(root, "pages/gallery.py", run=t5)
    assert any("cancelled" in w for w in texts(at.warning))


def test_running_run_without_history_says_so(workspace_copy, open_app):
    root = workspace_copy.root
    run_id = runs.create_run(root, jobs_config(epochs=3))
    runs.write_status(root, run_id, state="running", pid=__import__("os").getpid(), epoch=0)
    at = open_app(root, "pages/training_curves.py", run=run_id)
    assert any("has not finished an epoch" in i for i in texts(at.info))
    at.switch_page("pages/gallery.py").run()
    assert any("no predictions yet" in i for i in texts(at.info))


def test_moved_image_files_show_a_message_per_patch(workspace_copy, open_app):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    path = runs.predictions_file(root, t0, "test")
    frame = pd.read_parquet(path)
    frame["path"] = [str(Path("/nonexistent/moved") / Path(p).name) for p in frame["path"]]
    workspace.write_parquet(path, frame)
    at = open_app(root, "pages/gallery.py", run=t0)
    missing = [w for w in texts(at.warning) if "image file missing" in w]
    assert len(missing) >= 2 and not at.get("image")
    assert any(f"{total} of {total} patches match" in m for m in texts(at.markdown) for total in [len(frame)])


def test_class_missing_in_test_keeps_every_class(workspace_copy, open_app):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    frame = pd.read_parquet(runs.predictions_file(root, t0, "test"))
    frame = frame[frame["y_true"] != 3].reset_index(drop=True)
    task = get_task(0)
    probs = frame[review.probability_columns(task)].to_numpy()
    probs = probs / probs.sum(axis=1, keepdims=True)
    workspace.write_parquet(runs.predictions_file(root, t0, "test"), frame)
    workspace.write_json(runs.metrics_file(root, t0, "test"),
                         compute_metrics(frame["y_true"].to_numpy(), probs, task.class_names, n_boot=20))
    at = open_app(root, "pages/confusion_matrix.py", run=t0)
    table = at.dataframe(key="cm_table").value
    assert table.shape == (5, 5) and list(table.loc["true malignant calcification"]) == ["0.0% (0)"] * 5
    assert any("malignant calcification" in i for i in texts(at.info))


# ---------------------------------------------------------------- retrain panel

def jobs_config(**overrides):
    from ddsm_core.config import RunConfig

    return RunConfig(**({"dataset": "synth", "task": 5, "backbone": "small_cnn", "epochs": 1, "image_size": 32,
                         "batch_size": 32, "lr": 1e-3} | overrides))


def fill_retrain(at: AppTest, **values) -> AppTest:
    for key, value in values.items():
        widget = {"rt_task": at.selectbox, "rt_backbone": at.selectbox, "rt_epochs": at.number_input,
                  "rt_lr": at.number_input, "rt_size": at.number_input}[key](key=key)
        widget.set_value(value)
    next(b for b in at.button if b.label == "Start").click()
    return at.run()


def test_retrain_refuses_bad_settings_in_sentences(workspace_copy, open_app):
    at = open_app(workspace_copy.root)
    before = runs.list_ids(workspace_copy.root)
    fill_retrain(at, rt_lr=1.5, rt_epochs=1)
    assert_clean(at)
    errors = texts(at.sidebar.error)
    assert any("learning rate 1.5" in e for e in errors)
    assert runs.list_ids(workspace_copy.root) == before


def test_retrain_starts_a_job_and_shows_its_status(workspace_copy, open_app):
    root = workspace_copy.root
    at = open_app(root)
    fill_retrain(at, rt_task=5, rt_backbone="small_cnn", rt_epochs=1, rt_size=32, rt_lr=0.001)
    assert_clean(at)
    new = [r for r in runs.list_ids(root) if r not in workspace_copy.run_ids]
    assert len(new) == 1
    run_id = new[0]
    try:
        assert any(run_id in s for s in texts(at.sidebar.success))
        assert f"**Job {run_id}**" in texts(at.sidebar.markdown)
        assert runs.read_config(root, run_id)["epochs"] == 1 and runs.read_config(root, run_id)["image_size"] == 32
        deadline = time.time() + 120
        while jobs.watch(root, run_id)["state"] in ("queued", "running") and time.time() < deadline:
            time.sleep(1)
        assert jobs.watch(root, run_id)["state"] == "completed", runs.read_status(root, run_id)
        deadline = time.time() + 60  # the worker evaluates after training
        while not review.available_splits(root, run_id) and time.time() < deadline:
            time.sleep(1)
        at.run()
        assert_clean(at)
        assert any(f"Run {run_id} completed" in s for s in texts(at.sidebar.success))
        bars = [bar for bar in at.get("progress") if "completed: epoch 1/1" in bar.proto.text]
        assert bars and bars[0].proto.value == 100
        # the new run is in the pickers without restarting the app
        at.selectbox(key="pick_task").set_value(5).run()
        assert any(option.startswith(run_id) for option in at.selectbox(key="pick_run").options)
    finally:
        if jobs.watch(root, run_id)["state"] in ("queued", "running"):
            jobs.cancel(root, run_id)


def test_retrain_form_shows_the_learning_rate_and_verdicts_it_will_use(workspace_copy, open_app):
    from ddsm_core import verdicts
    from ddsm_core.data import store

    root = workspace_copy.root
    at = open_app(root)
    assert "Learning rate used: 0.001 (the default)" in texts(at.sidebar.caption)
    at.radio(key="rt_weights").set_value("imagenet").run()  # fine-tuning pretrained weights: a smaller step
    assert "Learning rate used: 0.0001 (the default)" in texts(at.sidebar.caption)
    assert at.checkbox(key="rt_reviews").label.startswith("Apply 0 radiologist verdict(s)")
    assert at.checkbox(key="rt_reviews").disabled
    manifest = store.load(root, "synth").manifest
    train, test = (manifest.loc[manifest["split"] == split, "filename"] for split in ("train", "test"))
    verdicts.add(root, "synth", train.iloc[0], "exclude", reviewer="dr a")
    verdicts.add(root, "synth", train.iloc[1], "relabel", new_label=3, reviewer="dr a")
    verdicts.add(root, "synth", train.iloc[2], "agree", reviewer="dr a")
    verdicts.add(root, "synth", test.iloc[0], "exclude", reviewer="dr a")  # the test split is never applied
    at.run()
    assert_clean(at)
    assert at.checkbox(key="rt_reviews").label.startswith("Apply 2 radiologist verdict(s)")
    assert not at.checkbox(key="rt_reviews").disabled


def test_data_page_draws_the_evaluations_slices_without_an_audit(trained_workspace, open_app):
    """Metrics per slice come with the evaluation: the chart is there before anyone runs the audit."""
    root, run_id = trained_workspace.root, trained_workspace.run_t0
    at = open_app(root, "pages/data.py", run=run_id)
    assert any("not been audited" in info.value for info in at.info)
    stored = workspace.read_json(runs.metrics_file(root, run_id, "test"))["slices"]["columns"]
    at.selectbox(key="audit_slice_column").select("view").run()
    assert_clean(at)
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    drawn = dict(zip(plotly_values(spec["data"][0]["x"]), plotly_values(spec["data"][0]["y"])))
    expected = {e["value"]: e["balanced_accuracy"] for e in stored["view"] if e["balanced_accuracy"] is not None}
    assert expected, "the test run's views have balanced accuracies to draw"
    assert drawn.keys() == expected.keys() and drawn == pytest.approx(expected)
