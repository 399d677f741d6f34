"""Cached reads of the workspace: shared across sessions (st.cache_*), re-read when the files change."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ddsm_core import review, runs, workspace
from ddsm_core.data import cbis_context, store


def root() -> Path:
    return workspace.workspace_root()


@st.cache_data(ttl=10, show_spinner=False)
def _records(root_text: str, signature: tuple) -> list[dict]:
    return runs.list_runs(Path(root_text))


def records() -> list[dict]:
    """Run records; re-read whenever a run's files change (and at least every 10 s)."""
    here = root()
    return _records(str(here), review.runs_signature(here))


@st.cache_resource(max_entries=8, show_spinner=False)
def _results(root_text: str, run_id: str, split: str, stamp: int):
    return review.RunResults.load(Path(root_text), run_id, split)


def results(run_id: str, split: str = "test"):
    """The run's RunResults on a split (shared, do not modify), or None when it has no predictions."""
    here = root()
    return _results(str(here), run_id, split, review.predictions_stamp(here, run_id, split))


@st.cache_resource(max_entries=4, show_spinner=False)
def _dataset(root_text: str, name: str, stamp: int):
    return store.load(Path(root_text), name)


def dataset(name: str):
    """The dataset (shared, do not modify); re-read when its manifest changes."""
    here = root()
    return _dataset(str(here), name, store.manifest_stamp(here, name))


@st.cache_data(max_entries=16, show_spinner=False)
def context_picture(folder_text: str, row: dict):
    """cbis_context.context_picture of a patch's manifest row (its CONTEXT_FIELDS), drawn once: the detail
    dialog reruns on every window, zoom or size change."""
    return cbis_context.context_picture(Path(folder_text), row)
