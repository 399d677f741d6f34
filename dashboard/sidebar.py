"""Every page's set-up: page config, the app's own navigation, the run picker and the retrain panel.

The dashboard is Streamlit's classic multipage app: streamlit_app.py is the
first page (Runs) and Streamlit finds the others in pages/. Its own page list
is hidden (.streamlit/config.toml: client.showSidebarNavigation = false) because
it names pages after their files; `page()` draws the app's list instead, with
titles and icons, and every link carries the picked run (?run=).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import streamlit as st

from ddsm_core import jobs, review, runs, verdicts
from ddsm_core.config import RunConfig, default_lr
from ddsm_core.data import store
from ddsm_core.errors import UserError
from ddsm_core.models import BACKBONES
from ddsm_core.tasks import TASKS

from . import auth
from .cache import dataset, records, root

# (script, title, icon): the navigation, in order. A page's URL is its file name ("/" for the first).
PAGES = (
    ("streamlit_app.py", "Runs", ":material/table_rows:"),
    ("pages/training_curves.py", "Training curves", ":material/show_chart:"),
    ("pages/confusion_matrix.py", "Confusion matrix", ":material/grid_on:"),
    ("pages/certainty.py", "Certainty", ":material/insights:"),
    ("pages/gallery.py", "Gallery", ":material/photo_library:"),
    ("pages/review.py", "Review", ":material/rate_review:"),
    ("pages/compare.py", "Compare", ":material/compare_arrows:"),
    ("pages/data.py", "Data", ":material/dataset:"),
)
RUN_KEY = "review_run_id"  # the picked run, for the pages


def page(title: str) -> None:
    """First call of every page: page config, navigation, run picker, retrain panel; then the title."""
    st.set_page_config(page_title=f"{title} · DDSM patch classifier review", page_icon=":material/radiology:",
                       layout="wide")
    auth.gate()  # served beyond localhost: sign in first (the signed-in user is the reviewer)
    navigation = st.sidebar.container()
    all_records = records()
    run_id = run_picker(all_records)
    with navigation:
        for script, label, icon in PAGES:
            st.page_link(script, label=label, icon=icon, query_params={"run": run_id} if run_id else None)
    auth.reviewer_panel()
    retrain_panel(all_records)
    st.sidebar.caption(f"Workspace: {root()}")
    st.title(title)


def current() -> dict | None:
    """The picked run's record (None when the workspace has no runs)."""
    return review.find_record(records(), st.session_state.get(RUN_KEY))


# ---------------------------------------------------------------- the run picker

LEVELS = ("dataset", "task", "backbone", "run")
SELECTION = "_run_selection"  # {dataset, task, backbone, run}: the one source of truth for the pickers
LINK_SEEN = "_run_link_seen"  # the ?run= value last written or applied


def _record_field(record: dict, level: str):
    return record["run_id"] if level == "run" else record[level]


def _select(run_id: str) -> None:
    record = review.find_record(records(), run_id)
    st.session_state[SELECTION] = {level: _record_field(record, level) for level in LEVELS}


def _on_pick(level: str) -> None:
    """A picker changed: keep the levels above, keep the levels below where still possible."""
    chosen = dict(st.session_state.get(SELECTION) or {}) | {level: st.session_state[f"pick_{level}"]}
    above = LEVELS[:LEVELS.index(level) + 1]
    mine = [r for r in records() if all(_record_field(r, lv) == chosen[lv] for lv in above)]
    for lower in LEVELS[LEVELS.index(level) + 1:]:
        keep = [r for r in mine if _record_field(r, lower) == chosen.get(lower)]
        mine = keep or mine
        if lower == "backbone" or not keep:
            break
    if mine:
        _select(chosen["run"] if level == "run" else review.default_run(mine))


