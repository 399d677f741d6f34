"""Data audit: leaked near-duplicates, likely label errors and shortcut signals, before anyone trusts a number.

    run_audit(root, dataset, run_id=None) -> dict   compute (or reuse) and store; what `audit --json` prints
    load(root, dataset, run_id=None) -> dict | None the stored audit, never computing (the dashboard's read)
    start(root, dataset, run_id=None) / job_state(root, dataset)   the audit as a background job
    group_duplicates(root, dataset, new) / without_test_duplicates(root, dataset, new)   derived datasets
    label_ranking(root, dataset)                    every training patch's label quality

Modules: patches (the one pass over the image files), duplicates, labels, shortcut (pure functions),
results (the audit folder's layout, fingerprints, the run and the job), actions (derived datasets).
Nothing here imports TensorFlow or streamlit.
"""
from .actions import group_duplicates, without_test_duplicates
from .results import audit_dir, job_state, label_ranking, load, run_audit, start, status_file, summary_line

__all__ = ["audit_dir", "group_duplicates", "job_state", "label_ranking", "load", "run_audit", "start",
           "status_file", "summary_line", "without_test_duplicates"]
