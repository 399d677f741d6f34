"""What every page shares: the workspace, cached reads, the run picker, the retrain panel, state messages.

It lives in the package's __init__ because Streamlit's legacy page list, shown
for a moment on a fresh server, lists every other .py file in pages/.

Only reads and draws: every question is answered by ddsm_core.review.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from ddsm_core import jobs, review, runs, workspace
from ddsm_core.config import RunConfig
from ddsm_core.data import store
from ddsm_core.errors import UserError
from ddsm_core.models import BACKBONES
from ddsm_core.tasks import TASKS

RUN_KEY = "review_run_id"  # the picked run, for the pages
SIDEBAR_DRAWN = "_sidebar_drawn"  # set by the sidebar, consumed by the page of the same script run
SESSION_STARTED = "_session_started"  # a page of this session has run before
FINAL = ("completed", "failed", "cancelled", "interrupted")


def root() -> Path:
    return workspace.workspace_root()


# ---------------------------------------------------------------- cached reads

@st.cache_data(ttl=10, show_spinner=False)
def _records(root_text: str, signature: tuple) -> list[dict]:
    return runs.list_runs(Path(root_text))


def records() -> list[dict]:
    """Run records; re-read whenever a run's files change (and at least every 10 s)."""
    here = root()
    return _records(str(here), review.runs_signature(here))


@st.cache_resource(max_entries=8, show_spinner=False)
def _results(root_text: str, run_id: str, split: str, stamp: int):
    return review.RunResults.load(Path(root_text), run_id, split)


def results(run_id: str, split: str = "test"):
    """The run's RunResults on a split (shared, do not modify), or None when it has no predictions."""
    here = root()
    return _results(str(here), run_id, split, review.predictions_stamp(here, run_id, split))


@st.cache_resource(max_entries=4, show_spinner=False)
def _dataset(root_text: str, name: str, stamp: int):
    return store.load(Path(root_text), name)


def dataset(name: str):
    here = root()
    manifest = workspace.dataset_dir(here, name) / "manifest.parquet"
    stamp = manifest.stat().st_mtime_ns if manifest.exists() else 0
    return _dataset(str(here), name, stamp)


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


def sidebar() -> None:
    """The shared sidebar: run picker, retrain panel, workspace. Drawn by streamlit_app.py before the page."""
    all_records = records()
    run_picker(all_records)
    retrain_panel(all_records)
    st.sidebar.caption(f"Workspace: {root()}")
    st.session_state[SIDEBAR_DRAWN] = True


def page_setup() -> None:
    """First call of every page: makes sure the app's own navigation and sidebar are there.

    Streamlit runs a pages/ file on its own, without streamlit_app.py, in its
    legacy pages-folder mode: it enters it for the first script run after a
    server start just because a folder named pages/ exists, and only
    st.navigation leaves it. On a session's first run this leaves that mode
    and reruns through streamlit_app.py (the page's url_path equals its file
    name, so the same page opens). Otherwise (AppTest, which re-enters that
    mode on every run, or `streamlit run pages/x.py`) it draws the sidebar
    itself.
    """
    first_run = not st.session_state.get(SESSION_STARTED)
    st.session_state[SESSION_STARTED] = True
    if st.session_state.pop(SIDEBAR_DRAWN, False):
        return
    if first_run and PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
    sidebar()
    st.session_state.pop(SIDEBAR_DRAWN, None)


def current() -> dict | None:
    """The picked run's record (None when the workspace has no runs)."""
    return review.find_record(records(), st.session_state.get(RUN_KEY))


# ---------------------------------------------------------------- the retrain panel

