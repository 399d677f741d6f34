"""The synthetic DDSM-like generator and its two source-format writers."""
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ddsm_core import synth
from ddsm_core.errors import UserError

FILENAME = re.compile(r"^P_\d{5}_(LEFT|RIGHT)_(CC|MLO)_\d+\.png$")


@pytest.fixture(scope="module")
def train_set():
    return synth.generate(300, 64, seed=5, split="train")


@pytest.fixture(scope="module")
def test_set():
    return synth.generate(100, 64, seed=5, split="test")


# ---------------------------------------------------------------- determinism, shapes


def test_make_patch_is_deterministic_and_seed_dependent():
    for label in range(5):
        a = synth.make_patch(label, 96, np.random.default_rng(1))
        b = synth.make_patch(label, 96, np.random.default_rng(1))
        c = synth.make_patch(label, 96, np.random.default_rng(2))
        assert a.dtype == np.uint8 and a.shape == (96, 96)
        assert a.tobytes() == b.tobytes()
        assert a.tobytes() != c.tobytes()


def test_generate_is_deterministic():
    images_a, table_a = synth.generate(12, 48, seed=3, split="train")
    images_b, table_b = synth.generate(12, 48, seed=3, split="train")
    images_c, _ = synth.generate(12, 48, seed=4, split="train")
    images_t, _ = synth.generate(12, 48, seed=3, split="test")
    pd.testing.assert_frame_equal(table_a, table_b)
    assert b"".join(i.tobytes() for i in images_a) == b"".join(i.tobytes() for i in images_b)
    assert b"".join(i.tobytes() for i in images_a) != b"".join(i.tobytes() for i in images_c)
    assert b"".join(i.tobytes() for i in images_a) != b"".join(i.tobytes() for i in images_t)


def test_shapes_and_table(train_set):
    images, table = train_set
    assert len(images) == len(table) == 300
    assert all(i.shape == (64, 64) and i.dtype == np.uint8 for i in images)
    assert list(table.columns) == ["filename", "y", "patient_id", "background", "view", "breast_density"]
    assert table["background"].dtype == bool
    assert (table["view"] == table["filename"].str.split("_").str[3]).all()
    assert set(table["breast_density"]) <= {1, 2, 3, 4}
    assert (table.groupby("patient_id")["breast_density"].nunique() == 1).all(), "one density per patient"
    assert set(table["y"]) == {0, 1, 2, 3, 4}


def test_class_mix(train_set):
    _, table = train_set
    shares = table["y"].value_counts(normalize=True).sort_index()
    assert shares[0] == pytest.approx(0.40, abs=0.02)
    for label in range(1, 5):
        assert shares[label] == pytest.approx(0.15, abs=0.02)
    assert (table["y"].iloc[:100] == 0).mean() < 0.7  # shuffled, not in class blocks


@pytest.mark.parametrize("n", [5, 6, 7, 9, 13])
def test_every_class_present_from_five(n):
    _, table = synth.generate(n, 32, seed=0, split="train")
    assert set(table["y"]) == {0, 1, 2, 3, 4}


def test_background_only_on_normals(train_set):
    _, table = train_set
    assert not table.loc[table["y"] != 0, "background"].any()
    share = table.loc[table["y"] == 0, "background"].mean()
    assert 0.2 <= share <= 0.3


def test_filenames_and_patients(train_set, test_set):
    train, test = train_set[1], test_set[1]
    both = pd.concat([train, test])
    assert both["filename"].is_unique
    assert both["filename"].map(lambda f: bool(FILENAME.match(f))).all()
    assert (both["filename"].str[:7] == both["patient_id"]).all()  # the P_xxxxx prefix is the patient

    for table in (train, test):
        sizes = table.groupby("patient_id").size()
        assert sizes.between(2, 6).all()
        assert len(sizes) >= len(table) / 6
    assert not set(train["patient_id"]) & set(test["patient_id"])


# ---------------------------------------------------------------- the signal is there


