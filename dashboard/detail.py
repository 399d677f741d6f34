"""The patch detail: one patch large, everything known about it, and the verdict buttons.

`show()` draws it inline (the Review page); `open_dialog()` asks for it as a
dialog, which the tile grid that asked draws on every run until it is closed
(patches.patch_grid), so it survives the app's reruns. Both have:

- the patch with window/level and zoom (a magnified crop, movable);
- for a patch cut from a full mammogram (CBIS-DDSM imports), the downsampled mammogram with the ROI outline
  and the patch box drawn (ddsm_core.data.cbis_context);
- its true label (task class and source label), its reviewed label, every class probability;
- the other runs' predictions on the same patch (same dataset, by filename);
- Grad-CAM for the predicted and the true class with an opacity slider: computed
  by a background process (ddsm_core.explain.start_job; the dashboard never
  imports TensorFlow), polled by a fragment until the cache has it;
- the verdict history and the verdict buttons (agree, relabel to a source label,
  exclude, unsure) with a note, each with a keyboard shortcut.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import streamlit as st

from ddsm_core import explain, review, runs, verdicts
from ddsm_core.compare import patch_across_runs
from ddsm_core.data import cbis_context
from ddsm_core.errors import UserError
from ddsm_core.tasks import SHORT_NAMES, SOURCE_LABELS

from . import auth, cache

# verdict -> (button label, keyboard shortcut); relabel has one button per source label, shortcut = the label
VERDICT_BUTTONS = {"agree": ("Agree", "A"), "exclude": ("Exclude", "X"), "unsure": ("Unsure", "U")}
ZOOMS = (1, 2, 3, 4)
DIALOG = "_detail_dialog"  # {grid, run_id, split, filename, dataset}: the dialog a tile opened
ERROR = "_verdict_error"
RECORDED = "_verdict_recorded"


# ---------------------------------------------------------------- small pure helpers

def badge(verdict, new_label=None) -> str:
    """A short verdict tag for captions and headers ('' when there is none)."""
    if verdict is None or (not isinstance(verdict, str) and pd.isna(verdict)):
        return ""
    if verdict == "relabel" and new_label is not None and not pd.isna(new_label):
        return f"✎ relabel → {int(new_label)} {SHORT_NAMES[int(new_label)]}"
    return {"agree": "✔ agree", "exclude": "⊘ exclude", "unsure": "? unsure"}.get(verdict, str(verdict))


def zoomed(image: np.ndarray, factor: int, centre_x: float = 0.5, centre_y: float = 0.5) -> np.ndarray:
    """The 1/factor crop of an image around (centre_x, centre_y) in [0, 1], kept inside the image."""
    if factor <= 1:
        return image
    height, width = image.shape[:2]
    crop_h, crop_w = max(1, round(height / factor)), max(1, round(width / factor))
    top = int(np.clip(round(centre_y * height - crop_h / 2), 0, height - crop_h))
    left = int(np.clip(round(centre_x * width - crop_w / 2), 0, width - crop_w))
    return image[top:top + crop_h, left:left + crop_w]


def dataset_of(results) -> str:
    """The dataset a run's predictions belong to (verdicts are kept per dataset)."""
    return runs.read_config(cache.root(), results.run_id)["dataset"]


# ---------------------------------------------------------------- recording a verdict

def _record(dataset: str, filename: str, verdict: str, label, note_key: str, on_verdict, on_verdict_args) -> None:
    """A verdict button's callback: store the verdict with the note, then let the caller move on."""
    name = auth.reviewer()
    try:
        if not name:
            raise UserError("type your name in the sidebar (Reviewer) first: it is recorded with each verdict")
        stored = verdicts.add(cache.root(), dataset, filename, verdict, new_label=label,
                              note=st.session_state.get(note_key, ""), reviewer=name)
    except UserError as error:
        st.session_state[ERROR] = error.problems
        return
    st.session_state.pop(ERROR, None)
    st.session_state[note_key] = ""
    # said on the next run, not with st.toast: a toast from a callback closes an open dialog
    st.session_state[RECORDED] = f"Recorded {badge(stored['verdict'], stored['new_label'])} for {filename}."
    if on_verdict:
        on_verdict(*on_verdict_args)


