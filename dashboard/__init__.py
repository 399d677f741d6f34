"""The dashboard's shared UI code (the only package besides pages/ that imports streamlit).

- cache:   cached reads of the workspace, shared by every session
- sidebar: page set-up, navigation, run picker, retrain and job panel
- states:  what a page shows when there is no run, no predictions, or a run is not finished
- patches: patch tiles, window/level and tile-size controls, paging

Every question is answered by ddsm_core; these modules only read, select and draw.
"""