def _centre_minus_surround(img):
    s = img.shape[0]
    c = img[s // 3 : 2 * s // 3, s // 3 : 2 * s // 3].mean()
    ring = np.concatenate([img[: s // 8].ravel(), img[-s // 8 :].ravel(), img[:, : s // 8].ravel(), img[:, -s // 8 :].ravel()])
    return c - ring.mean()


def _bright_components(img, level=230):
    """Count 8-connected components of pixels >= level (pure Python flood fill; specks are small)."""
    mask = img >= level
    seen = np.zeros_like(mask)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny in range(max(0, cy - 1), min(mask.shape[0], cy + 2)):
                for nx in range(max(0, cx - 1), min(mask.shape[1], cx + 2)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


@pytest.fixture(scope="module")
def by_class():
    rng = np.random.default_rng(42)
    return {label: [synth.make_patch(label, 128, rng).astype(float) for _ in range(30)] for label in range(5)}


def test_masses_have_a_brighter_centre(by_class):
    normal = np.mean([_centre_minus_surround(i) for i in by_class[0]])
    for label in (2, 4):
        lesion = np.array([_centre_minus_surround(i) for i in by_class[label]])
        assert lesion.mean() > normal + 15
        assert (lesion > 5).mean() >= 0.9


def test_calcifications_are_bright_specks(by_class):
    normal = [_bright_components(i) for i in by_class[0]]
    benign = [_bright_components(i) for i in by_class[1]]
    malignant = [_bright_components(i) for i in by_class[3]]
    assert max(normal) == 0  # tissue never reaches calcification brightness
    assert min(benign) >= 1 and np.mean(benign) <= 4
    assert np.mean(malignant) >= 6  # a cluster of many specks (some touch and merge)
    assert np.mean(malignant) > 2 * np.mean(benign)


def test_calcifications_are_small_and_masses_are_not_saturated(by_class):
    for label in (1, 3):
        bright = np.mean([(i >= 230).mean() for i in by_class[label]])
        assert 0.0005 < bright < 0.03
    for label in (2, 4):
        assert np.mean([(i >= 245).mean() for i in by_class[label]]) < 0.01


# ---------------------------------------------------------------- writers


def test_write_seed_csv_layout(tmp_path):
    truth = synth.write(tmp_path, "seed-csv", n_train=12, n_test=7, size=48, seed=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv", "test_images", "train.csv", "train_images"]
    assert list(truth.columns) == ["filename", "y", "patient_id", "background", "view", "breast_density", "split"]
    for split, n in (("train", 12), ("test", 7)):
        table = pd.read_csv(tmp_path / f"{split}.csv")
        written = ["filename", "y", "patient_id", "view", "breast_density"]
        assert list(table.columns) == written
        assert len(table) == n
        assert sorted(p.name for p in (tmp_path / f"{split}_images").iterdir()) == sorted(table["filename"])
        images, expected = synth.generate(n, 48, seed=9, split=split)
        pd.testing.assert_frame_equal(table, expected[written])
        for name, img in zip(table["filename"], images):
            with Image.open(tmp_path / f"{split}_images" / name) as png:
                assert png.mode == "L" and png.format == "PNG"
                assert np.array_equal(np.asarray(png), img)  # lossless


def _read_tfrecords(paths):
    import tensorflow as tf

    spec = {
        "label": tf.io.FixedLenFeature([], tf.int64),
        "label_normal": tf.io.FixedLenFeature([], tf.int64),
        "image": tf.io.FixedLenFeature([], tf.string),
        "filename": tf.io.FixedLenFeature([], tf.string),
    }
    dataset = tf.data.TFRecordDataset([str(p) for p in paths]).map(lambda r: tf.io.parse_single_example(r, spec))
    return [{k: v.numpy() for k, v in rec.items()} for rec in dataset]


def test_write_kaggle_layout(tmp_path):
    size = 40
    truth = synth.write(tmp_path, "kaggle", n_train=23, n_test=40, size=size, seed=2)
    shards = [f"training10_{i}.tfrecords" for i in range(5)]
    arrays = ["cv10_data.npy", "cv10_labels.npy", "test10_data.npy", "test10_labels.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(shards + arrays)

    train_truth = truth[truth["split"] == "train"].set_index("filename")
    images, _ = synth.generate(23, size, seed=2, split="train")
    by_name = dict(zip(train_truth.index, images))
    seen = []
    for shard in shards:
        records = _read_tfrecords([tmp_path / shard])
        assert records, f"{shard} is empty"
        for rec in records:
            name = rec["filename"].decode()
            assert rec["label"] == train_truth.loc[name, "y"]
            assert rec["label_normal"] == int(rec["label"] != 0)
            image = np.frombuffer(rec["image"], np.uint8)
            assert image.size == size * size  # raw size x size x 1 bytes
            assert np.array_equal(image.reshape(size, size), by_name[name])
            seen.append(name)
    assert sorted(seen) == sorted(train_truth.index)

    cv_x, cv_y = np.load(tmp_path / "cv10_data.npy"), np.load(tmp_path / "cv10_labels.npy")
    te_x, te_y = np.load(tmp_path / "test10_data.npy"), np.load(tmp_path / "test10_labels.npy")
    for x, y in ((cv_x, cv_y), (te_x, te_y)):
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (size, size, 1)
        assert y.dtype == np.int64 and len(x) == len(y) > 0
    assert set(cv_y) == {0, 2, 4}
    assert set(te_y) == {0, 1, 3}
    assert len(cv_y) + len(te_y) == 40

    test_truth = truth[truth["split"] == "test"]
    for stem, y in (("cv10", cv_y), ("test10", te_y)):
        rows = test_truth[test_truth["filename"].str.startswith(stem + "_")]
        assert list(rows["filename"]) == [f"{stem}_{j:05d}.png" for j in range(len(y))]
        assert np.array_equal(rows["y"].to_numpy(), y)


def test_write_rejects_bad_arguments(tmp_path):
    for kwargs in (
        {"fmt": "dicom", "n_train": 5, "n_test": 5},
        {"fmt": "kaggle", "n_train": 0, "n_test": 5},
        {"fmt": "seed-csv", "n_train": 5, "n_test": 0},
        {"fmt": "seed-csv", "n_train": 5, "n_test": 5, "size": 16},
    ):
        with pytest.raises(UserError) as info:
            synth.write(tmp_path, **kwargs)
        assert len(info.value.problems) == 1
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_generate_rejects_unknown_split():
    with pytest.raises(UserError):
        synth.generate(5, 32, seed=0, split="validation")