def _verdict_panel(dataset: str, filename: str, key: str, shortcuts: bool, on_verdict, on_verdict_args) -> None:
    name = auth.reviewer()
    if name:
        st.caption(f"Recording as **{name}**.")
    else:
        st.warning("Type your name in the sidebar (Reviewer) to record verdicts.")
    for problem in st.session_state.get(ERROR) or []:
        st.error(problem)
    recorded = st.session_state.pop(RECORDED, None)
    if recorded:
        st.success(recorded, icon=":material/check:")
    note_key = f"{key}_note_{filename}"
    st.text_input("Note (optional, saved with the verdict)", key=note_key,
                  placeholder="e.g. burned-in label, duplicate of ..., calcifications clearly visible")
    common = dict(disabled=not name, on_click=_record)
    row = st.columns(len(VERDICT_BUTTONS))
    for column, (verdict, (label, shortcut)) in zip(row, VERDICT_BUTTONS.items()):
        column.button(label, key=f"{key}_{verdict}", shortcut=shortcut if shortcuts else None, width="stretch",
                      type="primary" if verdict == "agree" else "secondary",
                      args=(dataset, filename, verdict, None, note_key, on_verdict, on_verdict_args), **common)
    st.caption("Relabel to the correct source label:")
    row = st.columns(len(SOURCE_LABELS))
    for column, (label, class_name) in zip(row, SOURCE_LABELS.items()):
        column.button(SHORT_NAMES[label], key=f"{key}_relabel_{label}", help=f"relabel as {label}, {class_name}",
                      shortcut=str(label) if shortcuts else None, width="stretch",
                      args=(dataset, filename, "relabel", label, note_key, on_verdict, on_verdict_args), **common)


# ---------------------------------------------------------------- Grad-CAM

def _gradcam_section(results, filename: str, image: np.ndarray | None, view: tuple, key: str, prefetch) -> None:
    st.markdown("**Grad-CAM** (where the model looked, for the predicted and the true class)")
    if image is None:
        st.caption("No image to overlay.")
        return
    polling = explain.job_state(cache.root(), results.run_id, filename)["state"] == "running"
    st.fragment(run_every=2 if polling else None)(_gradcam)(results.run_id, results.split, filename, image, view,
                                                            key, tuple(prefetch), polling)


def _start_gradcam(run_id: str, split: str, filenames: list[str]) -> None:
    try:
        explain.start_job(cache.root(), run_id, filenames, split)
    except UserError as error:
        st.session_state[f"_gradcam_error_{run_id}"] = error.problems


def _gradcam(run_id: str, split: str, filename: str, image: np.ndarray, view: tuple, key: str, prefetch: tuple,
             polling: bool) -> None:
    root = cache.root()
    state = explain.job_state(root, run_id, filename)
    if polling != (state["state"] == "running"):
        # started (by the button, whose click reran only this fragment) or finished: poll, or stop polling
        st.rerun(scope="app")
    for problem in st.session_state.pop(f"_gradcam_error_{run_id}", None) or []:
        st.error(problem)
    if state["state"] == "cached":
        maps = explain.load_cached(root, run_id, filename)
        opacity = st.slider("Grad-CAM opacity", 0.0, 1.0, 0.45, step=0.05, key=f"{key}_opacity")
        left, right = st.columns(2)
        for column, which in ((left, "predicted"), (right, "true")):
            column.image(zoomed(explain.overlay(image, maps[which], opacity), *view),
                         caption=f"{which} class: {maps[f'{which}_name']}", width="stretch")
        return
    if state["state"] == "running":
        st.info("Computing Grad-CAM in the background (the first one loads the model: a few seconds) ...")
        return
    if state["state"] == "failed":
        st.error(f"The Grad-CAM job failed: {state['message']}")
    wanted = [filename, *[name for name in prefetch if name != filename]]
    st.button("Compute Grad-CAM" if state["state"] == "none" else "Try again", key=f"{key}_gradcam",
              icon=":material/local_fire_department:", on_click=_start_gradcam, args=(run_id, split, wanted),
              help="computed in a background process and cached per run and patch"
                   + (f"; the next {len(wanted) - 1} patches of the queue are computed with it" if len(wanted) > 1 else ""))