def retrain_panel(all_records: list[dict]) -> None:
    here = root()
    datasets = store.list_datasets(here)
    st.sidebar.subheader("Retrain")
    if not datasets:
        st.sidebar.caption("Import a dataset (python -m ddsm_core import ...) or build the demo to train.")
        return
    picked = current()
    with st.sidebar.expander("New training run", expanded=False), st.form("retrain", border=False):
        dataset_name = st.selectbox("Dataset", datasets, key="rt_dataset",
                                    index=datasets.index(picked["dataset"]) if picked and picked["dataset"] in datasets else 0)
        task_ids = list(TASKS)
        task = st.selectbox("Task", task_ids, key="rt_task", format_func=review.task_label,
                            index=task_ids.index(picked["task"]) if picked else 0)
        names = list(BACKBONES)
        backbone = st.selectbox("Backbone", names, key="rt_backbone",
                                index=names.index(picked["backbone"]) if picked and picked["backbone"] in names else 0)
        epochs = st.number_input("Epochs", value=10, step=1, key="rt_epochs")
        lr = st.number_input("Learning rate", value=1e-4, step=1e-4, format="%.5f", key="rt_lr")
        image_size = st.number_input("Image size (pixels)", value=128, step=16, key="rt_size")
        weights = st.radio("Weights", ["none", "imagenet", "path"], horizontal=True, key="rt_weights")
        weights_path = st.text_input("Weights file (when 'path')", key="rt_weights_path")
        fine_tune = st.radio("Fine-tune", ["full", "head"], horizontal=True, key="rt_fine_tune",
                             help="full: train every layer; head: freeze the backbone, train the classifier only")
        augment = st.checkbox("Augmentation (flips, small rotations, contrast)", key="rt_augment")
        start = st.form_submit_button("Start", type="primary")
    if start:
        chosen_weights = weights_path.strip() if weights == "path" else weights
        try:
            if weights == "path" and not chosen_weights:
                raise UserError("choose a weights file path, or pick weights none or imagenet")
            run_id = jobs.submit(here, RunConfig(dataset=dataset_name, task=int(task), backbone=backbone,
                                                   epochs=int(epochs), image_size=int(image_size), lr=float(lr),
                                                   weights=chosen_weights, fine_tune=fine_tune,
                                                   augment=bool(augment)))
        except UserError as error:
            for problem in error.problems:
                st.sidebar.error(problem)
        else:
            st.session_state["watch_job"] = run_id
            st.sidebar.success(f"Started run {run_id}.")
    active = jobs.running_ids(here) + jobs.queued_ids(here)
    watched = st.session_state.get("watch_job")
    polling = bool(active) or (watched and not _settled(jobs.watch(here, watched)))
    with st.sidebar:
        st.fragment(run_every=2 if polling else None)(_job_panel)(here)


def _settled(status: dict) -> bool:
    """Nothing more will happen to this job: finished, and evaluated if it completed."""
    return status["state"] in FINAL and status.get("evaluation") != "running"


def _job_panel(here: Path) -> None:
    running, queued = jobs.running_ids(here), jobs.queued_ids(here)
    watched = st.session_state.get("watch_job")
    shown = list(dict.fromkeys(running + ([watched] if watched and runs.exists(here, watched) else [])))
    seen = st.session_state.setdefault("_job_states", {})
    finished_now = False
    for run_id in shown:
        status = jobs.watch(here, run_id)
        config = runs.read_config(here, run_id)
        progress = review.job_progress(status, config.get("epochs"))
        st.markdown(f"**Job {run_id}**")
        st.progress(progress["fraction"], text=progress["text"])
        if progress["eta"]:
            st.caption(progress["eta"])
        if progress["metrics"]:
            st.caption("  ".join(f"{k} {v:.3f}" for k, v in progress["metrics"].items()))
        state = progress["state"]
        if state == "failed":
            st.error(f"Run {run_id} failed: {progress['error'] or 'no error recorded'}")
        elif state in ("cancelled", "interrupted"):
            st.warning(f"Run {run_id} is {state}.")
        elif state == "completed" and status.get("evaluation") == "running":
            st.info(f"Run {run_id} completed; evaluating its test split.")
        elif state == "completed" and str(status.get("evaluation", "")).startswith("failed"):
            st.error(f"Run {run_id} completed but its evaluation {status['evaluation']}")
        elif state == "completed":
            st.success(f"Run {run_id} completed and evaluated.")
        if state in ("running", "queued") and st.button("Cancel", key=f"cancel_{run_id}"):
            _act(lambda: jobs.cancel(here, run_id))
        if state in ("cancelled", "failed", "interrupted") and st.button("Resume", key=f"resume_{run_id}"):
            _act(lambda: f"run {jobs.resume(here, run_id)} queued again")
        settled = _settled(status)
        if seen.get(run_id) is False and settled:
            finished_now = True
        seen[run_id] = settled
    if queued:
        st.caption("Queued: " + ", ".join(queued))
    if not shown and not queued:
        st.caption("No job running.")
    if finished_now:
        st.rerun(scope="app")  # the new run appears in the pickers


def _act(action) -> None:
    try:
        st.toast(action())
    except UserError as error:
        for problem in error.problems:
            st.error(problem)


# ---------------------------------------------------------------- states every page handles

def demo_offer() -> None:
    """An empty workspace: say so and offer the demo."""
    here = root()
    st.info(f"The workspace {here} has no trained runs yet. Build the demo (a synthetic dataset and a few small "
            "trained, evaluated models) to explore the dashboard, or train a run from the sidebar once a dataset "
            "is imported (python -m ddsm_core import ...).")
    progress = review.demo_progress(here)
    if progress is None or progress.get("state") in ("failed", "completed"):  # completed yet empty: offer again
        if progress and progress.get("state") == "failed":
            st.error(f"The demo failed: {progress.get('message')}")
        if st.button("Build the demo workspace", type="primary", key="start_demo"):
            try:
                review.start_demo(here)
            except ImportError:
                st.error("The demo builder (ddsm_core.demo) is not installed in this version; "
                         "run python -m ddsm_core demo in a terminal instead.")
            except UserError as error:
                for problem in error.problems:
                    st.error(problem)
            else:
                st.rerun()
    else:
        st.fragment(run_every=2)(_demo_status)(here)


