"""Gallery: the most and least confident patches per predicted class, and a filtered, paged browser."""
import streamlit as st

from dashboard import patches, sidebar, states
from ddsm_core import review

sidebar.page("Gallery")
record = states.require_run()
states.state_banner(record)
results = states.require_results(record, split_key="gallery_split")
names = results.class_names
window, level, width = patches.contrast_controls("gallery")

extremes_tab, browse_tab = st.tabs(["Most and least confident", "Browse and filter"])

with extremes_tab:
    k = st.slider("Patches per row (k)", 1, 10, 5, key="gallery_k")
    for name in names:
        highest, lowest = results.extremes(name, k)
        st.subheader(f"Predicted {name}")
        if highest.empty:
            st.caption(f"No patch was predicted {name}.")
            continue
        st.markdown(f"**{len(highest)} highest confidence**")
        patches.patch_grid(results, highest, window, level, width, columns=k, key=f"gallery_high_{name}")
        st.markdown(f"**{len(lowest)} lowest confidence**")
        patches.patch_grid(results, lowest, window, level, width, columns=k, key=f"gallery_low_{name}")

with browse_tab:
    left, middle, right = st.columns(3)
    true = left.multiselect("True class", names, key="gallery_true", placeholder="any")
    pred = middle.multiselect("Predicted class", names, key="gallery_pred", placeholder="any")
    outcome = right.radio("Outcome", review.OUTCOMES, horizontal=True, key="gallery_outcome")
    left, right = st.columns([2, 1])
    low, high = left.slider("Confidence", 0.0, 1.0, (0.0, 1.0), step=0.01, key="gallery_confidence")
    order = right.selectbox("Order", review.SORTS, key="gallery_sort")
    rows = results.filter(true=true or None, pred=pred or None, outcome=outcome, confidence=(low, high), sort=order)
    st.markdown(f"**{len(rows)} of {len(results)} patches match**")
    if rows.empty:
        st.info("No patch matches these filters: widen them.")
    else:
        shown = patches.pager(rows, "gallery_page", per_page=20)
        patches.patch_grid(results, shown, window, level, width, key="gallery_browse")
