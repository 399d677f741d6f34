"""The review dashboard: `streamlit run streamlit_app.py` (workspace: $DDSM_WORKSPACE or ./artifacts).

This file owns the page list and the shared sidebar (run picker and retrain
panel); each view is a thin file in pages/ that reads ddsm_core.review and draws.
"""
import streamlit as st

import pages as shared

st.set_page_config(page_title="DDSM patch classifier review", page_icon=":material/radiology:", layout="wide")

# Each url_path is its file's name: Streamlit's legacy pages/ mode, which it enters for the first script
# run after a server start, then finds the same page (see page_setup in pages/__init__.py).
PAGES = [
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:", url_path="runs", default=True),
    st.Page("pages/training_curves.py", title="Training curves", icon=":material/show_chart:", url_path="training_curves"),
    st.Page("pages/confusion_matrix.py", title="Confusion matrix", icon=":material/grid_on:", url_path="confusion_matrix"),
    st.Page("pages/certainty.py", title="Certainty", icon=":material/insights:", url_path="certainty"),
    st.Page("pages/gallery.py", title="Gallery", icon=":material/photo_library:", url_path="gallery"),
    st.Page("pages/data.py", title="Data", icon=":material/dataset:", url_path="data"),
]

navigation = st.navigation(PAGES)
shared.sidebar()
navigation.run()