# ---------------------------------------------------------------- the full-mammogram context

def _full_mammogram(dataset: str, filename: str, width: int) -> None:
    """The mammogram the patch was cut from, when the dataset keeps one (CBIS-DDSM imports); nothing otherwise."""
    try:
        stored = cache.dataset(dataset)
    except UserError:
        return
    if "context" not in stored.manifest.columns:
        return
    hit = stored.manifest[stored.manifest["filename"] == filename]
    if hit.empty or not cbis_context.has_context(hit.iloc[0]):
        return
    row = hit.iloc[0]
    picture = cache.context_picture(str(stored.folder), {field: row.get(field) for field in cbis_context.CONTEXT_FIELDS})
    if picture is None:
        st.warning(f"The full mammogram of {filename} is missing from the dataset folder ({row['context']}).")
        return
    roi = "ROI outline in red, " if cbis_context.stored(row.get("roi_outline")) else ""
    st.image(picture, width=width,
             caption=f"Full mammogram {row['source_image']} ({int(row['source_width'])}×{int(row['source_height'])} "
                     f"pixels): {roi}patch box in yellow")


# ---------------------------------------------------------------- the detail

def _other_runs(results, dataset: str) -> list:
    """RunResults of the other evaluated runs of the dataset, on the same split."""
    found = []
    for record in cache.records():
        if record["dataset"] != dataset or record["run_id"] == results.run_id:
            continue
        other = cache.results(record["run_id"], results.split)
        if other is not None:
            found.append(other)
    return found


