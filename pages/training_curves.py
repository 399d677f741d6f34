"""Training curves: accuracy and loss per epoch, train vs validation, best epoch marked; live while training."""
import plotly.express as px
import streamlit as st

from dashboard import cache, sidebar, states
from ddsm_core import review

sidebar.page("Training curves")
record = states.require_run()
root = cache.root()


def draw() -> None:
    fresh = review.find_record(cache.records(), record["run_id"]) or record
    states.state_banner(fresh)
    frame = review.history(root, record["run_id"])
    if frame.empty:
        st.info(f"Run {record['run_id']} has not finished an epoch yet; curves appear after the first one.")
        return
    best = review.best_epoch(root, record["run_id"])
    st.caption(f"Run {record['run_id']}: {len(frame)} epoch(s)"
               + (f", best epoch {best} (checkpoint kept as best.keras)" if best else ""))
    left, right = st.columns(2)
    for column, metric in ((left, "accuracy"), (right, "loss")):
        long = review.curves(frame, metric)
        figure = px.line(long, x="epoch", y="value", color="subset", markers=True, title=f"{metric} per epoch",
                         labels={"value": metric}, color_discrete_map={"train": "#1f77b4", "validation": "#ff7f0e"})
        if best:
            figure.add_vline(x=best, line_dash="dot", line_color="green", annotation_text=f"best epoch {best}")
        figure.update_xaxes(dtick=1 if len(frame) <= 20 else None)
        figure.update_layout(height=420, legend_title_text="")
        column.plotly_chart(figure, key=f"curve_{metric}")
    with st.expander("History table"):
        st.dataframe(frame, hide_index=True, key="history_table")


live = record["state"] in ("running", "queued")
st.fragment(run_every=2 if live else None)(draw)()