def _demo_status(here: Path) -> None:
    progress = review.demo_progress(here) or {}
    done, total = progress.get("done") or 0, progress.get("total") or 0
    st.progress(done / total if total else 0.0,
                text=f"Demo {progress.get('state', 'starting')}: {progress.get('message', '')} ({done}/{total})")
    if progress.get("state") in ("completed", "done") or (total and done >= total):
        st.success("The demo is ready.")
        st.rerun(scope="app")


def require_run() -> dict:
    """The picked run's record; on an empty workspace shows the demo offer and stops the page."""
    page_setup()
    record = current()
    if record is None:
        demo_offer()
        st.stop()
    return record


def state_banner(record: dict) -> None:
    message = review.state_message(record)
    if message:
        getattr(st, message[0])(message[1])


def require_results(record: dict, split_key: str | None = None):
    """The run's RunResults on a split; otherwise explains why there are none and offers Evaluate."""
    here = root()
    splits = review.available_splits(here, record["run_id"])
    if not splits:
        _no_predictions(record)
        st.stop()
    split = splits[0]
    if split_key and len(splits) > 1:
        split = st.selectbox("Split", splits, key=split_key)
    loaded = results(record["run_id"], split)
    if loaded is None:
        _no_predictions(record)
        st.stop()
    return loaded


def _no_predictions(record: dict) -> None:
    here, run_id, state = root(), record["run_id"], record["state"]
    if state in ("queued", "running"):
        st.info(f"Run {run_id} has no predictions yet: it is {state}, and the worker evaluates it when training "
                "ends. Watch it in the sidebar; the Training curves page is live meanwhile.")
        return
    if not (runs.folder(here, run_id) / "best.keras").exists():
        st.warning(f"Run {run_id} has no checkpoint to evaluate ({state} before finishing an epoch). "
                   "Resume it from the sidebar.")
        return
    st.fragment(run_every=2 if review.evaluation_state(here, run_id)["state"] == "running" else None)(
        _evaluate_offer)(here, run_id)


def _evaluate_offer(here: Path, run_id: str) -> None:
    evaluation = review.evaluation_state(here, run_id)
    if evaluation["state"] == "running":
        st.info(f"Evaluating run {run_id} in the background ({evaluation['message']}); this page updates when done.")
        return
    if evaluation["state"] == "done" or review.available_splits(here, run_id):
        st.rerun(scope="app")
    if evaluation["state"] == "failed":
        st.error(f"The last evaluation of run {run_id} failed:\n\n{evaluation['message']}")
    st.warning(f"Run {run_id} has not been evaluated: there are no test predictions to review.")
    if st.button("Evaluate on the test split", type="primary", key=f"evaluate_{run_id}"):
        try:
            review.start_evaluation(here, run_id)
        except UserError as error:
            for problem in error.problems:
                st.error(problem)
        else:
            st.rerun(scope="app")


# ---------------------------------------------------------------- drawing patches

def contrast_controls(prefix: str) -> tuple[float, float, int]:
    """Window, level and tile width sliders (in a row)."""
    left, middle, right = st.columns(3)
    window = left.slider("Window (contrast)", 1, 255, 255, key=f"{prefix}_window")
    level = middle.slider("Level (brightness)", 0, 255, 128, key=f"{prefix}_level")
    width = right.slider("Tile size (pixels)", 64, 512, 160, step=32, key=f"{prefix}_width",
                         help="enlarge the patches")
    return window, level, width


def pager(rows, key: str, per_page: int):
    """A page-number input (shown only when there is more than one page) and that page's rows."""
    pages_count = review.page(rows, 1, per_page)[1]
    if pages_count == 1:
        return rows.iloc[:per_page]
    current_page = st.session_state.get(key, 1)
    if not isinstance(current_page, int) or not 1 <= current_page <= pages_count:
        st.session_state[key] = 1
    number = st.number_input(f"Page (of {pages_count}, {per_page} per page)", 1, pages_count, key=key, step=1)
    return review.page(rows, number, per_page)[0]


def patch_grid(results_, rows, window: float, level: float, width: int, columns: int = 5) -> None:
    """Draw rows as tiles: image (contrast applied) and a caption; a message for a missing file."""
    if rows.empty:
        st.caption("No patches.")
        return
    columns = max(1, min(columns, 1200 // max(width, 1)))
    for position, (_, row) in enumerate(rows.iterrows()):
        if position % columns == 0:
            slots = st.columns(columns)  # one row of tiles at a time: reading order is row by row
        with slots[position % columns]:
            patch = review.load_patch(row["path"], window, level)
            if patch.image is None:
                st.warning(patch.problem)
                st.caption(results_.caption(row))
            else:
                st.image(patch.image, caption=results_.caption(row), width=width)
