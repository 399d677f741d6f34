"""A synthetic CBIS-DDSM source tree in either real layout, for the importer's tests and benchmark.

    write(out_dir, layout, n_images, height=320, width=256, seed=0, distinct=None, bad=()) -> truth frame

layout "tcia": the NBIA download, `CBIS-DDSM/<Subject ID>/<study UID>/<series UID>/1-1.dcm` (and `1-2.dcm`),
`metadata.csv` and the four case description CSVs beside `CBIS-DDSM/`; with nbia_names=True the study and
series folders carry NBIA's descriptive names instead of UIDs (as real downloads do), joined through
metadata.csv. layout "jpeg": the Kaggle JPEG re-release, `csv/dicom_info.csv`, `csv/<the four CSVs>` and
`jpeg/<SeriesInstanceUID>/1-N.jpg`.

The quirks of the real release are reproduced: CSV paths name 000000.dcm/000001.dcm while the files are
1-1.dcm/1-2.dcm; the cropped image and the ROI mask share one series folder in alternating order; some paths
end in a stray newline; the calc CSVs spell `breast density` with a space; ROI files live in the subject
folder `<subject>_<abnormality id>`; some full mammograms are MONOCHROME1 (stored inverted).

Images are half-ellipse breasts against the chest wall with low-frequency texture; each abnormality is an
ellipse (a brighter mass or a cluster of bright dots). With `distinct` only that many images are generated
and the rest are hard links to them (zero disk cost, real decoding work per file: the benchmark's trick).
`bad` plants one bad row per kind, on the first abnormalities: "missing" (ROI files deleted), "unreadable"
(mask file overwritten with garbage), "mask_size" (mask 8 rows short), "empty_mask" (mask all zero).

The returned truth has one row per abnormality: csv, line, subject, patient, split, label, abnormality_type,
pathology, x0, y0, x1, y1 (ROI bounding box, end exclusive), monochrome1, image (its index), bad (the planted
kind or None), mask_file (its ROI mask file).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .data import images
from .data.cbis import FULL_DESCRIPTION as FULL
from .data.cbis import PATH_COLUMNS, PATHOLOGIES, case_csv_name, label_of

UID_PREFIX = "1.3.6.1.4.1.9590.100.1.2."
DIGITAL_MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CROP, MASK = "cropped images", "ROI mask images"
BAD_KINDS = ("missing", "unreadable", "mask_size", "empty_mask")
BITS = 12
MASS_SHAPES = ("OVAL", "ROUND", "IRREGULAR", "LOBULATED")
MASS_MARGINS = ("CIRCUMSCRIBED", "SPICULATED", "ILL_DEFINED", "OBSCURED")
CALC_TYPES = ("PLEOMORPHIC", "AMORPHOUS", "PUNCTATE", "LUCENT_CENTER")
CALC_DISTRIBUTIONS = ("CLUSTERED", "SEGMENTAL", "LINEAR", "REGIONAL")
METADATA_COLUMNS = ("Series UID", "Collection", "Subject ID", "Study UID", "Series Description", "Modality",
                    "SOP Class UID", "Number of Images", "File Location")
DICOM_INFO_COLUMNS = ("file_path", "image_path", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                      "SeriesDescription", "Rows", "Columns", "BitsStored", "PhotometricInterpretation", "Modality")


def case_columns(kind: str) -> list[str]:
    """The real column order of the mass or calc case description CSVs (note `breast density` in calc)."""
    specific = ["mass shape", "mass margins"] if kind == "mass" else ["calc type", "calc distribution"]
    density = "breast_density" if kind == "mass" else "breast density"
    return ["patient_id", density, "left or right breast", "image view", "abnormality id", "abnormality type",
            *specific, "assessment", "pathology", "subtlety", *PATH_COLUMNS]


# ---------------------------------------------------------------- pixels

@dataclass
class Template:
    """One synthetic mammogram: stored pixels (already inverted when monochrome1) and its lesions' masks."""
    pixels: np.ndarray
    monochrome1: bool
    kind: str  # "mass" or "calc"
    masks: list[np.ndarray]  # uint8 0/255, full size
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 (end exclusive)


