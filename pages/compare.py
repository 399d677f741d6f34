"""Compare: the picked run (A) against another run of the same dataset and task (B) on the test patches both
predicted: headline metrics with b - a and its paired bootstrap 95% CI, both confusion matrices, and the
patches where they disagree (each opens the patch detail). The numbers are `python -m ddsm_core compare`'s.
"""
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import cache, patches, sidebar, states
from ddsm_core import compare, review
from ddsm_core.errors import UserError

sidebar.page("Compare")
record = states.require_run()
states.state_banner(record)
results = states.require_results(record)
root, run_a, split = cache.root(), record["run_id"], results.split


@st.cache_data(max_entries=16, show_spinner="Comparing the runs (paired bootstrap) ...")
def compared(root_text: str, a: str, b: str, split: str, stamp_a: int, stamp_b: int) -> dict:
    return compare.compare_runs(Path(root_text), a, b, split=split)


candidates = [r for r in cache.records() if r["dataset"] == record["dataset"] and r["task"] == record["task"]
              and r["run_id"] != run_a and cache.results(r["run_id"], split) is not None]
if not candidates:
    st.info(f"No other run of dataset {record['dataset']}, task {review.task_label(record['task'])}, has {split} "
            "predictions to compare with. Train one from the sidebar (it is evaluated when it finishes); runs of "
            "other tasks have other classes, so they are not comparable.")
    st.stop()
labels = {r["run_id"]: review.run_label(r) for r in candidates}
ids = [r["run_id"] for r in sorted(candidates, key=lambda r: r.get("created") or "", reverse=True)]
st.markdown(f"**A:** {review.run_label(record)}")
run_b = st.selectbox("B: compare with", ids, key="compare_b", format_func=lambda r: labels.get(r, r))
try:
    result = compared(str(root), run_a, run_b, split, review.predictions_stamp(root, run_a, split),
                      review.predictions_stamp(root, run_b, split))
except UserError as error:
    sidebar.show_problems(error)
    st.stop()

names = result["class_names"]
st.caption(f"{result['n']} {split} patches predicted by both runs ({result['only_a']} by A only, {result['only_b']} "
           f"by B only). CI: paired bootstrap 95% interval of B - A ({result['n_boot']} resamples of the patches, "
           "both runs scored on the same resample); an interval that excludes 0 is a difference beyond resampling "
           "noise.")


def interval(values):
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]" if values else None


table = pd.DataFrame([{"metric": compare.METRIC_LABELS[name], "A": values["a"], "B": values["b"],
                       "B - A": values["difference"], "95% CI of B - A": interval(values["ci"])}
                      for name, values in result["metrics"].items()])
st.dataframe(table, hide_index=True, key="compare_metrics", width="stretch",
             column_config={column: st.column_config.NumberColumn(format="%.3f") for column in ("A", "B")}
             | {"B - A": st.column_config.NumberColumn(format="%+.3f")})
for note in result["notes"]:
    st.caption(note)

left, right = st.columns(2)
for column, which, run_id in ((left, "a", run_a), (right, "b", run_b)):
    counts = pd.DataFrame(result["confusion_matrices"][which], index=[f"true {review.short_name(n)}" for n in names],
                          columns=[review.short_name(n) for n in names])
    support = counts.sum(axis=1).replace(0, 1)
    shown = pd.DataFrame([[review.cell_text(counts.iat[i, j] / support.iat[i], counts.iat[i, j])
                           for j in range(len(names))] for i in range(len(names))],
                         index=counts.index, columns=counts.columns)
    column.markdown(f"**Confusion matrix of {which.upper()}** ({run_id}): rows true class, columns predicted "
                    f"({', '.join(f'{review.short_name(n)} {n}' for n in names if review.short_name(n) != n) or 'as named'}), "
                    "row-normalised")
    column.dataframe(shown, key=f"compare_cm_{which}", width="stretch")

groups = compare.disagreement_groups(result)
st.subheader(f"{result['disagreements']} patch(es) where A and B disagree")
if not result["disagreements"]:
    st.info("The two runs predict the same class for every patch.")
    st.stop()
window, level, width = patches.contrast_controls("compare")
frame = results.predictions.set_index("filename", drop=False)
titles = {"a right": "A right, B wrong", "b right": "B right, A wrong", "both wrong": "both wrong"}
tabs = st.tabs([f"{titles[group]} ({len(rows)})" for group, rows in groups.items()])
for tab, (group, rows) in zip(tabs, groups.items()):
    with tab:
        if not rows:
            st.caption("No patches.")
            continue
        chosen = pd.DataFrame(rows)
        picked = frame.loc[chosen["filename"]].assign(pred_b=chosen["pred_b"].to_numpy(),
                                                      confidence_b=chosen["confidence_b"].to_numpy())
        shown = patches.pager(picked, f"compare_page_{group.replace(' ', '_')}", per_page=15)
        patches.patch_grid(results, shown, window, level, width, key=f"compare_{group.replace(' ', '_')}",
                           caption=lambda row: (f"{row['filename']} | true: {row['true_name']} | "
                                                f"A: {row['pred_name']} ({row['confidence']:.2f}) | "
                                                f"B: {names[int(row['pred_b'])]} ({row['confidence_b']:.2f})"))
