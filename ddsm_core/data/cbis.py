"""Importer for CBIS-DDSM: abnormality patches and normal patches cut from the full mammograms.

Two source layouts (`--source` is the folder that holds them):
- "tcia", the TCIA/NBIA download: `CBIS-DDSM/<Subject ID>/<study>/<series>/1-1.dcm` (and 1-2.dcm), an optional
  NBIA `metadata.csv` (Series UID -> File Location, needed when the study and series folders carry NBIA's
  descriptive names rather than UIDs) and the four case description CSVs anywhere under the source;
- "jpeg", the Kaggle JPEG re-release: `csv/dicom_info.csv`, the four CSVs, `jpeg/<SeriesInstanceUID>/*.jpg`.

A CSV row's paths (`<subject>/<study UID>/<series UID>/<file>`) are joined to files through the series UID
only: the CSVs name 000000.dcm/000001.dcm while files are 1-1.dcm/1-2.dcm, and a row's crop and mask share
one series in either order (cbis_patches.find_mask tells them apart by content). Labels: benign calcification
1, benign mass 2, malignant calcification 3, malignant mass 4 (BENIGN_WITHOUT_CALLBACK is benign; the
pathology column keeps it), normal 0. The split is the CSV's (train/test in its name), the group its
patient_id. The per-image work (cbis_patches.process_image) runs in a process pool.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from .. import workspace
from ..errors import UserError
from ..processes import spawn_pool
from . import images, store
from .cbis_patches import (
    CONTEXT_SIDE,
    NORMAL_MAX_DARK,
    ROI_MARGIN,
    ImageJob,
    RoiJob,
    Settings,
    process_image,
    shown_path,
)

KINDS = ("mass", "calc")  # as the case CSVs name them
CSV_SPLITS = ("train", "test")
PATH_COLUMNS = ("image file path", "cropped image file path", "ROI mask file path")
FULL_DESCRIPTION = "full mammogram images"
PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
# manifest column -> the CSV spellings it comes from (the calc CSVs write `breast density` with a space)
METADATA = {
    "breast_density": ("breast_density", "breast density"), "laterality": ("left or right breast",),
    "view": ("image view",), "abnormality_id": ("abnormality id",), "abnormality_type": ("abnormality type",),
    "mass_shape": ("mass shape",), "mass_margins": ("mass margins",), "calc_type": ("calc type",),
    "calc_distribution": ("calc distribution",), "assessment": ("assessment",), "pathology": ("pathology",),
    "subtlety": ("subtlety",),
}
INTEGER_COLUMNS = ("breast_density", "abnormality_id", "assessment", "subtlety")
IMAGE_COLUMNS = ("breast_density", "laterality", "view")  # what a normal patch inherits from its mammogram
REQUIRED = ("patient_id", "abnormality id", "pathology", *PATH_COLUMNS)
DEFAULT_PATCH_SIZE, DEFAULT_NORMALS, SEED = 299, 2, 0
JPEG_TRANSFORM = {"name": "none", "description": "8-bit JPEGs of the re-release read as grayscale (images.to_gray)"}


def case_csv_name(kind: str, split: str) -> str:
    return f"{kind}_case_description_{split}_set.csv"


CASE_CSVS = tuple(case_csv_name(kind, split) for kind in KINDS for split in CSV_SPLITS)
EXPECTED = (f"the CBIS-DDSM case description CSVs ({', '.join(CASE_CSVS)}) and either a CBIS-DDSM/ folder of "
            "DICOM files (the TCIA download) or csv/dicom_info.csv with jpeg/ (the JPEG re-release)")


# ---------------------------------------------------------------- finding the sources

def find_case_csvs(source: Path) -> dict[str, Path]:
    """CSV name -> its path, for those of the four found anywhere under source (the shallowest wins)."""
    found = {}
    for path in sorted(source.rglob("*_case_description_*_set.csv"), key=lambda p: (len(p.parts), str(p))):
        found.setdefault(path.name, path)
    return {name: found[name] for name in CASE_CSVS if name in found}


def _dicom_root(source: Path) -> Path | None:
    candidates = [source, *source.glob("*")] if source.name != "CBIS-DDSM" else [source.parent]
    return next((folder / "CBIS-DDSM" for folder in candidates if (folder / "CBIS-DDSM").is_dir()), None)


def _read_table(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise UserError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (expected {what})")
    return frame


class TciaFiles:
    """Series UID -> its files in the NBIA download, through metadata.csv when there is one, else through
    folders named by the UIDs (CBIS-DDSM/<subject>/<study UID>/<series UID>)."""
    layout = "tcia"

    def __init__(self, source: Path, dicom_root: Path):
        self.source, self.dicom_root = source, dicom_root
        self.folders: dict[str, Path] = {}
        for path in sorted(source.glob("**/metadata.csv"), key=lambda p: len(p.parts))[:1]:
            frame = _read_table(path, ("Series UID", "File Location"), "NBIA's metadata.csv columns")
            self.folders = {uid.strip(): path.parent / location.strip()
                            for uid, location in zip(frame["Series UID"], frame["File Location"])}

    def files(self, parts: tuple[str, str, str]) -> tuple[tuple, str | None]:
        subject, study, series = parts
        folder = self.folders.get(series, self.dicom_root / subject / study / series)
        if not folder.is_dir():
            return (), "series folder not found (neither in metadata.csv nor as CBIS-DDSM/<subject>/<study>/<series>)"
        found = tuple((str(path), None) for path in sorted(folder.glob("*.dcm")))
        return (found, None) if found else ((), f"no .dcm file in {shown_path(folder, self.source)}")


class JpegFiles:
    """Series UID -> its JPEG files and SeriesDescriptions, through csv/dicom_info.csv."""
    layout = "jpeg"

    def __init__(self, source: Path, info: Path):
        self.source = source
        frame = _read_table(info, ("SeriesInstanceUID", "SeriesDescription"), "the re-release's dicom_info.csv columns")
        path_columns = [column for column in ("image_path", "file_path") if column in frame.columns]
        if not path_columns:
            raise UserError(f"{info}: missing column(s) file_path or image_path (expected the JPEG paths)")
        self.series: dict[str, list] = {}
        for _, record in frame.iterrows():
            jpeg = next((record[c] for c in path_columns if record[c].strip().lower().endswith((".jpg", ".jpeg"))), "")
            if jpeg:
                entry = (str(self._locate(jpeg.strip(), record["SeriesInstanceUID"].strip())), record["SeriesDescription"])
                self.series.setdefault(record["SeriesInstanceUID"].strip(), []).append(entry)

    def _locate(self, listed: str, series: str) -> Path:
        """dicom_info's CBIS-DDSM/jpeg/<uid>/<file> is relative to the folder holding jpeg/."""
        relative = Path(listed)
        relative = Path(*relative.parts[1:]) if relative.parts and relative.parts[0] == "CBIS-DDSM" else relative
        return self.source / relative if (self.source / relative).exists() else self.source / "jpeg" / series / relative.name

    def files(self, parts: tuple[str, str, str]) -> tuple[tuple, str | None]:
        found = self.series.get(parts[2])
        if not found:
            return (), "series not listed in csv/dicom_info.csv"
        return tuple(sorted(found)), None