def _texture(rng, height: int, width: int, cell: int) -> np.ndarray:
    coarse = rng.normal(0.0, 1.0, (height // cell + 2, width // cell + 2)).astype(np.float32)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]


def _template(rng, height: int, width: int, left: bool, kind: str, n_lesions: int, monochrome1: bool) -> Template:
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    wall = 0.0 if left else float(width - 1)
    radius = ((cols - wall) / (0.8 * width)) ** 2 + ((rows - height / 2) / (0.46 * height)) ** 2
    breast = radius < 1.0
    tissue = 1400 + 1400 * (1 - radius) + 180 * _texture(rng, height, width, max(4, min(height, width) // 24))
    values = np.where(breast, tissue, 60 + 15 * rng.random((height, width), dtype=np.float32))
    masks, boxes, side = [], [], min(height, width)
    for _ in range(n_lesions):
        ry, rx = (side * rng.uniform(0.04, 0.14, 2)).astype(int) + 3
        cy = int(rng.uniform(0.3, 0.7) * height)
        cx = int(abs(wall - rng.uniform(0.15, 0.45) * width))
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
        if kind == "mass":
            values = values + 300 * inside
        else:
            values = values + 1500 * (inside & (rng.random((height, width)) < 0.12))
        masks.append(np.where(inside, 255, 0).astype(np.uint8))
        found_rows, found_cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
        boxes.append((int(found_cols[0]), int(found_rows[0]), int(found_cols[-1]) + 1, int(found_rows[-1]) + 1))
    pixels = np.clip(np.round(values), 0, 2 ** BITS - 1).astype(np.uint16)
    if monochrome1:
        pixels = (2 ** BITS - 1 - pixels).astype(np.uint16)
    return Template(pixels, monochrome1, kind, masks, boxes)


def _crop_of(template: Template, index: int) -> np.ndarray:
    x0, y0, x1, y1 = template.boxes[index]
    return template.pixels[y0:y1, x0:x1]


def _as_8bit(pixels: np.ndarray, monochrome1: bool) -> np.ndarray:
    """What the JPEG re-release holds: 8-bit pixels (16-bit ones through the library's one transform)."""
    if pixels.dtype == np.uint8:
        return pixels
    return images.to_8bit(pixels, images.window_of(pixels, monochrome1), monochrome1)


# ---------------------------------------------------------------- files

def _uid(seed: int, *parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[f"{seed}", *map(str, parts)])


def write_dicom(path: Path, pixels: np.ndarray, *, description: str, subject: str, study_uid: str, series_uid: str,
                monochrome1: bool = False, bits_stored: int = BITS, sop_class: str = SECONDARY_CAPTURE) -> None:
    """An uncompressed, valid DICOM file (file meta, SOP class, geometry, UIDs) holding `pixels`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    eight = pixels.dtype == np.uint8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(prefix=UID_PREFIX, entropy_srcs=[series_uid, description])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID = ds.PatientName = subject
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "MG", description, 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8 if eight else 16
    ds.BitsStored = 8 if eight else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def _link_or_write(path: Path, original: Path | None, write) -> None:
    if original is None:
        write(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(original, path)


@dataclass
class _Series:
    subject: str
    study_uid: str
    series_uid: str
    description: str
    folder: str  # relative to the source root


class _Tree:
    """Writes one layout's files; remembers what it wrote so hard links can reuse it."""

    def __init__(self, out: Path, layout: str, nbia_names: bool):
        self.out, self.layout, self.nbia_names = out, layout, nbia_names
        self.series: list[_Series] = []
        self.jpeg_rows: list[dict] = []

    def folder(self, subject: str, study_uid: str, series_uid: str, description: str) -> Path:
        if self.layout == "jpeg":
            relative = f"jpeg/{series_uid}"
        elif self.nbia_names:
            relative = (f"CBIS-DDSM/{subject}/07-20-2016-DDSM-{study_uid[-5:]}/"
                        f"1.000000-{description}-{series_uid[-5:]}")
        else:
            relative = f"CBIS-DDSM/{subject}/{study_uid}/{series_uid}"
        self.series.append(_Series(subject, study_uid, series_uid, description, relative))
        return self.out / relative

    def file(self, folder: Path, number: int, pixels: np.ndarray, description: str, series: tuple, monochrome1: bool,
             original: Path | None, sop_class: str = SECONDARY_CAPTURE) -> Path:
        subject, study_uid, series_uid = series
        if self.layout == "jpeg":
            path = folder / f"1-{number}.jpg"
            _link_or_write(path, original, lambda p: _write_jpeg(p, _as_8bit(pixels, monochrome1)))
            relative = f"CBIS-DDSM/{path.relative_to(self.out)}"
            self.jpeg_rows.append({"file_path": relative, "image_path": relative, "PatientID": subject,
                                   "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
                                   "SeriesDescription": description, "Rows": pixels.shape[0], "Columns": pixels.shape[1],
                                   "BitsStored": 8, "PhotometricInterpretation": "MONOCHROME2", "Modality": "MG"})
            return path
        path = folder / f"1-{number}.dcm"
        _link_or_write(path, original, lambda p: write_dicom(
            p, pixels, description=description, subject=subject, study_uid=study_uid, series_uid=series_uid,
            monochrome1=monochrome1, sop_class=sop_class))
        return path

    def finish(self, cases: dict[str, list[dict]]) -> None:
        csv_folder = self.out / "csv" if self.layout == "jpeg" else self.out
        csv_folder.mkdir(parents=True, exist_ok=True)
        for name, rows in cases.items():
            kind = name.split("_")[0]
            with open(csv_folder / name, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=case_columns(kind))
                writer.writeheader()
                writer.writerows(rows)
        if self.layout == "jpeg":
            pd.DataFrame(self.jpeg_rows, columns=DICOM_INFO_COLUMNS).to_csv(csv_folder / "dicom_info.csv", index=False)
        else:
            rows = [{"Series UID": s.series_uid, "Collection": "CBIS-DDSM", "Subject ID": s.subject,
                     "Study UID": s.study_uid, "Series Description": s.description, "Modality": "MG",
                     "SOP Class UID": SECONDARY_CAPTURE, "Number of Images": 1 if s.description == FULL else 2,
                     "File Location": f"./{s.folder}"} for s in self.series]
            pd.DataFrame(rows, columns=METADATA_COLUMNS).to_csv(self.out / "metadata.csv", index=False)


# ---------------------------------------------------------------- the tree

def _image_plan(index: int) -> dict:
    """Two views per patient, a third of the patients in the test split, masses and calcifications in both."""
    patient = index // 2
    kind = "mass" if (patient // 2) % 2 == 0 else "calc"
    return {"patient": f"P_{patient:05d}", "split": "test" if patient % 3 == 2 else "train",
            "kind": kind, "side": "LEFT" if patient % 2 == 0 else "RIGHT", "view": "CC" if index % 2 == 0 else "MLO"}


def _case_row(plan: dict, number: int, lesion: int, rng, paths: tuple[str, str, str]) -> dict:
    kind = plan["kind"]
    pathology = PATHOLOGIES[(number + lesion + number // 6) % len(PATHOLOGIES)]  # every class in both splits
    malignant = pathology == "MALIGNANT"
    row = {"patient_id": plan["patient"], ("breast_density" if kind == "mass" else "breast density"): 1 + number % 4,
           "left or right breast": plan["side"], "image view": plan["view"], "abnormality id": lesion + 1,
           "abnormality type": "mass" if kind == "mass" else "calcification",
           "assessment": int(rng.integers(4, 6) if malignant else rng.integers(2, 4)), "pathology": pathology,
           "subtlety": 1 + (number + lesion) % 5}
    if kind == "mass":
        row |= {"mass shape": MASS_SHAPES[number % 4], "mass margins": MASS_MARGINS[(number + lesion) % 4]}
    else:
        row |= {"calc type": CALC_TYPES[number % 4], "calc distribution": CALC_DISTRIBUTIONS[(number + lesion) % 4]}
    return row | dict(zip(PATH_COLUMNS, paths))


def _plant(kind: str, mask_path: Path, layout: str) -> None:
    """Break one abnormality's ROI files the way `kind` says."""
    if kind == "missing":
        for path in mask_path.parent.iterdir():
            path.unlink()
        mask_path.parent.rmdir()
    elif kind == "unreadable":
        mask_path.write_bytes(b"this is not an image\n" * 8)
    else:
        mask = images.read_gray(mask_path) if layout == "jpeg" else _dicom_pixels(mask_path)
        mask = mask[:-8] if kind == "mask_size" else np.zeros_like(mask)
        if layout == "jpeg":
            _write_jpeg(mask_path, mask)
        else:
            import pydicom

            ds = pydicom.dcmread(mask_path)
            ds.Rows, ds.Columns = mask.shape
            ds.PixelData = np.ascontiguousarray(mask).tobytes()
            ds.save_as(mask_path)


def _dicom_pixels(path: Path) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(path).pixel_array


def write(out_dir, layout: str, n_images: int, height: int = 320, width: int = 256, seed: int = 0,
          distinct: int | None = None, bad=(), nbia_names: bool = False) -> pd.DataFrame:
    """Write the tree (see the module docstring) and return the truth table."""
    if layout not in ("tcia", "jpeg"):
        raise ValueError(f"layout must be 'tcia' or 'jpeg', got {layout!r}")
    unknown = set(bad) - set(BAD_KINDS)
    if unknown:
        raise ValueError(f"unknown bad row kind(s) {sorted(unknown)}; known: {', '.join(BAD_KINDS)}")
    out = Path(out_dir)
    tree = _Tree(out, layout, nbia_names)
    rng = np.random.default_rng(seed)
    cases = {case_csv_name(kind, split): [] for kind in ("mass", "calc") for split in ("train", "test")}
    templates, first_files, truth = {}, {}, []
    for index in range(n_images):
        plan = _image_plan(index)
        source = index if distinct is None else index % distinct
        if source not in templates:
            source_plan = _image_plan(source)
            templates[source] = _template(rng, height, width, source_plan["side"] == "LEFT", source_plan["kind"],
                                          2 if source % 3 == 0 else 1, monochrome1=source % 5 == 4)
        template = templates[source]
        plan["kind"] = template.kind  # a hard-linked copy keeps its original's kind of lesion
        originals = first_files.get(source)
        written = _write_image(tree, plan, index, template, seed, originals)
        first_files.setdefault(source, written["files"])
        csv_name = case_csv_name(plan["kind"], plan["split"])
        for lesion, paths in enumerate(written["csv_paths"]):
            cases[csv_name].append(_case_row(plan, index, lesion, rng, paths))
            row = cases[csv_name][-1]
            x0, y0, x1, y1 = template.boxes[lesion]
            truth.append({"csv": csv_name, "line": None, "subject": written["subject"], "patient": plan["patient"],
                          "split": plan["split"], "label": label_of(plan["kind"], row["pathology"]),
                          "abnormality_type": row["abnormality type"], "pathology": row["pathology"],
                          "x0": x0, "y0": y0, "x1": x1, "y1": y1, "monochrome1": template.monochrome1,
                          "image": index, "bad": None, "mask_file": written["mask_files"][lesion]})
    truth = pd.DataFrame(truth)
    for kind, position in zip(bad, range(len(truth))):
        truth.loc[position, "bad"] = kind
        _plant(kind, truth.loc[position, "mask_file"], layout)
    tree.finish(cases)
    truth["line"] = _line_numbers(out, truth, cases, layout)
    return truth


def _write_image(tree: _Tree, plan: dict, index: int, template: Template, seed: int, originals) -> dict:
    """One full mammogram and its abnormalities' crop/mask series; the CSV path triples and the files."""
    prefix = "Mass" if plan["kind"] == "mass" else "Calc"
    subject = f"{prefix}-{'Training' if plan['split'] == 'train' else 'Test'}_{plan['patient']}_{plan['side']}_{plan['view']}"
    study, series = _uid(seed, index, "study"), _uid(seed, index, "full")
    files = []
    full_file = tree.file(tree.folder(subject, study, series, FULL), 1, template.pixels, FULL, (subject, study, series),
                          template.monochrome1, originals[0] if originals else None, DIGITAL_MAMMOGRAPHY)
    files.append(full_file)
    csv_paths, mask_files = [], []
    for lesion in range(len(template.masks)):
        roi_subject = f"{subject}_{lesion + 1}"
        roi_study, roi_series = _uid(seed, index, lesion, "roi-study"), _uid(seed, index, lesion, "roi")
        folder = tree.folder(roi_subject, roi_study, roi_series, f"ROI mask images-{lesion}")
        mask_first = (index + lesion) % 2 == 0  # the real release has both orders
        numbers = (2, 1) if mask_first else (1, 2)
        ids = (roi_subject, roi_study, roi_series)
        base = len(files)
        crop = tree.file(folder, numbers[0], _crop_of(template, lesion), CROP, ids, template.monochrome1,
                         originals[base] if originals else None)
        mask = tree.file(folder, numbers[1], template.masks[lesion], MASK, ids, False,
                         originals[base + 1] if originals else None)
        files += [crop, mask]
        mask_files.append(mask)
        stray = "\n" if (index + lesion) % 3 == 0 else ""
        csv_paths.append((f"{subject}/{study}/{series}/000000.dcm",
                          f"{roi_subject}/{roi_study}/{roi_series}/000000.dcm",
                          f"{roi_subject}/{roi_study}/{roi_series}/000001.dcm{stray}"))
    return {"subject": subject, "files": files, "csv_paths": csv_paths, "mask_files": mask_files}


def _line_numbers(out: Path, truth: pd.DataFrame, cases: dict, layout: str) -> list[int]:
    """The physical line each abnormality's record starts on in its CSV (stray newlines make records span two)."""
    starts = {}
    for name in cases:
        path = (out / "csv" / name) if layout == "jpeg" else out / name
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader)
            line = reader.line_num + 1
            starts[name] = []
            for _ in reader:
                starts[name].append(line)
                line = reader.line_num + 1
    counters = dict.fromkeys(cases, 0)
    lines = []
    for name in truth["csv"]:
        lines.append(starts[name][counters[name]])
        counters[name] += 1
    return lines