def show(results, filename: str, *, dataset: str, key: str, shortcuts: bool = False,
         on_verdict: Callable | None = None, on_verdict_args: tuple = (), prefetch=()) -> None:
    """The detail of one patch of a run's predictions. `key` prefixes every widget key; with `shortcuts` the
    verdict buttons answer the keyboard (A agree, X exclude, U unsure, 0-4 relabel); after a verdict is
    recorded on_verdict(*on_verdict_args) runs (in the button's callback). `prefetch`: further patches whose
    Grad-CAM the same background job computes."""
    frame = results.predictions
    hit = frame[frame["filename"] == filename]
    if hit.empty:
        st.warning(f"{filename} is not among run {results.run_id}'s {results.split} predictions.")
        return
    row = hit.iloc[0]
    root = cache.root()
    history = verdicts.history(root, dataset, filename)
    latest = history.iloc[-1] if len(history) else None

    left, right = st.columns([5, 4], gap="large")
    with left:
        controls = st.columns(4)
        window = controls[0].slider("Window", 1, 255, 255, key=f"{key}_window", help="contrast")
        level = controls[1].slider("Level", 0, 255, 128, key=f"{key}_level", help="brightness")
        size = controls[2].slider("Size (pixels)", 256, 1024, 512, step=64, key=f"{key}_size")
        zoom = controls[3].select_slider("Zoom", ZOOMS, value=1, key=f"{key}_zoom", format_func=lambda z: f"{z}×")
        centre = (0.5, 0.5)
        if zoom > 1:
            pan = st.columns(2)
            centre = (pan[0].slider("Centre left-right", 0.0, 1.0, 0.5, 0.05, key=f"{key}_cx"),
                      pan[1].slider("Centre top-bottom", 0.0, 1.0, 0.5, 0.05, key=f"{key}_cy"))
        view = (zoom, *centre)
        patch = review.load_patch(row["path"], window, level)
        if patch.image is None:
            st.warning(patch.problem)
        else:
            st.image(zoomed(patch.image, *view), width=size,
                     caption=f"{filename} ({patch.image.shape[1]}×{patch.image.shape[0]} pixels"
                             f"{f', {zoom}× zoom' if zoom > 1 else ''})")
        _full_mammogram(dataset, filename, size)
        _gradcam_section(results, filename, patch.image, view, key, prefetch)

    with right:
        st.subheader(filename)
        source = row.get("label")
        source_text = ""
        if source is not None and pd.notna(source):
            source_name = SOURCE_LABELS[int(source)]
            source_text = f" (source label {int(source)}{'' if source_name == row['true_name'] else f', {source_name}'})"
        st.markdown(f"**True:** {row['true_name']}{source_text}  \n"
                    f"**Predicted:** {row['pred_name']} with {row['confidence']:.3f} "
                    f"({'correct' if row['y_true'] == row['y_pred'] else 'wrong'})  \n"
                    f"**Run:** {results.run_id}, {results.split} split")
        if latest is not None:
            who = f"by {latest['reviewer']}, {str(latest['time'])[:16].replace('T', ' ')} UTC"
            note = f": {latest['note']}" if latest["note"] else ""
            st.markdown(f"**Current verdict:** {badge(latest['verdict'], latest['new_label'])} {who}{note}")
        else:
            st.markdown("**Current verdict:** none yet")
        probabilities = pd.DataFrame({"class": results.class_names,
                                      "probability": list(results.probabilities(row).values())})
        probabilities["is"] = ["true" if i == row["y_true"] else "" for i in range(len(probabilities))]
        probabilities.loc[int(row["y_pred"]), "is"] = ("true, predicted" if row["y_pred"] == row["y_true"]
                                                       else "predicted")
        st.dataframe(probabilities, hide_index=True, width="stretch", key=f"{key}_probabilities",
                     column_config={"probability": st.column_config.ProgressColumn(
                                        "probability", format="%.3f", min_value=0.0, max_value=1.0),
                                    "is": st.column_config.TextColumn("", width="medium")})
        _verdict_panel(dataset, filename, key, shortcuts, on_verdict, on_verdict_args)
        st.markdown("**Verdict history**")
        if history.empty:
            st.caption("No verdict yet.")
        else:
            shown = history.iloc[::-1][["time", "reviewer", "verdict", "new_label", "note"]]
            st.dataframe(shown, hide_index=True, width="stretch", key=f"{key}_history")
        st.markdown("**Other runs on this patch**")
        others = patch_across_runs(_other_runs(results, dataset), filename)
        if others.empty:
            st.caption(f"No other run of dataset {dataset} has {results.split} predictions for this patch.")
        else:
            others["task"] = others["task"].map(review.task_label)
            st.dataframe(others, hide_index=True, width="stretch", key=f"{key}_others",
                         column_config={"confidence": st.column_config.NumberColumn(format="%.3f")})


# ---------------------------------------------------------------- as a dialog

def open_dialog(grid: str, run_id: str, split: str, filename: str, dataset: str) -> None:
    """A tile's button callback: ask the grid `grid` to show this patch's detail as a dialog."""
    st.session_state[DIALOG] = {"grid": grid, "run_id": run_id, "split": split, "filename": filename,
                                "dataset": dataset}
    st.session_state.pop(ERROR, None)


def close_dialog() -> None:
    st.session_state.pop(DIALOG, None)
    st.session_state.pop(ERROR, None)


def requested(grid: str) -> dict | None:
    """The dialog the grid `grid` should draw in this run, if any."""
    wanted = st.session_state.get(DIALOG)
    return wanted if wanted and wanted.get("grid") == grid else None


@st.dialog("Patch detail", width="large", on_dismiss=close_dialog)
def dialog(results, filename: str, dataset: str) -> None:
    show(results, filename, dataset=dataset, key="dialog", shortcuts=True)