def source_files(source: Path):
    """The layout's file finder, or a UserError saying what was expected where."""
    info = source / "csv" / "dicom_info.csv"
    if info.is_file():
        return JpegFiles(source, info)
    dicom_root = _dicom_root(source)
    if dicom_root is not None:
        return TciaFiles(source, dicom_root)
    raise UserError(f"{source}: neither layout found: expected a CBIS-DDSM/ folder of DICOM files beside the CSVs "
                    "(the TCIA download) or csv/dicom_info.csv with jpeg/ (the JPEG re-release)")


# ---------------------------------------------------------------- the CSV rows

def read_case_rows(path: Path) -> list[tuple[int, dict]]:
    """(line the record starts on, record) of a case description CSV; a record may span lines (stray newlines)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in REQUIRED if column not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} (expected the CBIS-DDSM case "
                                "description columns)")
            rows, start = [], reader.line_num + 1
            for record in reader:
                rows.append((start, record))
                start = reader.line_num + 1
            return rows
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path}: not a readable CSV ({error})") from None


def series_parts(value: str) -> tuple[str, str, str] | None:
    """(subject, study UID, series UID) of a CSV path `<subject>/<study>/<series>/<file>` (stray whitespace off)."""
    parts = [part.strip() for part in value.strip().replace("\\", "/").split("/") if part.strip()]
    return tuple(parts[:3]) if len(parts) >= 4 else None


def _metadata(record: dict) -> dict:
    values = {}
    for column, spellings in METADATA.items():
        text = next((record[s].strip() for s in spellings if s in record and record[s] is not None), "")
        values[column] = (int(text) if text.isdigit() else None) if column in INTEGER_COLUMNS else (text or None)
    return values


def label_of(kind: str, pathology: str) -> int:
    """The source label of a CSV row: kind 'mass' or 'calc' (from the CSV's name) and its pathology."""
    malignant = pathology == "MALIGNANT"
    return {("calc", False): 1, ("mass", False): 2, ("calc", True): 3, ("mass", True): 4}[(kind, malignant)]


def _row_problem(record: dict) -> str | None:
    pathology = (record.get("pathology") or "").strip()
    if pathology not in PATHOLOGIES:
        return f"pathology {pathology!r} is not one of {', '.join(PATHOLOGIES)}"
    for column in (PATH_COLUMNS[0], PATH_COLUMNS[2]):
        if series_parts(record.get(column) or "") is None:
            return f"{column} {record.get(column)!r} is not <subject>/<study UID>/<series UID>/<file>"
    return None


def plan_jobs(csvs: dict[str, Path], finder) -> tuple[list[ImageJob], list[dict]]:
    """One ImageJob per full mammogram with its abnormalities' RoiJobs; the rows refused before any decoding."""
    images_by_key, bad, first_line = {}, [], {}
    for name, path in csvs.items():
        kind, split = name.split("_")[0], name.split("_")[-2]
        for line, record in read_case_rows(path):
            where = f"{name} line {line}"
            full_path = (record.get(PATH_COLUMNS[0]) or "").strip()
            problem = _row_problem(record)
            if problem:
                bad.append({"where": where, "file": full_path or name, "reason": problem})
                continue
            full_parts = series_parts(full_path)
            metadata = _metadata(record)
            filename = f"{full_parts[0]}_{metadata['abnormality_id']}.png"
            if filename in first_line:
                again = f"abnormality {metadata['abnormality_id']} of this image is also on {first_line[filename]}"
                bad.append({"where": where, "file": full_path, "reason": again})
                continue
            first_line[filename] = f"line {line}"
            group = record["patient_id"].strip()
            fields = {"label": label_of(kind, metadata["pathology"]), "split": split, "group": group} | metadata
            roi_parts = {series_parts(record.get(c) or "") for c in PATH_COLUMNS[1:]} - {None}
            roi_files, roi_problem = _roi_files(sorted(roi_parts), finder)
            csv_mask = record[PATH_COLUMNS[2]].strip()
            roi = RoiJob(where, csv_mask, roi_files, roi_problem, filename, fields)
            job = images_by_key.get(full_parts[2])
            if job is None:
                files, full_problem = finder.files(full_parts)
                full_file = _full_file(files)
                normal = {"label": 0, "split": split, "group": group} | dict.fromkeys(METADATA) | {
                    column: metadata[column] for column in IMAGE_COLUMNS}
                job = images_by_key[full_parts[2]] = ImageJob(
                    full_parts[2], full_parts[0], full_path, full_file, full_problem or (
                        None if full_file else "no full mammogram file in its series"), (), normal)
            images_by_key[full_parts[2]] = replace(job, rois=(*job.rois, roi))
    return list(images_by_key.values()), bad


def _full_file(files: tuple) -> str | None:
    """The series' full mammogram: the one described so (JPEG layout), else its first file."""
    described = [path for path, description in files if description and description.strip() == FULL_DESCRIPTION]
    return (described or [path for path, _ in files] or [None])[0]


def _roi_files(parts: list, finder) -> tuple[tuple, str | None]:
    files = []
    for series in parts:
        found, problem = finder.files(series)
        if problem:
            return (), f"ROI series: {problem}"
        files += [entry for entry in found if entry not in files]
    return tuple(files), None


# ---------------------------------------------------------------- running the jobs

def _progress(done: int, total: int, started: float, stream) -> None:
    if stream is None:
        return
    rate = done / max(time.monotonic() - started, 1e-9)
    left = (total - done) / rate if rate else 0.0
    print(f"cbis-ddsm: {done}/{total} mammograms ({100 * done // max(total, 1)} %), about {left:.0f} s left",
          file=stream, flush=True)


def run_jobs(jobs: list[ImageJob], settings: Settings, workers: int, stream=sys.stderr) -> list:
    """process_image over every job (in a pool of `workers` processes when more than one), in job order,
    printing a progress line about every 10 %."""
    if workers <= 1:
        return _gather((process_image(job, settings) for job in jobs), len(jobs), stream)
    with spawn_pool(workers) as pool:
        return _gather(pool.map(process_image, jobs, [settings] * len(jobs), chunksize=4), len(jobs), stream)


def _gather(mapped, total: int, stream) -> list:
    every, started, results = max(1, total // 10), time.monotonic(), []
    for done, result in enumerate(mapped, start=1):
        results.append(result)
        if done % every == 0 or done == total:
            _progress(done, total, started, stream)
    return results


def _manifest(rows: list[dict]) -> pd.DataFrame:
    """The rows as a frame; the integer metadata as nullable integers (missing for normal patches), so a slice
    reads "3", not "3.0"."""
    frame = pd.DataFrame(rows)
    for column in INTEGER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def import_cbis(root, name: str, source, patch_size: int = DEFAULT_PATCH_SIZE,
                normals_per_image: int = DEFAULT_NORMALS, skip_bad: bool = False, replace_existing: bool = False,
                workers: int | None = None, seed: int = SEED, progress=sys.stderr) -> store.Dataset:
    """Import a CBIS-DDSM source folder as dataset `name` (see the module docstring). Every row is checked
    before the dataset is moved into place; a refused import leaves the workspace as it was. `workers`:
    processes for the per-image work (default: the CPUs, at most 4); `progress`: a stream for progress
    lines (None for silence)."""
    root = workspace.workspace_root(root)
    source = Path(source)
    store.check_new_name(root, name, replace_existing)
    if patch_size < 32 or normals_per_image < 0:
        raise UserError(f"--patch-size must be at least 32 (got {patch_size}) and --normals-per-image at least 0 "
                        f"(got {normals_per_image})")
    if not source.is_dir():
        raise UserError(f"{source}: source folder not found")
    source = source.resolve()  # the workers name files relative to it
    csvs = find_case_csvs(source)
    if not csvs:
        raise UserError(f"{source}: no case description CSV found: expected {EXPECTED}")
    finder = source_files(source)
    jobs, bad = plan_jobs(csvs, finder)
    workers = workers or min(os.cpu_count() or 1, 4)
    with store.staging(root, name) as staging:
        settings = Settings(str(staging), str(source), patch_size, normals_per_image, seed)
        results = run_jobs(jobs, settings, workers, progress)
        rows = [row for result in results for row in result.rows]
        bad += [entry for result in results for entry in result.bad]
        store.refuse_or_record(bad, rows, skip_bad)
        info = {"source": settings.source, "layout": finder.layout, "case_csvs": sorted(csvs),
                "transform": images.SIXTEEN_BIT_TRANSFORM if finder.layout == "tcia" else JPEG_TRANSFORM,
                "patch_size": patch_size, "roi_margin": ROI_MARGIN, "normals_per_image": normals_per_image,
                "normal_max_dark": NORMAL_MAX_DARK, "seed": seed, "context_longest_side": CONTEXT_SIDE,
                "mammograms": len(jobs), "normals_short": sum(result.normals_short for result in results)}
        return store.save(root, name, store.CBIS, info, _manifest(rows), bad, staging, replace_existing)
