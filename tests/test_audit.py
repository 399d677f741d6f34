"""The data audit on synthetic data with planted problems: leaked near-duplicates, flipped labels, a border
shortcut; its JSON, its reuse, the derived datasets, metrics per slice, and the Data page's audit section."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from ddsm_core import audit, slices, synth, workspace
from ddsm_core.audit import duplicates, patches, results
from ddsm_core.data import store
from ddsm_core.data.images import write_png
from ddsm_core.data.seed_csv import import_seed_csv
from ddsm_core.errors import UserError
from ddsm_core.tasks import SOURCE_LABELS
from support import cli, snapshot

# ---------------------------------------------------------------- planting problems


def _brighten(image: np.ndarray, rng) -> np.ndarray:
    """A contrast (x0.85-1.15) and brightness (-20..+20 levels) change."""
    changed = image.astype(np.float64) * rng.uniform(0.85, 1.15) + rng.uniform(-20, 20)
    return np.clip(np.rint(changed), 0, 255).astype(np.uint8)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the content by (dy, dx) pixels, repeating the edge into the uncovered strip (a re-cropped patch)."""
    padded = np.pad(image, ((abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[top:top + image.shape[0], left:left + image.shape[1]]


def leaked_copy(image: np.ndarray, rng) -> np.ndarray:
    """What the release's augmentation did: a random flip or rotation (never none), a brightness/contrast
    change and a shift of at most 1 % of the side."""
    most = max(1, image.shape[0] // 100)
    moved = _shift(image, *rng.integers(-most, most + 1, 2))
    return _brighten(patches.dihedral(moved, int(rng.integers(1, 8))), rng)


def write_source(folder: Path, parts: dict) -> None:
    """The seed CSV layout from {split: (images, table with filename, y and any other columns)}."""
    for split, (images, table) in parts.items():
        for name, image in zip(table["filename"], images):
            write_png(folder / f"{split}_images" / name, image)
        table.drop(columns=["background"], errors="ignore").to_csv(folder / f"{split}.csv", index=False)


def import_source(root: Path, name: str, folder: Path) -> store.Dataset:
    return import_seed_csv(root, name, folder / "train.csv", folder / "train_images", folder / "test.csv",
                           folder / "test_images")


def plant_copies(n_train, n_test, size, copies, seed=0):
    """A dataset whose training split holds `copies` leaked copies of test patches; returns the parts and the
    planted (copy filename, test filename) pairs."""
    rng = np.random.default_rng(seed)
    train_images, train = synth.generate(n_train, size, seed, "train")
    test_images, test = synth.generate(n_test, size, seed, "test")
    chosen = rng.choice(n_test, copies, replace=False)
    planted = []
    for k, row in enumerate(chosen):
        name = f"P_{90000 + 2 * k + 1:05d}_LEFT_CC_1.png"  # an odd (training) patient of its own
        train_images.append(leaked_copy(test_images[row], rng))
        train.loc[len(train)] = [name, int(test["y"].iloc[row]), name[:7], False, "CC", int(test["breast_density"].iloc[row])]
        planted.append((name, test["filename"].iloc[row]))
    return {"train": (train_images, train), "test": (test_images, test)}, planted


@pytest.fixture(scope="module")
def leaked(tmp_path_factory):
    """500 + 40 leaked copies / 200 patches of 128 px, imported and audited once."""
    base = tmp_path_factory.mktemp("leaked")
    parts, planted = plant_copies(500, 200, 128, copies=40)
    write_source(base / "src", parts)
    root = base / "workspace"
    import_source(root, "leaky", base / "src")
    started = time.perf_counter()
    result = audit.run_audit(root, "leaky", workers=2, log=lambda *_: None)
    return root, result, planted, time.perf_counter() - started


# ---------------------------------------------------------------- near-duplicates

def test_hashes_match_every_flip_and_rotation_and_survive_brightness():
    image = synth.make_patch(4, 128, np.random.default_rng(3))
    other = synth.make_patch(4, 128, np.random.default_rng(4))
    rng = np.random.default_rng(0)
    variants = [_brighten(patches.dihedral(image, k), rng) for k in patches.DIHEDRAL] + [other]
    hashes = np.stack([patches.measure(v)[0] for v in [image, *variants]])
    i = np.zeros(len(variants), dtype=np.int64)
    distance = duplicates.hash_distance(hashes, i, np.arange(1, len(variants) + 1))
    assert distance[:-1].max() <= 0.1, distance
    assert distance[-1] > 0.25  # an unrelated patch of the same class
    descriptors = np.stack([patches.measure(v)[1] for v in [image, *variants]])
    assert np.linalg.norm(descriptors[1:-1] - descriptors[0], axis=1).max() < 0.05


def test_clusters_join_chains_and_number_by_first_row():
    cluster = duplicates.clusters(7, np.array([5, 1, 2]), np.array([6, 2, 3]))
    assert cluster.tolist() == [-1, 0, 0, 0, -1, 1, 1]


@pytest.mark.slow
def test_leaked_copies_of_test_patches_are_found(leaked, measurement):
    root, result, planted, seconds = leaked
    found = {(d["a"], d["b"]) for d in result["duplicates"] if d["split_a"] != d["split_b"]}
    every = {frozenset((d["a"], d["b"])) for d in result["duplicates"]}
    hits = found & set(planted)
    recall = len(hits) / len(planted)
    precision = len(hits) / max(len(found), 1)
    precision_all = len({frozenset(p) for p in planted} & every) / max(len(every), 1)
    measurement(f"near-duplicates: {len(planted)} leaked copies (flip/rotation + brightness/contrast + shift <= 1 %) "
                f"among 740 patches of 128 px: recall {recall:.3f}, precision {precision:.3f} across splits, "
                f"{precision_all:.3f} over all {len(every)} reported pairs; audit {seconds:.1f} s")
    assert recall >= 0.95
    assert precision >= 0.9 and precision_all >= 0.9
    first = result["duplicates"][0]
    assert (first["split_a"], first["split_b"]) == ("train", "test")  # cross-split pairs first, a = training patch
    assert result["summary"]["cross_split_pairs"] == len(found)


# ---------------------------------------------------------------- acting on it

@pytest.mark.slow
def test_cleaned_and_grouped_copies_leave_the_original_unchanged(leaked):
    root, result, planted, _ = leaked
    original = store.load(root, "leaky")
    before = snapshot(original.folder)
    cleaned = audit.without_test_duplicates(root, "leaky", "leaky-dedup")
    grouped = audit.group_duplicates(root, "leaky", "leaky-grouped")
    assert snapshot(original.folder) == before

    leaked_names = {d["a"] for d in result["duplicates"] if (d["split_a"], d["split_b"]) == ("train", "test")}
    kept = cleaned.manifest
    assert not kept["filename"].isin(leaked_names).any()
    assert len(kept) == len(original.manifest) - len(leaked_names)
    assert (kept["split"] == "test").sum() == (original.manifest["split"] == "test").sum()  # test never touched
    assert cleaned.info["source"]["derived_from"]["dataset"] == "leaky"

    groups = grouped.manifest.set_index("filename")["group"]
    for copy_name, test_name in planted:
        if (copy_name, test_name) in {(d["a"], d["b"]) for d in result["duplicates"]}:
            assert groups[copy_name] == groups[test_name]
    with pytest.raises(UserError, match="never modified"):
        audit.group_duplicates(root, "leaky", "leaky")
    with pytest.raises(UserError, match="already exists"):
        audit.without_test_duplicates(root, "leaky", "leaky-dedup")


@pytest.mark.slow
def test_grouped_copy_keeps_clusters_on_one_side_of_the_validation_split(tmp_path):
    from ddsm_core.tasks import get_task
    from ddsm_core.training import split_train_val

    rng = np.random.default_rng(1)
    images, table = synth.generate(300, 128, 1, "train")
    test_images, test = synth.generate(60, 128, 1, "test")
    for k in range(30):  # each a training patch and two copies of it, under patients of their own
        for copy in range(2):
            name = f"P_{80001 + 2 * (2 * k + copy):05d}_RIGHT_MLO_1.png"
            images.append(leaked_copy(images[k], rng))
            table.loc[len(table)] = [name, int(table["y"].iloc[k]), name[:7], False, "MLO",
                                     int(table["breast_density"].iloc[k])]
    write_source(tmp_path / "src", {"train": (images, table), "test": (test_images, test)})
    root = tmp_path / "workspace"
    import_source(root, "copies", tmp_path / "src")
    found = audit.run_audit(root, "copies", workers=1, log=lambda *_: None)
    grouped = audit.group_duplicates(root, "copies", "copies-grouped")
    clusters = [c["filenames"] for c in found["clusters"]]
    assert sum(len(c) == 3 for c in clusters) >= 27
    for before, manifest in ((True, store.load(root, "copies").manifest), (False, grouped.manifest)):
        rows = split_train_val(get_task(0).select(manifest), 0.25, seed=0).set_index("filename")["subset"]
        straddling = sum(rows.reindex(members).nunique() > 1 for members in clusters)
        assert (straddling > 0) == before  # patch-level groups split clusters; merged groups never do


def test_actions_need_a_current_audit(tmp_path):
    parts, _ = plant_copies(40, 20, 64, copies=2)
    write_source(tmp_path / "src", parts)
    root = tmp_path / "workspace"
    import_source(root, "small", tmp_path / "src")
    with pytest.raises(UserError, match="not been audited"):
        audit.without_test_duplicates(root, "small", "small-dedup")
    assert not (root / "datasets" / "small-dedup").exists()


# ---------------------------------------------------------------- label errors

@pytest.mark.slow
def test_flipped_training_labels_are_among_the_top_issues(tmp_path, measurement):
    images, table = synth.generate(2000, 64, 2, "train")
    test_images, test = synth.generate(100, 64, 2, "test")
    rng = np.random.default_rng(2)
    k = 60  # 3 % of the training labels, each changed to another class
    flipped = rng.choice(len(table), k, replace=False)
    table.loc[flipped, "y"] = (table.loc[flipped, "y"] + rng.integers(1, 5, k)) % 5
    write_source(tmp_path / "src", {"train": (images, table), "test": (test_images, test)})
    root = tmp_path / "workspace"
    import_source(root, "noisy-labels", tmp_path / "src")
    result = audit.run_audit(root, "noisy-labels", workers=2, log=lambda *_: None)
    ranking = audit.label_ranking(root, "noisy-labels")
    planted = set(table["filename"].iloc[flipped])
    top = set(ranking["filename"].head(2 * k))
    recall = len(top & planted) / k
    flagged = {issue["filename"] for issue in result["label_issues"]}
    measurement(f"label errors: {k} of 2000 training labels flipped; recall among the top {2 * k} ranked "
                f"{recall:.3f}; find_label_issues flagged {len(flagged)}, {len(flagged & planted) / k:.3f} of the planted")
    assert recall >= 0.6
    assert ranking["score"].is_monotonic_increasing
    scores = [issue["score"] for issue in result["label_issues"]]
    assert scores == sorted(scores)  # most likely first
    truth = dict(zip(table["filename"], table["y"]))
    assert all(issue["given"] == SOURCE_LABELS[truth[issue["filename"]]] for issue in result["label_issues"])


# ---------------------------------------------------------------- shortcut probe

def _frame(image: np.ndarray, width: int = 3) -> np.ndarray:
    framed = image.copy()
    framed[:width], framed[-width:], framed[:, :width], framed[:, -width:] = 2, 2, 2, 2
    return framed


@pytest.mark.slow
@pytest.mark.parametrize("planted", [True, False])
def test_properties_only_auc_is_high_with_a_border_shortcut_and_near_half_without(tmp_path, planted, measurement):
    """Task 4's two classes drawn from one generator (no real difference); with `planted`, every malignant
    calcification gets a thin black frame (film padding)."""
    parts = {}
    for split, n in (("train", 300), ("test", 100)):
        images, table = synth.generate(n, 64, 5, split)
        calcifications = np.flatnonzero(table["y"].isin([1, 3]).to_numpy())
        for position, row in enumerate(calcifications):
            table.loc[row, "y"] = 3 if position % 2 else 1
            images[row] = synth.make_patch(1, 64, np.random.default_rng([5, split == "test", int(row)]))
            if planted and position % 2:
                images[row] = _frame(images[row])
        parts[split] = (images, table)
    write_source(tmp_path / "src", parts)
    root = tmp_path / "workspace"
    import_source(root, "probe", tmp_path / "src")
    probe = audit.run_audit(root, "probe", workers=1, log=lambda *_: None)["shortcut"]["4"]
    measurement(f"shortcut probe, task 4 {'with' if planted else 'without'} a planted border: properties-only "
                f"AUC {probe['auc']:.3f} (95 % CI {probe['ci'][0]:.3f}-{probe['ci'][1]:.3f}, n={probe['n']})")
    if planted:
        assert probe["auc"] > 0.9
    else:
        assert 0.35 <= probe["auc"] <= 0.65


# ---------------------------------------------------------------- the command line and reuse

@pytest.mark.slow
def test_audit_json_shape_and_reuse(tmp_path):
    parts, planted = plant_copies(120, 60, 64, copies=3, seed=4)
    write_source(tmp_path / "src", parts)
    root = tmp_path / "workspace"
    import_source(root, "cli", tmp_path / "src")
    first = cli("audit", "--dataset", "cli", "--workspace", root, "--json", check=True)
    result = json.loads(first.stdout)
    assert set(result) >= {"duplicates", "label_issues", "shortcut"}
    assert result["duplicates"] and all(set(d) >= {"a", "b", "split_a", "split_b", "distance"} for d in result["duplicates"])
    filenames = set(store.load(root, "cli").manifest["filename"])
    assert all(d["a"] in filenames and d["b"] in filenames and 0 <= d["distance"] <= 1 for d in result["duplicates"])
    assert {(d["a"], d["b"]) for d in result["duplicates"]} >= set(planted)
    assert result["label_issues"] and all(
        set(i) >= {"filename", "split", "given", "suggested", "score"} for i in result["label_issues"])
    assert set(result["shortcut"]) == {str(t) for t in range(6)}
    assert all(set(entry) >= {"auc", "ci"} for entry in result["shortcut"].values())
    stored = results.patches_file(root, "cli").stat().st_mtime_ns

    second = cli("audit", "--dataset", "cli", "--workspace", root, "--json", check=True)
    assert "reused" in second.stderr
    assert json.loads(second.stdout)["duplicates"] == result["duplicates"]
    assert results.patches_file(root, "cli").stat().st_mtime_ns == stored

    import_source(root, "other", tmp_path / "src")  # a changed manifest (here: part of another's) is not reused
    changed = store.load(root, "other").manifest.head(150)
    workspace.write_parquet(root / "datasets" / "cli" / "manifest.parquet", changed)
    assert audit.load(root, "cli")["stale"]
    third = cli("audit", "--dataset", "cli", "--workspace", root, check=True)
    assert "measuring 150 patches" in third.stdout
    assert not audit.load(root, "cli")["stale"]

    refused = cli("audit", "--dataset", "nope", "--workspace", root)
    assert refused.returncode == 1 and "no dataset named 'nope'" in refused.stderr


@pytest.mark.slow
def test_cli_writes_the_cleaned_copy(tmp_path):
    parts, planted = plant_copies(80, 40, 64, copies=4, seed=6)
    write_source(tmp_path / "src", parts)
    root = tmp_path / "workspace"
    import_source(root, "d", tmp_path / "src")
    done = cli("audit", "--dataset", "d", "--workspace", root, "--dedupe-into", "d-clean",
               "--group-duplicates-into", "d-grouped", check=True)
    assert "wrote dataset 'd-clean'" in done.stdout and "wrote dataset 'd-grouped'" in done.stdout
    clean = store.load(root, "d-clean").manifest
    assert not clean["filename"].isin([copy for copy, _ in planted]).any()
    assert len(store.load(root, "d-grouped").manifest) == len(store.load(root, "d").manifest)


# ---------------------------------------------------------------- a run's findings

@pytest.mark.slow
def test_run_findings_judge_test_patches_and_set_the_model_beside_the_probe(workspace_copy):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    found = audit.run_audit(root, "synth", run_id=run_id, workers=1, log=lambda *_: None)
    metrics = workspace.read_json(root / "runs" / run_id / "metrics" / "test.json")
    assert found["shortcut"]["0"]["model_auc"] == metrics["roc_auc"]
    assert found["shortcut"]["0"]["model_ci"] == metrics["bootstrap"]["roc_auc"]
    assert "model_auc" not in found["shortcut"]["3"]
    suspects = [i for i in found["label_issues"] if i["split"] == "test"]
    predictions = pd.read_parquet(root / "runs" / run_id / "predictions" / "test.parquet")
    assert suspects and {i["filename"] for i in suspects} <= set(predictions["filename"])
    assert set(found["correlations"]) == {"dark_fraction", "saturated_block", "mean", "std", "border_fraction"}
    assert json.loads(json.dumps(found["slices"])) == metrics["slices"]  # the synthetic view and density, as evaluated
    assert audit.load(root, "synth", run_id)["stale"] is False
    (root / "runs" / run_id / "predictions" / "test.parquet").unlink()
    with pytest.raises(UserError, match="evaluate it first"):
        audit.run_audit(root, "synth", run_id=run_id, workers=1, log=lambda *_: None)


# ---------------------------------------------------------------- slices

def _slice_frames(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    filenames = [f"p{i}.png" for i in range(n)]
    predictions = pd.DataFrame({"filename": filenames, "y_true": y} | {f"p_c{c}": probs[:, c] for c in range(3)})
    density = rng.choice(["1", "2", "3", "4"], n).astype(object)
    density[:5] = None
    manifest = pd.DataFrame({"filename": filenames[::-1], "label": 0, "split": "test", "group": "g",
                             "breast_density": density[::-1], "view": rng.choice(["CC", "MLO"], n)[::-1],
                             "patient_id": [f"P{i}" for i in range(n)], "age": rng.integers(30, 90, n)})
    return predictions, manifest, probs, y, density


def test_slices_agree_with_scikit_learn():
    predictions, manifest, probs, y, density = _slice_frames()
    result = slices.compute(predictions, manifest, ["a", "b", "c"], min_size=30, n_boot=50)
    assert set(result["columns"]) == {"breast_density", "view"}  # patient_id, age: too many values; standard ones skipped
    entries = {e["value"]: e for e in result["columns"]["breast_density"]}
    assert list(entries) == ["1", "2", "3", "4", slices.MISSING]
    for value in ["1", "2", "3", "4"]:
        mask = density == value
        pred = probs[mask].argmax(axis=1)
        assert entries[value]["n"] == mask.sum()
        assert entries[value]["accuracy"] == pytest.approx(accuracy_score(y[mask], pred))
        assert entries[value]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[mask], pred))
        assert entries[value]["roc_auc"] == pytest.approx(roc_auc_score(y[mask], probs[mask], multi_class="ovr"))
        low, high = entries[value]["accuracy_ci"]
        assert low <= entries[value]["accuracy"] <= high
    small = entries[slices.MISSING]
    assert small["n"] == 5 and small["accuracy"] is None and "fewer than 30" in small["note"]
    json.dumps(result)


def test_slices_need_every_predicted_patch_in_the_manifest():
    predictions, manifest, *_ = _slice_frames(50)
    with pytest.raises(ValueError, match="not in the manifest"):
        slices.compute(predictions, manifest.iloc[1:], ["a", "b", "c"])
    with pytest.raises(ValueError, match="one p_"):
        slices.compute(predictions.drop(columns=["p_c2"]), manifest, ["a", "b", "c"])
    assert slices.compute(predictions, manifest.drop(columns=["breast_density", "view"]), ["a", "b", "c"])["columns"] == {}


def test_a_slice_without_a_class_has_no_auc():
    predictions, manifest, probs, y, _ = _slice_frames(200)
    manifest = manifest.set_index("filename").loc[predictions["filename"]].reset_index()
    manifest["view"] = np.where(y == 0, "CC", "MLO")
    entry = {e["value"]: e for e in slices.compute(predictions, manifest, ["a", "b", "c"], n_boot=20)["columns"]["view"]}
    assert entry["CC"]["roc_auc"] is None and "AUC undefined" in entry["CC"]["note"]
    assert entry["CC"]["accuracy"] is not None


# ---------------------------------------------------------------- review-queue reasons

def test_review_queue_reasons_read_the_stored_audit():
    from ddsm_core import review_queue

    predictions = pd.DataFrame({"filename": ["t1", "t2", "t3"], "y_true": [0, 1, 0], "y_pred": [0, 0, 0],
                                "confidence": [0.9, 0.6, 0.8], "p_a": [0.9, 0.6, 0.8], "p_b": [0.1, 0.4, 0.2]})
    found = {"label_issues": [{"filename": "t2", "split": "test", "given": "b", "suggested": "a", "score": 0.1,
                               "source": "run r"},
                              {"filename": "x9", "split": "train", "given": "a", "suggested": "b", "score": 0.2,
                               "source": "cross-validation"}],
             "duplicates": [{"a": "tr5", "b": "t3", "split_a": "train", "split_b": "test", "distance": 0.05},
                            {"a": "tr6", "b": "t3", "split_a": "train", "split_b": "test", "distance": 0.02},
                            {"a": "tr7", "b": "t1", "split_a": "train", "split_b": "train", "distance": 0.01}]}
    context = review_queue.QueueContext(["p_a", "p_b"], ["a", "b"], extra={"audit": found})
    errors = review_queue.rank(predictions, "likely label error", context)
    assert errors["filename"].tolist() == ["t2"] and "looks like a" in errors["why"].iloc[0]
    duplicated = review_queue.rank(predictions, "cross-split duplicate", context)
    assert duplicated["filename"].tolist() == ["t3"]  # t1's pair is within one split
    assert "tr6" in duplicated["why"].iloc[0] and duplicated["score"].iloc[0] == pytest.approx(0.98)
    bare = review_queue.QueueContext(["p_a", "p_b"], ["a", "b"])
    assert review_queue.rank(predictions, "cross-split duplicate", bare).empty  # no audit: nothing queued


# ---------------------------------------------------------------- the Data page

def _fake_evaluated_run(root: Path, dataset: str, seed: int = 0) -> str:
    """A completed, evaluated run without training: predictions that mostly agree with the truth."""
    from ddsm_core import runs
    from ddsm_core.config import RunConfig
    from ddsm_core.evaluation import predictions_frame
    from ddsm_core.metrics import compute_metrics
    from ddsm_core.tasks import get_task

    run_id = runs.create_run(root, RunConfig(dataset=dataset, task=0, backbone="small_cnn", epochs=1, image_size=32))
    data, task = store.load(root, dataset), get_task(0)
    rows = task.select(data.manifest)
    rows = rows[rows["split"] == "test"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(rows), 5)) + 2.5 * np.eye(5)[rows["target"]]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = predictions_frame(rows, data.absolute_paths(rows), probs, task)
    workspace.write_parquet(runs.predictions_file(root, run_id, "test"), frame)
    metrics = compute_metrics(frame["y_true"].to_numpy(), probs, task.class_names) | {"checkpoint_sha256": "fake"}
    workspace.write_json(runs.metrics_file(root, run_id, "test"), metrics)
    runs.write_status(root, run_id, state="completed", epoch=1)
    return run_id


@pytest.mark.slow
def test_data_page_runs_the_audit_job_and_shows_its_findings(tmp_path, monkeypatch, measurement):
    from streamlit.testing.v1 import AppTest

    parts, planted = plant_copies(150, 200, 64, copies=3, seed=8)
    rng = np.random.default_rng(8)
    for _, table in parts.values():
        table["breast_density"] = rng.integers(1, 5, len(table))
        table["view"] = table["filename"].str.extract(r"_(CC|MLO)_")[0]
    write_source(tmp_path / "src", parts)
    root = tmp_path / "workspace"
    import_source(root, "meta", tmp_path / "src")
    run_id = _fake_evaluated_run(root, "meta")

    monkeypatch.setenv("DDSM_WORKSPACE", str(root))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=120)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page("pages/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("not been audited" in info.value for info in at.info)
    at.button(key="audit_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("progress"), "the job's progress bar is shown while it runs"
    started = time.perf_counter()
    while audit.job_state(root, "meta")["state"] == "running" and time.perf_counter() - started < 600:
        time.sleep(1)
    state = audit.job_state(root, "meta")
    assert state["state"] == "completed", state
    measurement(f"Data page audit job ({len(store.load(root, 'meta').manifest)} patches, with run): "
                f"{time.perf_counter() - started:.1f} s")
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    shortcut = next(e.value for e in at.dataframe if "properties-only AUC" in e.value.columns)
    assert shortcut["task"].tolist() == list(range(6))
    assert shortcut.loc[0, "model AUC"] == pytest.approx(workspace.read_json(
        root / "runs" / run_id / "metrics" / "test.json")["roc_auc"], abs=1e-3)
    captions = [caption for image in at.get("image") for caption in image.captions]
    pairs = audit.load(root, "meta", run_id)["duplicates"]
    assert len({(d["a"], d["b"]) for d in pairs} & set(planted)) >= 2
    for pair in pairs[:6]:  # the first page of pairs, side by side
        assert f"{pair['a']} (train)" in captions and f"{pair['b']} (test)" in captions
    assert any("suggested" in caption for caption in captions)  # label-issue tiles
    chart = at.get("plotly_chart")
    slices_chart = [c for c in chart if "breast_density" in c.proto.spec]
    assert slices_chart, "the slice chart is drawn"
    assert sorted(json.loads(slices_chart[0].proto.spec)["data"][0]["x"]) == ["1", "2", "3", "4"]

    at.text_input(key="audit_dedupe_name").input("meta-clean").run()
    at.button(key="audit_dedupe").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("meta-clean" in s.value for s in at.success)
    clean = store.load(root, "meta-clean").manifest
    assert not clean["filename"].isin([d["a"] for d in pairs if d["split_b"] == "test"]).any()
    assert len(clean) < len(store.load(root, "meta").manifest)


def test_nullable_integer_metadata_slices_like_plain_integers():
    """Importers store integer metadata with gaps (breast density of a normal patch) as pandas' nullable Int64."""
    predictions, manifest, *_ = _slice_frames(120)
    numbers = pd.to_numeric(manifest["breast_density"])  # float64, NaN for the five missing
    plain = slices.compute(predictions, manifest.assign(breast_density=numbers), ["a", "b", "c"], n_boot=20)
    nullable = slices.compute(predictions, manifest.assign(breast_density=numbers.astype("Int64")), ["a", "b", "c"],
                              n_boot=20)
    entries = nullable["columns"]["breast_density"]
    assert [e["value"] for e in entries] == [1, 2, 3, 4, slices.MISSING] and entries[-1]["n"] == 5
    assert [{k: v for k, v in e.items() if k != "value"} for e in entries] == \
        [{k: v for k, v in e.items() if k != "value"} for e in plain["columns"]["breast_density"]]
    json.dumps(entries)
