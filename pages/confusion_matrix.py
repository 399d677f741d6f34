"""Confusion matrix: row-normalised (percent and count per cell) or raw counts; a cell opens its patches.

Cells are square scatter markers (clickable: plotly heatmaps return no selection),
the same matrix as a table (click a cell), and a true/predicted selectbox pair
that works everywhere. Whichever of the three changed last picks the cell.
"""
import plotly.graph_objects as go
import streamlit as st

from dashboard import cache, patches, sidebar, states
from ddsm_core import review

sidebar.page("Confusion matrix")
record = states.require_run()
states.state_banner(record)
results = states.require_results(record, split_key="cm_split")
names = results.class_names
st.caption(f"Run {record['run_id']}, task {review.task_label(record['task'])}, {results.split} split, "
           f"{len(results)} patches. Rows: true class; columns: predicted class.")
if results.notes:
    st.info("\n".join(f"- {note}" for note in results.notes))
reviewed = (review.read_metrics(cache.root(), record["run_id"], results.split) or {}).get("reviewed_labels")
if reviewed:
    changes = reviewed["changes"]
    st.info(f"On the radiologists' reviewed labels ({changes['relabeled']} relabeled, {changes['excluded']} "
            f"excluded: {reviewed['n_patches']} patches) accuracy is {reviewed['accuracy']:.3f} and balanced "
            f"accuracy {reviewed['balanced_accuracy']:.3f}. The matrix below uses the labels as imported.")

raw = st.toggle("Raw counts", key="cm_raw", help="off: each row sums to 100% (with the count in brackets)")
cells = results.confusion_cells()
k = len(names)
size = max(40, int(440 / k))
color = cells["count"] if raw else cells["fraction"]
text = cells["count"].astype(str) if raw else cells["text"].str.replace(" (", "<br>(", regex=False)
dark = (color / max(color.max(), 1e-9)) > 0.55
figure = go.Figure(go.Scatter(
    x=cells["pred"], y=cells["true"], mode="markers+text", text=text,
    textfont=dict(color=["white" if d else "black" for d in dark], size=13 if k <= 5 else 11),
    marker=dict(symbol="square", size=size, color=color, colorscale="Blues", cmin=0,
                cmax=float(color.max()) if raw else 1.0, showscale=True, line=dict(width=1, color="white"),
                colorbar=dict(title="count" if raw else "share of row")),
    customdata=cells[["true_index", "pred_index", "count"]].to_numpy(),
    hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[2]} patch(es)<extra></extra>",
))
figure.update_layout(
    width=size * k + 260, height=size * k + 200, margin=dict(l=10, r=10, t=30, b=10), dragmode=False,
    xaxis=dict(title="predicted class", categoryorder="array", categoryarray=names, side="top", showgrid=False),
    yaxis=dict(title="true class", categoryorder="array", categoryarray=names, autorange="reversed", showgrid=False),
    plot_bgcolor="white",
)
chart_event = st.plotly_chart(figure, key="cm_chart", on_select="rerun", selection_mode="points",
                              config={"displayModeBar": False}, width="content")

st.caption("Or pick a cell in the table:")
table = results.confusion_table(normalized=not raw)
table_event = st.dataframe(table, key="cm_table", on_select="rerun", selection_mode="single-cell", width="stretch")


def picked_cell():
    """(true, pred) names of the chart point or table cell picked, for whichever changed since the last run."""
    points = chart_event.selection.points if chart_event else []
    chart_cell = (points[0].get("y"), points[0].get("x")) if points else None
    table_cells = table_event.selection.cells if table_event else []
    table_cell = None
    if table_cells:
        true_index, pred_index = results.cell_from_table(*table_cells[0])
        table_cell = (names[true_index], names[pred_index])
    chosen = None
    for source, cell in (("chart", chart_cell), ("table", table_cell)):
        if cell != st.session_state.get(f"_cm_last_{source}"):
            st.session_state[f"_cm_last_{source}"] = cell
            if cell is not None:
                chosen = cell
    return chosen


chosen = picked_cell()
if chosen and chosen[0] in names and chosen[1] in names:
    st.session_state["cm_true"], st.session_state["cm_pred"] = chosen
default_true, default_pred = results.worst_cell()
for key, default in (("cm_true", default_true), ("cm_pred", default_pred)):
    if st.session_state.get(key) not in names:
        st.session_state[key] = default
left, right = st.columns(2)
true = left.selectbox("True class", names, key="cm_true")
pred = right.selectbox("Predicted class", names, key="cm_pred")

rows = results.cell(true, pred)
st.subheader(f"True {true}, predicted {pred}: {len(rows)} patch(es), most confident first")
if rows.empty:
    st.info("No patches in this cell.")
    st.stop()
window, level, width = patches.contrast_controls("cm")
shown = patches.pager(rows, "cm_page", per_page=15)
patches.patch_grid(results, shown, window, level, width, key="cm_tiles")
