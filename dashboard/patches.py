"""Patch tiles and the controls around them: window/level and tile size, paging, verdict badges, the detail.

A grid drawn with a `key` gives every tile a button that opens the patch
detail (dashboard.detail) as a dialog; the grid keeps drawing that dialog on
every run until it is closed. Every tile's caption ends with the patch's
current verdict, when it has one.
"""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from ddsm_core import review, verdicts

from . import cache, detail


def contrast_controls(prefix: str) -> tuple[float, float, int]:
    """Window, level and tile width sliders (in a row)."""
    left, middle, right = st.columns(3)
    window = left.slider("Window (contrast)", 1, 255, 255, key=f"{prefix}_window")
    level = middle.slider("Level (brightness)", 0, 255, 128, key=f"{prefix}_level")
    width = right.slider("Tile size (pixels)", 64, 512, 160, step=32, key=f"{prefix}_width",
                         help="enlarge the patches")
    return window, level, width


def pager(rows, key: str, per_page: int):
    """A page-number input (shown only when there is more than one page) and that page's rows."""
    pages_count = review.page(rows, 1, per_page)[1]
    if pages_count == 1:
        return rows.iloc[:per_page]
    current_page = st.session_state.get(key, 1)
    if not isinstance(current_page, int) or not 1 <= current_page <= pages_count:
        st.session_state[key] = 1
    number = st.number_input(f"Page (of {pages_count}, {per_page} per page)", 1, pages_count, key=key, step=1)
    return review.page(rows, number, per_page)[0]


def verdict_badges(dataset: str) -> dict[str, str]:
    """filename -> the badge of its current verdict, for the patches of a dataset that have one."""
    current = verdicts.current(cache.root(), dataset)
    return {name: detail.badge(verdict, label)
            for name, verdict, label in zip(current["filename"], current["verdict"], current["new_label"])}


def patch_grid(results, rows: pd.DataFrame, window: float, level: float, width: int, columns: int = 5,
               key: str | None = None, caption: Callable | None = None) -> None:
    """Draw rows as tiles: image (contrast applied), a caption with the verdict badge; a message for a missing
    file. With a `key` (unique on the page) each tile has an Open button for the patch detail.
    caption(row) replaces the run's own caption."""
    if rows.empty:
        st.caption("No patches.")
        return
    dataset = detail.dataset_of(results)
    badges = verdict_badges(dataset)
    columns = max(1, min(columns, 1200 // max(width, 1)))
    for position, (_, row) in enumerate(rows.iterrows()):
        if position % columns == 0:
            slots = st.columns(columns)  # one row of tiles at a time: reading order is row by row
        with slots[position % columns]:
            text = caption(row) if caption else results.caption(row)
            mark = badges.get(row["filename"])
            tile(row["path"], f"{text} | {mark}" if mark else text, window, level, width)
            if key:
                # a plain text button: a grid can hold dozens, and icons or tooltips on each slow the browser
                st.button("Open", key=f"{key}_open_{row['filename']}", type="tertiary", on_click=detail.open_dialog,
                          args=(key, results.run_id, results.split, row["filename"], dataset))
    wanted = detail.requested(key) if key else None
    if wanted and wanted["run_id"] == results.run_id and wanted["filename"] in set(rows["filename"]):
        detail.dialog(results, wanted["filename"], wanted["dataset"])


def tile(path, caption: str, window: float = 255.0, level: float = 127.5, width: int = 120) -> None:
    """One patch image with its caption, or the reason it cannot be shown."""
    patch = review.load_patch(path, window, level)
    if patch.image is None:
        st.warning(patch.problem)
        st.caption(caption)
    else:
        st.image(patch.image, caption=caption, width=width)
