"""What a page shows when there is nothing to show yet: no runs (the demo offer), no predictions
(the Evaluate offer), or a run that is not finished (a banner). Each either returns what the page
needs or explains why not and stops the page."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ddsm_core import review, runs
from ddsm_core.errors import UserError

from .cache import results, root
from .sidebar import current, show_problems


def require_run() -> dict:
    """The picked run's record; on an empty workspace shows the demo offer and stops the page."""
    record = current()
    if record is None:
        demo_offer()
        st.stop()
    return record


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
            except UserError as error:
                show_problems(error)
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
    if not runs.best_checkpoint(here, run_id).exists():
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
            show_problems(error)
        else:
            st.rerun(scope="app")
