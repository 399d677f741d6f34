"""Review: the picked run's patches as a queue ranked by a reason, one patch at a time, with verdict buttons
and keyboard shortcuts (N next, P previous, A agree, X exclude, U unsure, 0-4 relabel to that source label).

The queue, its reasons and filters live in ddsm_core.review_queue; the patch detail is dashboard.detail.
"""
import tempfile
from pathlib import Path

import streamlit as st

from dashboard import cache, detail, sidebar, states
from ddsm_core import review, review_queue, verdicts

sidebar.page("Review")
record = states.require_run()
states.state_banner(record)
results = states.require_results(record, split_key="review_split")
root, dataset, names = cache.root(), record["dataset"], results.class_names
PATCH, INDEX = "_review_patch", "_review_index"  # the patch shown, and its place in the queue when picked


def go(filename, index) -> None:
    """Show this patch (or, when it has left the queue, whatever is now at `index`)."""
    st.session_state[PATCH], st.session_state[INDEX] = filename, max(0, index)


def restart() -> None:
    go(None, 0)


def export_file(history: bool) -> bytes:
    """The verdicts export (`python -m ddsm_core review export`) as CSV bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "verdicts.csv"
        verdicts.export(root, dataset, cache.dataset(dataset).manifest, path, history=history)
        return path.read_bytes()


if st.session_state.get("_review_run") != (record["run_id"], results.split):  # another run: start at the top
    st.session_state["_review_run"] = (record["run_id"], results.split)
    restart()

# ---------------------------------------------------------------- the queue

left, right = st.columns(2)
reason = review_queue.REASONS[left.selectbox("Queue", list(review_queue.REASONS), key="review_reason",
                                             on_change=restart, help="what to look at first")]
left.caption(reason.description)
other, other_id = None, None
if "other" in reason.needs:
    candidates = [r["run_id"] for r in cache.records()
                  if r["dataset"] == dataset and r["task"] == record["task"] and r["run_id"] != record["run_id"]
                  and cache.results(r["run_id"], results.split) is not None]
    if not candidates:
        st.info(f"No other run of dataset {dataset}, task {review.task_label(record['task'])}, has {results.split} "
                "predictions to disagree with: train and evaluate one from the sidebar, or pick another queue.")
        st.stop()
    labels = {r["run_id"]: review.run_label(r) for r in cache.records()}
    other_id = right.selectbox("Other run", candidates, key="review_other", on_change=restart,
                               format_func=lambda r: labels.get(r, r))
    other = cache.results(other_id, results.split).predictions

extra = reason.load(root, dataset, record["run_id"]) if reason.load else {}  # e.g. the data audit's findings
context = review_queue.QueueContext(results.probability_columns, names, other=other, other_run=other_id, extra=extra)
ranked = review_queue.with_verdicts(review_queue.rank(results.predictions, reason, context),
                                    verdicts.current(root, dataset))
first, second, third = st.columns(3)
true = first.multiselect("True class", names, key="review_true", placeholder="any", on_change=restart)
pred = second.multiselect("Predicted class", names, key="review_pred", placeholder="any", on_change=restart)
state = third.selectbox("Verdict state", review_queue.STATES, key="review_state", on_change=restart,
                        help="unreviewed: no verdict yet; reviewed: any verdict; or one kind of verdict")
in_classes = review_queue.select(ranked, true=[names.index(n) for n in true], pred=[names.index(n) for n in pred])
queue = review_queue.select(in_classes, state=state)
reviewed, total = review_queue.progress(in_classes)
st.progress(reviewed / total if total else 0.0, text=f"{reviewed} of {total} reviewed in this queue")

with st.expander("Export the verdicts"):
    st.caption(f"Every current verdict on dataset {dataset} (all runs), as `python -m ddsm_core review export` "
               "writes it: filename, split, label, verdict, new_label, note, reviewer, time.")
    whole = st.checkbox("The whole history (every verdict, not only the current ones)", key="review_export_history")
    st.download_button("Download verdicts (CSV)", data=export_file(whole), mime="text/csv",
                       file_name=f"verdicts-{dataset}{'-history' if whole else ''}.csv", key="review_export",
                       icon=":material/download:")

if queue.empty:
    if ranked.empty:
        st.info(f"The queue “{reason.name}” is empty for run {record['run_id']} on the {results.split} split.")
    elif in_classes.empty:
        st.info("No patch of this queue has the true and predicted classes picked: widen the class filters.")
    else:
        st.success("Every patch of this queue has a verdict." if state == "unreviewed"
                   else f"No patch of this queue has the verdict state “{state}”.")
    st.stop()

# ---------------------------------------------------------------- one patch at a time

filenames = list(queue["filename"])
shown = st.session_state.get(PATCH)
if shown not in filenames:
    shown = filenames[min(st.session_state.get(INDEX, 0), len(filenames) - 1)]
position = filenames.index(shown)
previous, following = review_queue.neighbours(filenames, shown)
row = queue.iloc[position]
back, forward, where = st.columns([1.4, 1.2, 5], vertical_alignment="center")
back.button("Previous", key="review_previous", shortcut="P", disabled=previous is None, on_click=go,
            args=(previous, position - 1), icon=":material/arrow_back:", width="stretch")
forward.button("Next", key="review_next", shortcut="N", disabled=following is None, on_click=go,
               args=(following, position + 1), icon=":material/arrow_forward:", width="stretch")
where.markdown(f"**Patch {position + 1} of {len(filenames)}** · {row['why']}")
detail.show(results, shown, dataset=dataset, key="review", shortcuts=True, on_verdict=go,
            on_verdict_args=(following, position + 1), prefetch=filenames[position + 1: position + 10])
