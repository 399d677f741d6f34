"""import cbis-ddsm on synthetic CBIS-DDSM trees (ddsm_core.synth_cbis) in both real layouts, with the real
release's quirks: counts, splits, normal patches, the 16-bit transform, bad rows, training, the detail view."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest

from ddsm_core import runs, synth_cbis, workspace
from ddsm_core.config import RunConfig
from ddsm_core.data import cbis, images, store
from ddsm_core.errors import UserError
from support import assert_clean, cli, errors, snapshot

PATCH = 64
N_IMAGES = 36
LAYOUTS = {"tcia": dict(layout="tcia"), "tcia-nbia": dict(layout="tcia", nbia_names=True), "jpeg": dict(layout="jpeg")}
BAD_REASONS = {"missing": "series folder not found", "unreadable": "not a readable DICOM image",
               "mask_size": "mask is 256x312 but its full mammogram is 256x320", "empty_mask": "mask is empty"}
JPEG_BAD_REASONS = BAD_REASONS | {"missing": "file not found", "unreadable": "not a decodable image"}


def import_tree(root, name, source, **options) -> store.Dataset:
    return cbis.import_cbis(root, name, source, patch_size=PATCH, workers=1, progress=None, **options)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def imported(request, tmp_path_factory):
    """(truth, dataset, source) of a clean tree of each layout, imported."""
    base = tmp_path_factory.mktemp(request.param)
    truth = synth_cbis.write(base / "source", n_images=N_IMAGES, seed=3, **LAYOUTS[request.param])
    return truth, import_tree(base / "workspace", "cbis", base / "source"), base / "source"


def rectangles_overlap(a, b) -> bool:
    """(x, y, width, height) rectangles sharing a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def full_mammogram_file(source, subject: str):
    """The TCIA layout's full mammogram DICOM file of a subject folder."""
    return next((source / "CBIS-DDSM" / subject).rglob("1-1.dcm"))


# ---------------------------------------------------------------- a clean import

def test_counts_per_class_and_split_match_the_csvs(imported):
    truth, dataset, _ = imported
    manifest = dataset.manifest
    abnormal = manifest[manifest["label"] > 0]
    expected = truth.groupby(["split", "label"]).size().to_dict()
    assert abnormal.groupby(["split", "label"]).size().to_dict() == expected
    normals = manifest[manifest["label"] == 0]
    assert dataset.info["source"]["mammograms"] == N_IMAGES
    assert normals.groupby("source_image").size().max() <= 2  # --normals-per-image
    assert len(normals) >= N_IMAGES  # most mammograms have room for both
    for split in store.SPLITS:  # every class in both official splits of this tree
        assert all(count > 0 for count in dataset.info["counts"][split].values())


def test_no_patient_is_in_both_splits_and_the_patient_is_the_group(imported):
    truth, dataset, _ = imported
    splits_per_group = dataset.manifest.groupby("group")["split"].nunique()
    assert (splits_per_group == 1).all()
    assert set(dataset.manifest["group"]) == set(truth["patient"])
    assert not any("both the train and the test split" in w for w in dataset.info["import_report"]["warnings"])


