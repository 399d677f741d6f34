"""The Data page's audit section: start the audit job and watch it; near-duplicate pairs side by side, likely
label errors as tiles, the shortcut probe, metrics per slice, and the two actions (grouped copy, cleaned copy).

Everything is computed by ddsm_core.audit in a background process; this module reads its stored results
(cached by file modification time) and draws them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from ddsm_core import audit, runs
from ddsm_core.audit import results as audit_results
from ddsm_core.audit.shortcut import WARN_AUC
from ddsm_core.data import store
from ddsm_core.errors import UserError
from ddsm_core.tasks import TASKS

from . import patches
from .cache import dataset as cached_dataset
from .cache import results as cached_results
from .cache import root
from .sidebar import show_problems

PAIRS_PER_PAGE = 6
ISSUE_TILES = 12


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(show_spinner=False, max_entries=16)
def _stored(root_text: str, name: str, run_id: str | None, stamp: tuple) -> dict | None:
    return audit.load(Path(root_text), name, run_id)


def stored(name: str, run_id: str | None) -> dict | None:
    """The stored audit of the dataset (and run); re-read when its files or the manifest change."""
    here = root()
    files = [audit_results.dataset_file(here, name), store.manifest_file(here, name)]
    if run_id:
        files += [audit_results.run_file(here, name, run_id), runs.predictions_file(here, run_id, "test")]
    return _stored(str(here), name, run_id, tuple(_mtime(path) for path in files))


def _paths(name: str) -> dict[str, str]:
    data = cached_dataset(name)
    return dict(zip(data.manifest["filename"].astype(str), data.absolute_paths()))


def section(name: str, record: dict | None) -> None:
    """The whole audit section for dataset `name`; `record` is the picked run (used when it is on this dataset)."""
    st.header("Data audit")
    st.caption("Near-duplicates within and across splits (robust to flips, rotations, brightness and small shifts), "
               "likely label errors (cleanlab on out-of-sample probabilities) and a shortcut probe (can image "
               "properties alone, blind to tissue, predict the labels?).")
    here = root()
    run_id = record["run_id"] if record and record.get("dataset") == name and record.get("evaluated") else None
    if run_id and not st.checkbox(f"Judge the test patches with run {run_id}", value=True, key="audit_use_run"):
        run_id = None
    _job(here, name, run_id)
    result = stored(name, run_id)
    if result is None:
        st.info("This dataset has not been audited yet.")
        _slices(here, run_id, {})  # the evaluation stores them: they need no audit
        return
    if result["stale"]:
        st.warning("The dataset or the run changed since this audit: run it again for current findings.")
    _duplicates(name, result)
    _label_issues(name, result)
    _shortcut(result)
    _slices(here, run_id, result)
    _actions(here, name, result)


# ---------------------------------------------------------------- the job

def _job(here: Path, name: str, run_id: str | None) -> None:
    state = audit.job_state(here, name)
    if state["state"] == "running":
        st.fragment(run_every=2)(_progress)(here, name)
        return
    if state["state"] == "failed":
        st.error(f"The last audit failed: {state['message']}")
    label = "Run the audit" if state["state"] == "none" else "Run the audit again"
    if st.button(label, key="audit_start", type="primary" if state["state"] == "none" else "secondary",
                 help="runs in the background; results are reused until the dataset or the run changes"):
        try:
            audit.start(here, name, run_id)
        except UserError as error:
            show_problems(error)
        else:
            st.rerun()


def _progress(here: Path, name: str) -> None:
    state = audit.job_state(here, name)
    st.progress(min(max(state["fraction"], 0.0), 1.0), text=f"Auditing: {state['message']}")
    if state["state"] != "running":
        st.rerun(scope="app")


# ---------------------------------------------------------------- findings

def _duplicates(name: str, result: dict) -> None:
    st.subheader("Near-duplicates")
    summary = result["summary"]
    left, middle, right = st.columns(3)
    left.metric("Pairs", summary["pairs"])
    middle.metric("Across train and test", summary["cross_split_pairs"])
    right.metric("Clusters", summary["clusters"])
    pairs = pd.DataFrame(result["duplicates"], columns=["a", "b", "split_a", "split_b", "distance", "cluster"])
    if pairs.empty:
        st.success("No near-duplicate patches found.")
        return
    if summary["cross_split_pairs"]:
        st.warning(f"{summary['cross_split_pairs']} training patch pair(s) duplicate test patches: the test score "
                   "partly measures memory. The cleaned copy below drops those training patches.")
    paths = _paths(name)
    shown = patches.pager(pairs, "audit_pairs_page", PAIRS_PER_PAGE)
    for _, pair in shown.iterrows():
        left, right, note = st.columns([2, 2, 3])
        with left:
            patches.tile(paths.get(pair["a"], pair["a"]), f"{pair['a']} ({pair['split_a']})", width=150)
        with right:
            patches.tile(paths.get(pair["b"], pair["b"]), f"{pair['b']} ({pair['split_b']})", width=150)
        note.markdown(f"distance **{pair['distance']:.3f}** (share of hash bits)  \ncluster {pair['cluster']}")
    with st.expander("All pairs"):
        st.dataframe(pairs, hide_index=True, key="audit_pairs", width="stretch")


def _label_issues(name: str, result: dict) -> None:
    st.subheader("Likely label errors")
    issues = pd.DataFrame(result["label_issues"], columns=["filename", "split", "given", "suggested", "score", "source"])
    if issues.empty:
        st.success("No likely label errors found.")
        return
    splits = [s for s in ("train", "test") if (issues["split"] == s).any()]
    split = st.radio("Split", splits, horizontal=True, key="audit_issue_split") if len(splits) > 1 else splits[0]
    chosen = issues[issues["split"] == split]
    if split == "test":
        st.caption(f"Judged by run {result['run']}'s own predictions: suspects to review, never dropped.")
    else:
        st.caption("Judged by a cheap model's cross-validated probabilities; lowest label quality first.")
    st.markdown(f"**{len(chosen)}** flagged in {split}; the {min(ISSUE_TILES, len(chosen))} most likely:")
    paths = _paths(name)
    columns = st.columns(6)
    for position, (_, row) in enumerate(chosen.head(ISSUE_TILES).iterrows()):
        with columns[position % 6]:
            patches.tile(paths.get(row["filename"], row["filename"]),
                         f"{row['filename']}: given {row['given']}, suggested {row['suggested']} "
                         f"(quality {row['score']:.3f})", width=130)
    with st.expander("All flagged patches"):
        st.dataframe(chosen, hide_index=True, key="audit_issues", width="stretch")


def shortcut_table(result: dict) -> pd.DataFrame:
    rows = []
    for task_id, entry in sorted(result["shortcut"].items(), key=lambda item: int(item[0])):
        ci, model_ci = entry.get("ci"), entry.get("model_ci")
        rows.append({"task": int(task_id), "name": TASKS[int(task_id)].name, "patches": entry.get("n"),
                     "properties-only AUC": entry.get("auc"),
                     "95% CI": f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else None,
                     "model AUC": entry.get("model_auc"),
                     "model 95% CI": f"{model_ci[0]:.3f}-{model_ci[1]:.3f}" if model_ci else None})
    return pd.DataFrame(rows)


def _shortcut(result: dict) -> None:
    st.subheader("Shortcut probe")
    st.caption("A logistic regression on dark fraction, saturated block, mean and spread of intensity and border "
               "fraction only, cross-validated; the run's test AUC beside its task.")
    table = shortcut_table(result)
    high = table[pd.to_numeric(table["properties-only AUC"], errors="coerce") > WARN_AUC]
    if not high.empty:
        listed = ", ".join(f"task {task} ({auc:.2f})" for task, auc in zip(high["task"], high["properties-only AUC"]))
        st.warning(f"Image properties alone reach AUC > {WARN_AUC} on {listed}: these tasks can be solved without "
                   "looking at tissue. Check what the model learned (Grad-CAM) and the task-1 filter.")
    st.dataframe(table.round(3), hide_index=True, key="audit_shortcut", width="stretch")
    if result.get("correlations"):
        st.markdown(f"**Correlation (Spearman) of the properties with run {result['run']}'s class probabilities**")
        st.dataframe(pd.DataFrame(result["correlations"]).T.round(3), key="audit_correlations", width="stretch")


def slice_frame(slices: dict) -> pd.DataFrame:
    """One row per (column, value, metric) with its interval: what the slice chart draws."""
    rows = []
    for column, entries in (slices or {}).get("columns", {}).items():
        for entry in entries:
            for metric in ("accuracy", "balanced_accuracy", "roc_auc"):
                ci = entry.get(f"{metric}_ci")
                rows.append({"column": column, "value": str(entry["value"]), "n": entry["n"], "metric": metric,
                             "estimate": entry.get(metric), "low": ci[0] if ci else None,
                             "high": ci[1] if ci else None, "note": entry.get("note")})
    return pd.DataFrame(rows, columns=["column", "value", "n", "metric", "estimate", "low", "high", "note"])


def _slices(here: Path, run_id: str | None, result: dict) -> None:
    evaluated = cached_results(run_id) if run_id else None  # the evaluation stores them
    stored_slices = evaluated.metrics.get("slices") if evaluated else None
    frame = slice_frame(stored_slices or result.get("slices"))
    if frame.empty:
        return
    st.subheader(f"Metrics per slice (run {run_id})")
    columns = sorted(frame["column"].unique())
    left, right = st.columns(2)
    column = left.selectbox("Metadata column", columns, key="audit_slice_column")
    metric = right.selectbox("Metric", ["balanced_accuracy", "accuracy", "roc_auc"], key="audit_slice_metric")
    chosen = frame[(frame["column"] == column) & (frame["metric"] == metric)].copy()
    drawn = chosen.dropna(subset=["estimate"])
    if drawn.empty:
        st.info(f"No slice of {column} has a {metric.replace('_', ' ')}: " + "; ".join(
            f"{r.value} (n={r.n}: {r.note})" for r in chosen.itertuples()))
        return
    drawn = drawn.assign(size=[f"n={n}" for n in drawn["n"]])
    figure = px.scatter(drawn, x="value", y="estimate", error_y=drawn["high"] - drawn["estimate"],
                        error_y_minus=drawn["estimate"] - drawn["low"], hover_data=["n"], text="size",
                        labels={"value": column, "estimate": metric})
    figure.update_traces(textposition="middle right", marker_size=12)
    figure.update_layout(height=360, yaxis_range=[0, 1.05], xaxis_type="category")
    st.plotly_chart(figure, key="audit_slices_chart")
    skipped = chosen[chosen["estimate"].isna()]
    if not skipped.empty:
        st.caption("Not shown: " + "; ".join(f"{r.value} (n={r.n}: {r.note})" for r in skipped.itertuples()))


# ---------------------------------------------------------------- actions

def _actions(here: Path, name: str, result: dict) -> None:
    st.subheader("Act on it")
    if result["stale"]:
        st.caption("Run the audit again before creating copies: the stored one is out of date.")
        return
    st.caption(f"Both create a new dataset; {name!r} itself is never modified.")
    left, right = st.columns(2)
    grouped = left.text_input("Name of the grouped copy", f"{name}-grouped", key="audit_group_name")
    if left.button("Merge duplicate clusters into groups", key="audit_group",
                   help="so the group-aware validation split keeps near-duplicates on one side",
                   disabled=not result["summary"]["clusters"]):
        _create(lambda: audit.group_duplicates(here, name, grouped), left)
    cleaned = right.text_input("Name of the cleaned copy", f"{name}-dedup", key="audit_dedupe_name")
    if right.button("Drop training patches that duplicate test patches", key="audit_dedupe",
                    disabled=not result["summary"]["cross_split_pairs"]):
        _create(lambda: audit.without_test_duplicates(here, name, cleaned), right)


def _create(action, where) -> None:
    try:
        with st.spinner("Writing the new dataset..."):
            made = action()
    except UserError as error:
        show_problems(error, where)
        return
    change = made.info["source"]["derived_from"]
    where.success(f"Created dataset {made.name!r} ({made.info['n_patches']} patches; {change['action']}). "
                  f"Train on it from the sidebar.")
