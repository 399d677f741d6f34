"""Data: class balance per split and task, sample patches, what the noisy-normal filter removed, the import report,
and the data audit (near-duplicates, likely label errors, shortcut probe, metrics per slice; dashboard/audit_view.py)."""
import plotly.express as px
import streamlit as st

from dashboard import audit_view, cache, patches, sidebar, states
from ddsm_core import review
from ddsm_core.data import store
from ddsm_core.tasks import SOURCE_LABELS

sidebar.page("Data")
root = cache.root()
names = store.list_datasets(root)
if not names:
    states.demo_offer()
    st.stop()
record = sidebar.current()
preferred = record["dataset"] if record and record["dataset"] in names else names[0]
if st.session_state.get("data_dataset") not in names:
    st.session_state["data_dataset"] = preferred
name = st.selectbox("Dataset", names, key="data_dataset")
dataset = cache.dataset(name)
report = review.import_report(dataset)
st.caption(f"{report['n_patches']} patches, {report['format']} format, imported {report['created']}.")

st.subheader("Class balance")
balance = review.class_balance(dataset)
figure = px.bar(balance, x="class", y="patches", color="split", barmode="group", text="patches",
                category_orders={"class": list(SOURCE_LABELS.values()), "split": ["train", "test"]})
figure.update_layout(height=380, legend_title_text="")
st.plotly_chart(figure, key="data_balance")
st.markdown("**Per task** (as each task sees the dataset; task 1 without the noisy normals)")
st.dataframe(review.task_balance(dataset), hide_index=True, key="data_tasks", width="stretch")

st.subheader("Sample patches")
per_class = st.slider("Patches per class", 1, 10, 5, key="data_per_class")
samples = review.sample_patches(dataset, per_class)
for label, group in samples.groupby("label", sort=True):
    st.markdown(f"**{SOURCE_LABELS[label]}**")
    for slot, (_, row) in zip(st.columns(per_class), group.iterrows()):
        with slot:
            patches.tile(row["abs_path"], f"{row['filename']} ({row['split']})", width=120)

st.subheader("Noisy-normal filter (task 1)")
noise = review.noise_filter(dataset)
thresholds = noise["thresholds"]
if thresholds:
    st.caption(f"A normal patch is noisy when at least {thresholds.get('dark_fraction')} of its pixels are at or below "
               f"grey level {thresholds.get('dark_level')} (film background), or a block holds at least "
               f"{thresholds.get('saturated_block')} pixels at or above {thresholds.get('saturated_level')} "
               "(burned-in label). Task 1 drops these patches.")
counts = noise["counts"]
st.markdown("  \n".join(f"{split}: removed **{c['removed']}** of {c['normals']} normal patches"
                        for split, c in counts.items()))
removed = noise["removed"]
if not removed.empty:
    st.dataframe(removed.drop(columns=["abs_path"]).round(3), hide_index=True, key="data_noisy", width="stretch")
    st.markdown("Examples of removed patches")
    for slot, (_, row) in zip(st.columns(6), removed.head(6).iterrows()):
        with slot:
            patches.tile(row["abs_path"], row["filename"], width=110)

st.subheader("Import report")
if report["warnings"]:
    for warning in report["warnings"]:
        st.warning(warning)
else:
    st.caption("No warnings.")
skipped = report["skipped"]
if skipped.empty:
    st.success("No rows were skipped at import.")
else:
    st.markdown(f"**{len(skipped)} row(s) skipped at import**")
    st.dataframe(skipped, hide_index=True, key="data_skipped", width="stretch")
with st.expander("Source"):
    st.json(report["source"] or {})

audit_view.section(name, record)