def test_a_patient_in_both_official_splits_is_kept_and_warned_about(tmp_path):
    """The real release files a few patients under both splits: the official split is kept, and said."""
    source = tmp_path / "source"
    synth_cbis.write(source, "jpeg", n_images=12, seed=4)
    moved = pd.read_csv(next(source.rglob(cbis.case_csv_name("mass", "train"))))["patient_id"].iloc[0]
    test_path = next(source.rglob(cbis.case_csv_name("mass", "test")))
    with open(test_path, newline="") as handle:
        rows = list(csv.reader(handle))  # the csv module keeps the release's quirks (newlines inside paths)
    assert len(rows) > 1, "the tree's mass test CSV has a row to move"
    rows[1][rows[0].index("patient_id")] = moved
    with open(test_path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    dataset = import_tree(tmp_path / "workspace", "cbis", source)
    assert dataset.manifest.groupby("group")["split"].nunique()[moved] == 2
    warned = [w for w in dataset.info["import_report"]["warnings"] if "both the train and the test split" in w]
    assert warned == [f"1 patient group(s) have patches in both the train and the test split (e.g. {moved}): "
                      "test results on them may be optimistic"]


def test_metadata_columns_from_either_spelling(imported):
    truth, dataset, _ = imported
    manifest = dataset.manifest
    for column in ("breast_density", "view", "laterality", "abnormality_type", "abnormality_id", "mass_shape",
                   "mass_margins", "calc_type", "calc_distribution", "assessment", "pathology", "subtlety",
                   "source_image", "box_x", "box_y", "box_size"):
        assert column in manifest.columns, column
    calcs = manifest[manifest["abnormality_type"] == "calcification"]
    assert len(calcs) and calcs["breast_density"].notna().all()  # the calc CSVs' `breast density`
    assert calcs["calc_type"].notna().all() and calcs["mass_shape"].isna().all()
    callbacks = manifest[manifest["pathology"] == "BENIGN_WITHOUT_CALLBACK"]
    assert len(callbacks) and set(callbacks["label"]) <= {1, 2}  # benign, and the pathology is kept
    assert set(manifest.loc[manifest["label"] == 0, "view"]) <= {"CC", "MLO"}  # normals inherit the image's view


def test_abnormal_patches_hold_their_roi_and_normals_overlap_none(imported):
    truth, dataset, _ = imported
    manifest = dataset.manifest
    rois = {subject: [(r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0) for r in rows.itertuples()]
            for subject, rows in truth.groupby("subject")}
    for row in manifest.itertuples():
        if row.label == 0:
            square = (row.box_x, row.box_y, row.box_size, row.box_size)
            assert not any(rectangles_overlap(square, roi) for roi in rois[row.source_image]), row.filename
            assert row.dark_fraction <= 0.1  # breast tissue, not film background
        else:
            x, y, w, h = rois[row.source_image][int(row.abnormality_id) - 1]
            assert row.box_x <= x and row.box_y <= y and x + w <= row.box_x + row.box_size \
                and y + h <= row.box_y + row.box_size
            assert row.box_size == PATCH or row.box_size > max(w, h)  # native scale, or the ROI with a margin scaled down
        assert (row.width, row.height, row.channels) == (PATCH, PATCH, 1)
        assert (dataset.folder / row.path).is_file() and (dataset.folder / row.context).is_file()


def test_the_import_is_reproducible(imported, tmp_path):
    _, dataset, source = imported
    again = import_tree(tmp_path, "again", source)
    columns = [c for c in dataset.manifest.columns if c != "path"]
    pd.testing.assert_frame_equal(again.manifest[columns], dataset.manifest[columns])


# ---------------------------------------------------------------- the 16-bit transform

def test_sixteen_bit_pixels_map_through_the_one_recorded_transform(imported):
    truth, dataset, source = imported
    if dataset.info["source"]["layout"] != "tcia":
        assert dataset.info["source"]["transform"] == cbis.JPEG_TRANSFORM
        return
    assert dataset.info["source"]["transform"] == images.SIXTEEN_BIT_TRANSFORM
    on_disk = json.loads((dataset.folder / store.INFO).read_text())
    assert on_disk["source"]["transform"]["name"] == images.SIXTEEN_BIT_TRANSFORM["name"]
    native = dataset.manifest[(dataset.manifest["box_size"] == PATCH)]
    checked = set()
    for monochrome1 in (False, True):
        subjects = set(truth.loc[truth["monochrome1"] == monochrome1, "subject"])
        row = native[native["source_image"].isin(subjects)].iloc[0]
        ds = pydicom.dcmread(full_mammogram_file(source, row["source_image"]))
        assert (ds.PhotometricInterpretation == "MONOCHROME1") == monochrome1
        raw = ds.pixel_array.astype(np.float64)
        values = 65535.0 - raw if monochrome1 else raw  # MONOCHROME1 inverted over the stored type's range
        low, high = np.percentile(values, [0.5, 99.9])  # over the whole mammogram
        patch = images.read_gray(dataset.folder / row["path"])
        for dy, dx in ((PATCH // 2, PATCH // 2), (3, 5)):
            value = values[row["box_y"] + dy, row["box_x"] + dx]
            expected = int(np.clip(np.round((value - low) * 255.0 / (high - low)), 0, 255))
            assert patch[dy, dx] == expected
        checked.add(monochrome1)
    assert checked == {False, True}


def test_monochrome1_comes_out_like_monochrome2(tmp_path):
    """The same anatomy stored inverted (MONOCHROME1) gives the same 8-bit patch after inversion."""
    stored = synth_cbis._template(np.random.default_rng(0), 320, 256, True, "mass", 1, monochrome1=False).pixels
    inverted = (2 ** synth_cbis.BITS - 1 - stored).astype(np.uint16)
    plain = images.to_8bit(stored, images.window_of(stored))
    flipped = images.to_8bit(inverted, images.window_of(inverted, True), True)
    assert np.abs(plain.astype(int) - flipped.astype(int)).max() <= 1  # the percentiles interpolate: one level
    assert plain[160, 5] > plain[5, 250]  # breast bright, background dark


# ---------------------------------------------------------------- bad rows

@pytest.fixture(scope="module", params=["tcia", "jpeg"])
def bad_tree(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"bad-{request.param}")
    truth = synth_cbis.write(base / "source", request.param, n_images=12, seed=5, bad=synth_cbis.BAD_KINDS)
    return request.param, truth, base / "source"


def planted(truth) -> pd.DataFrame:
    return truth[truth["bad"].notna()]


def test_each_bad_row_is_named_and_nothing_is_written(bad_tree, tmp_path):
    layout, truth, source = bad_tree
    root = tmp_path / "workspace"
    good = synth_cbis.write(tmp_path / "good", "tcia", n_images=6, seed=1)
    assert len(good)
    import_tree(root, "existing", tmp_path / "good")
    before = snapshot(root)
    with pytest.raises(UserError) as raised:
        import_tree(root, "broken", source)
    problems = raised.value.problems
    reasons = JPEG_BAD_REASONS if layout == "jpeg" else BAD_REASONS
    for row in planted(truth).itertuples():
        where = f"{row.csv} line {row.line}: "
        line = next((p for p in problems if p.startswith(where)), None)
        assert line is not None, (where, problems)
        assert reasons[row.bad] in line, line
    assert len(problems) == len(planted(truth)) + 1 and "nothing was imported" in problems[-1]
    assert snapshot(root) == before


def test_skip_bad_records_the_skipped_rows(bad_tree, tmp_path):
    _, truth, source = bad_tree
    dataset = import_tree(tmp_path, "partial", source, skip_bad=True)
    skipped = dataset.info["import_report"]["skipped"]
    assert sorted(entry["where"] for entry in skipped) == sorted(
        f"{row.csv} line {row.line}" for row in planted(truth).itertuples())
    abnormal = dataset.manifest[dataset.manifest["label"] > 0]
    assert len(abnormal) == len(truth) - len(planted(truth))
    # a mammogram with a bad ROI gives no normal patch: the lesion's place is unknown
    assert not set(dataset.manifest.loc[dataset.manifest["label"] == 0, "source_image"]) & set(planted(truth)["subject"])


def test_a_source_without_the_csvs_or_either_layout_says_what_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no case description CSV found: expected the CBIS-DDSM case description"):
        import_tree(tmp_path / "ws", "x", tmp_path / "empty")
    source = tmp_path / "csvs-only"
    synth_cbis.write(source, "tcia", n_images=2)
    shutil.rmtree(source / "CBIS-DDSM")
    with pytest.raises(UserError, match="neither layout found: expected a CBIS-DDSM/ folder"):
        import_tree(tmp_path / "ws", "x", source)
    assert not (tmp_path / "ws").exists()


# ---------------------------------------------------------------- the command, training, the detail view

@pytest.mark.slow
def test_cli_imports_and_refuses_with_row_names(bad_tree, tmp_path):
    _, truth, source = bad_tree
    root = tmp_path / "workspace"
    refused = cli("import", "cbis-ddsm", "--workspace", root, "--name", "c", "--source", source, "--patch-size", PATCH)
    assert refused.returncode == 1 and len(errors(refused)) == len(planted(truth)) + 1
    assert not root.exists() or snapshot(root) == {}
    done = cli("import", "cbis-ddsm", "--workspace", root, "--name", "c", "--source", source, "--patch-size", PATCH,
               "--normals-per-image", 1, "--skip-bad", check=True)
    assert "imported" in done.stdout and done.stdout.count("  skipped ") == len(planted(truth))
    assert "cbis-ddsm: " in done.stderr and "mammograms (100 %)" in done.stderr  # the progress lines
    assert store.load(root, "c").info["source"]["normals_per_image"] == 1


@pytest.mark.slow
def test_small_cnn_trains_on_the_import_and_the_detail_shows_the_mammogram(tmp_path, open_app):
    from ddsm_core.training import train_and_evaluate

    synth_cbis.write(tmp_path / "source", "tcia", n_images=N_IMAGES, seed=3)
    root = tmp_path / "workspace"
    import_tree(root, "cbis", tmp_path / "source")
    run_id = runs.create_run(root, RunConfig(dataset="cbis", task=0, backbone="small_cnn", epochs=1, image_size=32,
                                             batch_size=32, lr=1e-3, precision="float32"))
    train_and_evaluate(root, run_id, log=lambda *_: None)
    metrics = workspace.read_json(runs.metrics_file(root, run_id, "test"))
    assert 0.0 <= metrics["accuracy"] <= 1.0
    at = open_app(root, "pages/review.py", run=run_id)
    captions = [c for image in at.get("image") for c in image.captions]
    assert any(c.startswith("Full mammogram ") and "patch box in yellow" in c for c in captions), captions
    assert_clean(at)
