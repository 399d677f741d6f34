"""Certainty: the predicted-class probability per predicted class, correct vs wrong; the reliability diagram."""
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import sidebar, states

MAX_POINTS = 3000

sidebar.page("Certainty")
record = states.require_run()
states.state_banner(record)
results = states.require_results(record, split_key="certainty_split")
st.caption(f"Run {record['run_id']}, {results.split} split, {len(results)} patches. Confidence is the "
           "probability of the predicted class.")

frame = results.certainty_frame()
# every point for a readable set; beyond that only outliers, so the browser is not sent 15,000 markers
points = "all" if len(frame) <= MAX_POINTS else "outliers"
if points == "outliers":
    st.caption(f"More than {MAX_POINTS} patches: the boxes show every patch, the points only the outliers.")
figure = px.box(frame, x="predicted", y="confidence", color="outcome", points=points, hover_data=["filename"],
                category_orders={"predicted": results.class_names, "outcome": ["correct", "wrong"]},
                color_discrete_map={"correct": "#2ca02c", "wrong": "#d62728"},
                title="Confidence per predicted class")
figure.update_layout(height=480, yaxis_range=[0, 1.02], boxmode="group", legend_title_text="")
st.plotly_chart(figure, key="certainty_box")
with st.expander("Quantiles per predicted class (stored with the metrics)"):
    st.dataframe(results.certainty_summary().round(3), hide_index=True, key="certainty_summary")

bins = results.reliability()
ece = results.ece
st.subheader("Reliability diagram" + (f": ECE {ece:.3f}" if ece is not None else ""))
if bins.empty:
    st.info("The stored metrics have no reliability bins: re-evaluate the run.")
    st.stop()
filled = bins[bins["count"] > 0]
reliability = go.Figure()
reliability.add_trace(go.Bar(x=filled["centre"], y=filled["accuracy"], width=filled["upper"] - filled["lower"],
                             name="accuracy in bin", marker_color="#1f77b4", customdata=filled[["count", "confidence"]],
                             hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.3f}<br>"
                                           "mean confidence %{customdata[1]:.3f}<br>%{customdata[0]} patches<extra></extra>"))
reliability.add_trace(go.Scatter(x=filled["centre"], y=filled["confidence"], mode="markers", name="mean confidence",
                                 marker=dict(color="#ff7f0e", size=9)))
reliability.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                 line=dict(dash="dash", color="gray")))
reliability.update_layout(height=460, xaxis=dict(title="confidence", range=[0, 1]),
                          yaxis=dict(title="accuracy", range=[0, 1.02]), bargap=0.05,
                          title=f"Expected calibration error (ECE) {ece:.3f}" if ece is not None else None)
st.plotly_chart(reliability, key="certainty_reliability")
st.dataframe(bins[["lower", "upper", "count", "confidence", "accuracy"]].round(3), hide_index=True,
             key="certainty_bins")