def run_picker(all_records: list[dict]) -> str | None:
    """Dataset, task, backbone, run; the latest completed run by default; the choice lives in ?run=.

    The selection is kept in one session key (widget state alone does not
    survive every page change); a ?run= link that differs from the last one
    written wins, so a pasted link reproduces the view.
    """
    st.sidebar.subheader("Run")
    if not all_records:
        st.sidebar.info("No runs in this workspace yet.")
        return None
    wanted = st.query_params.get("run")
    if wanted and wanted != st.session_state.get(LINK_SEEN):
        st.session_state[LINK_SEEN] = wanted
        if review.find_record(all_records, wanted):
            _select(wanted)
        else:
            st.sidebar.warning(f"Run {wanted} from the link is not in this workspace; showing another run.")
    selection = st.session_state.get(SELECTION) or {}
    if review.find_record(all_records, selection.get("run")) is None:
        _select(review.default_run(all_records))
    selection = st.session_state[SELECTION]
    labels = {r["run_id"]: review.run_label(r) for r in all_records}
    formats = {"task": review.task_label, "run": lambda r: labels.get(r, r)}
    with st.sidebar:
        for index, level in enumerate(LEVELS):
            options = review.picker_options(all_records, *[selection[lv] for lv in LEVELS[:index]])
            st.session_state[f"pick_{level}"] = selection[level]
            st.selectbox(level.capitalize(), options, key=f"pick_{level}", on_change=_on_pick, args=(level,),
                         **({"format_func": formats[level]} if level in formats else {}))
    run_id = selection["run"]
    st.session_state[LINK_SEEN] = run_id
    st.query_params["run"] = run_id
    st.session_state[RUN_KEY] = run_id
    return run_id


# ---------------------------------------------------------------- the retrain panel

def _index_of(options: list, value) -> int:
    return options.index(value) if value in options else 0


def retrain_panel(all_records: list[dict]) -> None:
    here = root()
    datasets = store.list_datasets(here)
    st.sidebar.subheader("Retrain")
    if not datasets:
        st.sidebar.caption("Import a dataset (python -m ddsm_core import ...) or build the demo to train.")
        return
    with st.sidebar:
        # a fragment: changing a setting reruns the form alone (it shows the learning rate it will use)
        st.fragment(_retrain_form)(here, datasets, current() or {})
        if STARTED in st.session_state:  # once, on the app rerun that follows the start
            st.success(f"Started run {st.session_state.pop(STARTED)}.")
    active = jobs.running_ids(here) + jobs.queued_ids(here)
    watched = st.session_state.get("watch_job")
    polling = bool(active) or (watched and not _settled(jobs.watch(here, watched)))
    with st.sidebar:
        st.fragment(run_every=2 if polling else None)(_job_panel)(here)


STARTED = "_retrain_started"  # the run the form last started, shown under it


def _retrain_form(here: Path, datasets: list[str], picked: dict) -> None:
    with st.expander("New training run", expanded=False):
        dataset_name = st.selectbox("Dataset", datasets, key="rt_dataset",
                                    index=_index_of(datasets, picked.get("dataset")))
        task_ids = list(TASKS)
        task = st.selectbox("Task", task_ids, key="rt_task", format_func=review.task_label,
                            index=_index_of(task_ids, picked.get("task")))
        names = list(BACKBONES)
        backbone = st.selectbox("Backbone", names, key="rt_backbone", index=_index_of(names, picked.get("backbone")))
        epochs = st.number_input("Epochs", value=10, step=1, key="rt_epochs")
        image_size = st.number_input("Image size (pixels)", value=128, step=16, key="rt_size")
        weights = st.radio("Weights", ["none", "imagenet", "path"], horizontal=True, key="rt_weights")
        weights_path = st.text_input("Weights file (when 'path')", key="rt_weights_path")
        fine_tune = st.radio("Fine-tune", ["full", "head"], horizontal=True, key="rt_fine_tune",
                             help="full: train every layer; head: freeze the backbone and train the classifier on "
                                  "its cached features (computed once per dataset, backbone and size)")
        augment = st.checkbox("Augmentation (flips, small rotations, contrast)", key="rt_augment",
                              disabled=fine_tune == "head", help="not with a head on cached features")
        chosen_weights = weights_path.strip() if weights == "path" else weights
        settings = RunConfig(dataset=dataset_name, task=int(task), backbone=backbone, epochs=int(epochs),
                             image_size=int(image_size), weights=chosen_weights or "none", fine_tune=fine_tune,
                             augment=bool(augment) and fine_tune != "head")
        lr = st.number_input("Learning rate", value=None, min_value=0.0, step=1e-4, format="%.5f",
                             key="rt_lr", placeholder=f"default {default_lr(settings):g}",
                             help="leave empty for the default: 1e-3 from scratch or for a head, 1e-4 to fine-tune "
                                  "pretrained weights")
        st.caption(f"Learning rate used: {lr or default_lr(settings):g}" + ("" if lr else " (the default)"))
        applied = _applicable_verdicts(here, dataset_name)
        reviews = st.checkbox(f"Apply {applied} radiologist verdict(s) (relabels, exclusions)", key="rt_reviews",
                              disabled=applied == 0,
                              help="relabeled training patches train with their new label, excluded ones are left "
                                   "out; the test split is never changed")
        if st.button("Start", type="primary", key="rt_start"):
            try:
                if weights == "path" and not chosen_weights:
                    raise UserError("choose a weights file path, or pick weights none or imagenet")
                run_id = jobs.submit(here, replace(settings, lr=lr or None, reviews="apply" if reviews else "ignore"))
            except UserError as error:
                show_problems(error)
            else:
                st.session_state["watch_job"] = st.session_state[STARTED] = run_id
                st.rerun(scope="app")  # the job panel picks the run up


