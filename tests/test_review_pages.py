"""The Review and Compare pages and the patch detail under AppTest, on conftest's trained runs.

Run B for Compare and the disagreement queue is test_review_loop.add_predicted_run: a second run of run_t0's
dataset and task whose stored predictions are a seeded perturbation of run_t0's (no training).
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score
from streamlit.testing.v1 import AppTest
from test_review_loop import add_predicted_run

from dashboard import auth
from ddsm_core import compare, explain, runs, verdicts
from ddsm_core.evaluation import probability_columns
from ddsm_core.tasks import get_task
from support import assert_clean, texts

pytestmark = pytest.mark.slow
NAMES = get_task(0).class_names


def predictions(root, run_id) -> pd.DataFrame:
    return pd.read_parquet(runs.predictions_file(root, run_id, "test"))


def wrong_most_confident_first(root, run_id) -> list[str]:
    frame = predictions(root, run_id)
    wrong = frame[frame["y_true"] != frame["y_pred"]]
    return list(wrong.sort_values(["confidence", "filename"], ascending=[False, True], kind="stable")["filename"])


def frames_with(at: AppTest, *columns: str) -> list[pd.DataFrame]:
    """The st.dataframe values whose columns include all of `columns`, in page order (display-only tables
    carry no key in AppTest)."""
    return [element.value for element in at.dataframe if set(columns) <= set(element.value.columns)]


PROBABILITIES, HISTORY, OTHERS = ("class", "probability", "is"), ("time", "reviewer", "verdict"), ("run", "predicted")


def position_text(at: AppTest) -> str:
    return next(m for m in texts(at.markdown) if m.startswith("**Patch "))


def progress_text(at: AppTest) -> str:
    return next(bar.proto.text for bar in at.get("progress") if "reviewed in this queue" in bar.proto.text)


def sign(at: AppTest, name: str = "Dr. Rivera") -> AppTest:
    at.text_input(key="reviewer_input").set_value(name).run()
    assert_clean(at)
    return at


# ---------------------------------------------------------------- Review

def test_review_queue_starts_with_the_most_confident_wrong_patch(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    queue = wrong_most_confident_first(root, t0)
    at = open_app(root, "pages/review.py", run=t0)
    assert texts(at.title) == ["Review"]
    assert at.selectbox(key="review_reason").value == "wrong, most confident first"
    assert position_text(at).startswith(f"**Patch 1 of {len(queue)}**")
    assert at.get("subheader")[0].value == queue[0]
    assert progress_text(at) == f"0 of {len(queue)} reviewed in this queue"
    # the detail: every class probability, the true label, the shortcuts
    frame = predictions(root, t0).set_index("filename")
    probabilities = frames_with(at, *PROBABILITIES)[0]
    assert list(probabilities["class"]) == NAMES
    assert probabilities["probability"].tolist() == pytest.approx(
        frame.loc[queue[0], probability_columns(get_task(0))].tolist())
    assert any(f"**True:** {NAMES[frame.loc[queue[0], 'y_true']]}" in m for m in texts(at.markdown))
    shortcuts = {b.key: b.proto.shortcut.upper() for b in at.button if b.key and b.key.startswith("review_")}
    assert shortcuts["review_next"] == "N" and shortcuts["review_previous"] == "P"
    assert shortcuts["review_agree"] == "A" and shortcuts["review_exclude"] == "X" and shortcuts["review_relabel_3"] == "3"


def test_verdict_buttons_need_a_reviewer_name(workspace_copy, open_app):
    at = open_app(workspace_copy.root, "pages/review.py", run=workspace_copy.run_t0)
    assert any("Type your name in the sidebar" in w for w in texts(at.warning))
    assert at.button(key="review_agree").disabled and at.button(key="review_relabel_2").disabled
    sign(at)
    assert not at.button(key="review_agree").disabled
    assert "Recording as **Dr. Rivera**." in texts(at.caption)


def test_clicking_verdicts_records_them_and_moves_on(workspace_copy, open_app):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    queue = wrong_most_confident_first(root, t0)
    at = sign(open_app(root, "pages/review.py", run=t0))
    at.button(key="review_agree").click().run()
    assert_clean(at)
    current = verdicts.current(root, "synth").set_index("filename")
    assert current.loc[queue[0], "verdict"] == "agree" and current.loc[queue[0], "reviewer"] == "Dr. Rivera"
    # the reviewed patch left the unreviewed queue: the next one is shown
    assert at.get("subheader")[0].value == queue[1]
    assert position_text(at).startswith(f"**Patch 1 of {len(queue) - 1}**")
    assert progress_text(at) == f"1 of {len(queue)} reviewed in this queue"
    at.text_input(key=f"review_note_{queue[1]}").set_value("spiculated: malignant mass")
    at.button(key="review_relabel_4").click().run()
    assert_clean(at)
    current = verdicts.current(root, "synth").set_index("filename")
    assert (current.loc[queue[1], "verdict"], current.loc[queue[1], "new_label"]) == ("relabel", 4)
    assert current.loc[queue[1], "note"] == "spiculated: malignant mass"
    # the reviewed ones, with their badges, under the "reviewed" state; the history in the detail
    at.selectbox(key="review_state").set_value("reviewed").run()
    assert position_text(at).startswith("**Patch 1 of 2**")
    assert at.get("subheader")[0].value == queue[0]
    assert any("**Current verdict:** ✔ agree by Dr. Rivera" in m for m in texts(at.markdown))
    at.button(key="review_exclude").click().run()
    assert at.get("subheader")[0].value == queue[1]  # a verdict moves on to the next patch
    at.button(key="review_previous").click().run()
    history = frames_with(at, *HISTORY)[0]
    assert list(history["verdict"]) == ["exclude", "agree"]  # newest first
    assert len(verdicts.history(root, "synth", queue[0])) == 2


def test_next_previous_and_class_filters(trained_workspace, open_app):
    root, t0 = trained_workspace.root, trained_workspace.run_t0
    queue = wrong_most_confident_first(root, t0)
    at = open_app(root, "pages/review.py", run=t0)
    at.selectbox(key="review_state").set_value("any").run()
    assert at.button(key="review_previous").disabled
    at.button(key="review_next").click().run()
    at.button(key="review_next").click().run()
    assert at.get("subheader")[0].value == queue[2] and position_text(at).startswith("**Patch 3 of")
    at.button(key="review_previous").click().run()
    assert at.get("subheader")[0].value == queue[1]
    frame = predictions(root, t0).set_index("filename")
    true_class = NAMES[frame.loc[queue[0], "y_true"]]
    at.multiselect(key="review_true").set_value([true_class]).run()
    expected = [name for name in queue if NAMES[frame.loc[name, "y_true"]] == true_class]
    assert position_text(at).startswith(f"**Patch 1 of {len(expected)}**")  # a filter restarts the queue
    assert at.get("subheader")[0].value == expected[0]


def test_disagreement_queue_and_other_runs_in_the_detail(workspace_copy, open_app):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    run_b = add_predicted_run(root, t0)
    a, b = predictions(root, t0).set_index("filename"), predictions(root, run_b).set_index("filename")
    differ = (a["y_pred"] != b.loc[a.index, "y_pred"]).sum()
    at = open_app(root, "pages/review.py", run=t0)
    at.selectbox(key="review_reason").set_value("disagreement with another run").run()
    assert_clean(at)
    assert at.selectbox(key="review_other").value == run_b  # only runs of the same dataset and task
    at.selectbox(key="review_state").set_value("any").run()
    assert position_text(at).startswith(f"**Patch 1 of {differ}**")
    shown = at.get("subheader")[0].value
    others = frames_with(at, *OTHERS)[0].set_index("run")
    assert set(others.index) == {run_b, workspace_copy.run_t5} - ({workspace_copy.run_t5} if shown not in set(
        predictions(root, workspace_copy.run_t5)["filename"]) else set())
    assert others.loc[run_b, "predicted"] == NAMES[b.loc[shown, "y_pred"]] != NAMES[a.loc[shown, "y_pred"]]


def test_the_review_page_offers_the_export(workspace_copy, open_app, monkeypatch):
    root = workspace_copy.root
    first, second = wrong_most_confident_first(root, workspace_copy.run_t0)[:2]
    verdicts.add(root, "synth", first, "exclude", note="burned-in label", reviewer="ann")
    verdicts.add(root, "synth", first, "agree", reviewer="bob")
    verdicts.add(root, "synth", second, "relabel", new_label=1, reviewer="ann")
    written = []  # what the page hands to the download button: the export file's bytes
    original = verdicts.export
    monkeypatch.setattr(verdicts, "export", lambda *a, **k: written.append(Path(original(*a, **k)).read_bytes()))
    at = open_app(root, "pages/review.py", run=workspace_copy.run_t0)
    button = at.get("download_button")[0]
    assert button.proto.label == "Download verdicts (CSV)"
    exported = pd.read_csv(io.BytesIO(written[-1]))
    assert list(exported.columns) == list(verdicts.EXPORT_COLUMNS)
    assert exported.set_index("filename").loc[first, "reviewer"] == "bob" and len(exported) == 2
    at.checkbox(key="review_export_history").check().run()
    assert len(pd.read_csv(io.BytesIO(written[-1]))) == 3


# ---------------------------------------------------------------- Compare

def test_compare_page_equals_sklearn_and_opens_disagreements(workspace_copy, open_app):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    run_b = add_predicted_run(root, t0)
    at = open_app(root, "pages/compare.py", run=t0)
    assert texts(at.title) == ["Compare"]
    assert at.selectbox(key="compare_b").options == [run_b] or at.selectbox(key="compare_b").value == run_b
    table = frames_with(at, "metric", "B - A")[0].set_index("metric")
    a = predictions(root, t0)
    b = predictions(root, run_b).set_index("filename").loc[a["filename"]]
    columns = probability_columns(get_task(0))
    for label, metric in (("accuracy", accuracy_score), ("balanced accuracy", balanced_accuracy_score),
                          ("macro F1", lambda y, p: f1_score(y, p, average="macro"))):
        assert table.loc[label, "A"] == pytest.approx(metric(a["y_true"], a["y_pred"]))
        assert table.loc[label, "B"] == pytest.approx(metric(b["y_true"], b["y_pred"]))
    auc_b = roc_auc_score(b["y_true"], b[columns].to_numpy(), multi_class="ovr")
    assert table.loc["ROC AUC", "B"] == pytest.approx(auc_b)
    result = compare.compare_runs(root, t0, run_b)
    assert table.loc["accuracy", "95% CI of B - A"] == "[{:+.3f}, {:+.3f}]".format(*result["metrics"]["accuracy"]["ci"])
    matrix_b = frames_with(at, "N", "MM")[1]
    counts = confusion_matrix(b["y_true"], b["y_pred"], labels=range(5))
    assert [[int(cell.split("(")[1].rstrip(")")) for cell in row] for row in matrix_b.to_numpy()] == counts.tolist()
    groups = compare.disagreement_groups(result)
    assert [tab.label for tab in at.tabs] == [f"A right, B wrong ({len(groups['a right'])})",
                                              f"B right, A wrong ({len(groups['b right'])})",
                                              f"both wrong ({len(groups['both wrong'])})"]
    # a disagreement tile opens the patch detail as a dialog, where a verdict can be given
    patch = groups["a right"][0]["filename"]
    sign(at)
    at.button(key=f"compare_a_right_open_{patch}").click().run()
    assert_clean(at)
    assert patch in texts(at.get("subheader"))
    assert list(frames_with(at, *PROBABILITIES)[0]["class"]) == NAMES
    at.button(key="dialog_unsure").click().run()
    assert_clean(at)
    assert not at.toast  # a toast from a verdict's callback would close the dialog in the browser
    assert any(m.startswith("Recorded ? unsure for") for m in texts(at.success))
    assert verdicts.current(root, "synth").set_index("filename").loc[patch, "verdict"] == "unsure"
    assert patch in texts(at.get("subheader"))  # the dialog stays open
    assert any(patch in caption and "? unsure" in caption
               for image in at.get("image") for caption in image.captions)  # the tile's badge


def test_compare_page_without_a_comparable_run_says_why(trained_workspace, open_app):
    at = open_app(trained_workspace.root, "pages/compare.py", run=trained_workspace.run_t0)
    assert any("No other run of dataset synth" in i and "other tasks have other classes" in i for i in texts(at.info))
    assert not at.get("dataframe")


# ---------------------------------------------------------------- tiles elsewhere

def test_gallery_tiles_carry_verdict_badges_and_open_the_detail(workspace_copy, open_app):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    frame = predictions(root, t0)
    predicted = int(frame["y_pred"].mode().iat[0])  # a class the model predicts (which ones depends on training)
    top = frame[frame["y_pred"] == predicted].sort_values("confidence", ascending=False, kind="stable")["filename"].iat[0]
    verdicts.add(root, "synth", top, "relabel", new_label=3, reviewer="ann")
    at = open_app(root, "pages/gallery.py", run=t0)
    captions = [c for image in at.get("image") for c in image.captions if c.startswith(f"{top} |")]
    assert captions and all(c.endswith("| ✎ relabel → 3 MC") for c in captions)
    at.button(key=f"gallery_high_{NAMES[predicted]}_open_{top}").click().run()
    assert_clean(at)
    assert top in texts(at.get("subheader"))
    history = frames_with(at, *HISTORY)[0]
    assert list(history["reviewer"]) == ["ann"] and list(history["new_label"]) == [3]


# ---------------------------------------------------------------- Grad-CAM from the detail

def test_gradcam_is_computed_in_the_background_and_overlaid(workspace_copy, open_app, measurement):
    root, t0 = workspace_copy.root, workspace_copy.run_t0
    queue = wrong_most_confident_first(root, t0)
    at = open_app(root, "pages/review.py", run=t0)
    assert explain.job_state(root, t0, queue[0])["state"] == "none"
    started = time.monotonic()
    at.button(key="review_gradcam").click().run()
    assert_clean(at)
    assert explain.job_state(root, t0, queue[0])["state"] in ("running", "cached")
    assert any("Computing Grad-CAM in the background" in i for i in texts(at.info)) or \
        explain.job_state(root, t0, queue[0])["state"] == "cached"
    while explain.load_cached(root, t0, queue[0]) is None and time.monotonic() - started < 180:
        time.sleep(1)
    measurement(f"Grad-CAM from the dashboard, background process until cached: {time.monotonic() - started:.1f} s")
    at.run()
    assert_clean(at)
    cached = explain.load_cached(root, t0, queue[0])
    captions = [c for image in at.get("image") for c in image.captions]
    assert f"predicted class: {cached['predicted_name']}" in captions and f"true class: {cached['true_name']}" in captions
    assert at.slider(key="review_opacity").value == 0.45
    # the next patches of the queue were computed by the same job
    deadline = time.monotonic() + 60
    while explain.job_state(root, t0, queue[1])["state"] == "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert explain.load_cached(root, t0, queue[1]) is not None


def test_signed_in_reviewer_records_under_the_signed_in_name(workspace_copy, open_app):
    at = open_app(workspace_copy.root, "pages/review.py", run=workspace_copy.run_t0)
    at.session_state[auth.PASSWORD_USER] = "Dr. Chen"
    at.run()
    assert "Recording as **Dr. Chen**." in texts(at.caption)
    shown = at.get("subheader")[0].value
    at.button(key="review_agree").click().run()
    assert verdicts.current(workspace_copy.root, "synth").set_index("filename").loc[shown, "reviewer"] == "Dr. Chen"
