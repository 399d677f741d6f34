"""The review dashboard's first page, Runs: every run with its headline test metrics; select several to
compare them and overlay their curves.

`streamlit run streamlit_app.py` (workspace: $DDSM_WORKSPACE or ./artifacts). The other views are the
files in pages/, which Streamlit finds itself; every page starts with dashboard.sidebar.page().
"""
import plotly.express as px
import streamlit as st

from dashboard import cache, sidebar, states
from ddsm_core import review

sidebar.page("Runs")
all_records = cache.records()
if not all_records:
    states.demo_offer()
    st.stop()

table = review.run_table(all_records)
# the headline metrics right after what identifies a run, so they are visible without scrolling
shown = table[["run_id", "task_name", "backbone", "state", "test_accuracy", "test_balanced_accuracy", "test_roc_auc",
               "test_ece", "epoch", "epochs", "dataset", "created", "error"]]
st.caption("Select rows to compare runs side by side. The run shown on the other pages is picked in the sidebar.")
event = st.dataframe(
    shown, key="runs_table", on_select="rerun", selection_mode="multi-row", hide_index=True,
    width="stretch",
    column_config={"run_id": "run", "task_name": "task",
                   "test_accuracy": st.column_config.NumberColumn("accuracy", format="%.3f"),
                   "test_balanced_accuracy": st.column_config.NumberColumn("bal. accuracy", format="%.3f"),
                   "test_roc_auc": st.column_config.NumberColumn("AUC", format="%.3f"),
                   "test_ece": st.column_config.NumberColumn("ECE", format="%.3f"), "error": "status error"},
)
chosen = [shown["run_id"].iat[i] for i in event.selection.rows]
if not chosen:
    st.info("Select one or more runs in the table to compare their metrics and curves.")
    st.stop()

root = cache.root()
st.subheader(f"Comparing {len(chosen)} run(s)")
st.dataframe(review.compare_metrics(root, chosen).astype(str), key="runs_compare", width="stretch")
if len(chosen) == 1:
    with st.expander("Run details: how it was trained", expanded=False):
        st.dataframe(review.run_details(root, chosen[0]), hide_index=True, key="runs_details", width="stretch")
    if st.button("Show this run on every page", key="runs_open"):
        st.query_params["run"] = chosen[0]
        st.rerun()

stacked = review.histories(root, chosen)
if stacked.empty:
    st.info("None of the selected runs has finished an epoch yet.")
    st.stop()
left, right = st.columns(2)
for column, metric in ((left, "accuracy"), (right, "loss")):
    long = review.curves(stacked, metric)
    figure = px.line(long, x="epoch", y="value", color="run_id", line_dash="subset", markers=True,
                     labels={"value": metric}, title=f"{metric} per epoch (solid train, dashed validation)")
    figure.update_layout(legend=dict(orientation="h", y=-0.25), height=420)
    column.plotly_chart(figure, key=f"runs_overlay_{metric}")