def _applicable_verdicts(here: Path, dataset_name: str) -> int:
    """Relabels and exclusions a retrain with verdicts would apply to this dataset's training split."""
    current = verdicts.current(here, dataset_name)
    if current.empty:
        return 0
    return verdicts.apply(dataset(dataset_name).manifest, current)[1]["applied"]


def show_problems(error: UserError, where=st) -> None:
    for problem in error.problems:
        where.error(problem)


def _settled(status: dict) -> bool:
    """Nothing more will happen to this job: finished, and evaluated if it completed."""
    return status["state"] in runs.FINAL and status.get("evaluation") != "running"


def _job_panel(here: Path) -> None:
    running, queued = jobs.running_ids(here), jobs.queued_ids(here)
    watched = st.session_state.get("watch_job")
    shown = list(dict.fromkeys(running + ([watched] if watched and runs.exists(here, watched) else [])))
    seen = st.session_state.setdefault("_job_states", {})
    finished_now = False
    for run_id in shown:
        status = jobs.watch(here, run_id)
        _job_status(here, run_id, status)
        settled = _settled(status)
        finished_now |= seen.get(run_id) is False and settled
        seen[run_id] = settled
    if queued:
        st.caption("Queued: " + ", ".join(queued))
    if not shown and not queued:
        st.caption("No job running.")
    if finished_now:
        st.rerun(scope="app")  # the new run appears in the pickers


def _job_status(here: Path, run_id: str, status: dict) -> None:
    """One job: progress bar, ETA, latest metrics, its state in words, Cancel or Resume."""
    progress = review.job_progress(status, runs.read_config(here, run_id).get("epochs"))
    st.markdown(f"**Job {run_id}**")
    st.progress(progress["fraction"], text=progress["text"])
    if progress["eta"]:
        st.caption(progress["eta"])
    if progress["metrics"]:
        st.caption("  ".join(f"{k} {v:.3f}" for k, v in progress["metrics"].items()))
    state, evaluation = progress["state"], str(status.get("evaluation", ""))
    if state == "failed":
        st.error(f"Run {run_id} failed: {progress['error'] or 'no error recorded'}")
    elif state in ("cancelled", "interrupted"):
        st.warning(f"Run {run_id} is {state}.")
    elif state == "completed" and evaluation == "running":
        st.info(f"Run {run_id} completed; evaluating its test split.")
    elif state == "completed" and evaluation.startswith("failed"):
        st.error(f"Run {run_id} completed but its evaluation {evaluation}")
    elif state == "completed":
        st.success(f"Run {run_id} completed and evaluated.")
    if state in ("running", "queued") and st.button("Cancel", key=f"cancel_{run_id}"):
        _act(lambda: jobs.cancel(here, run_id))
    if state in runs.RESUMABLE and st.button("Resume", key=f"resume_{run_id}"):
        _act(lambda: f"run {jobs.resume(here, run_id)} queued again")


def _act(action) -> None:
    try:
        st.toast(action())
    except UserError as error:
        show_problems(error)
