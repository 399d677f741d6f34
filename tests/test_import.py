"""Both importers: round trips of generated data, every refusal, --skip-bad, --replace, datasets --json."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ddsm_core import synth
from ddsm_core.data import store
from support import cli, edit_csv, errors, seed_csv_args, snapshot


@pytest.fixture(scope="module")
def seed_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("seed-source")
    truth = synth.write_seed_csv(source, n_train=60, n_test=30, size=48, seed=5)
    return source, truth


@pytest.fixture(scope="module")
def kaggle_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("kaggle-source")
    truth = synth.write_kaggle(source, n_train=50, n_test=30, size=48, seed=6)
    return source, truth


def expected_counts(truth: pd.DataFrame) -> dict:
    return {split: {str(label): int(((truth["split"] == split) & (truth["y"] == label)).sum()) for label in range(5)}
            for split in ("train", "test")}


def copy_source(source, tmp_path):
    target = tmp_path / "source"
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------- round trips

def test_seed_csv_round_trip(seed_source, tmp_path):
    source, truth = seed_source
    result = cli(*seed_csv_args("synth", source, tmp_path / "ws"), check=True)
    assert "imported 90 patches" in result.stdout
    listed = json.loads(cli("datasets", "--json", "--workspace", tmp_path / "ws", check=True).stdout)
    assert [entry["name"] for entry in listed] == ["synth"]
    assert listed[0]["format"] == "seed-csv"
    assert listed[0]["counts"] == expected_counts(truth)
    dataset = store.load(tmp_path / "ws", "synth")
    manifest = dataset.manifest.merge(truth.rename(columns={"patient_id": "true_patient"}), on="filename")
    assert (manifest["label"] == manifest["y"]).all()
    assert (manifest["group"] == manifest["true_patient"]).all(), "the patient_id column becomes the group"
    assert all((dataset.folder / p).is_file() for p in manifest["path"])


def test_kaggle_round_trip_joins_cv10_and_test10(kaggle_source, tmp_path):
    import tensorflow as tf

    source, truth = kaggle_source
    cli("import", "kaggle", "--workspace", tmp_path / "ws", "--name", "kag", "--source", source, check=True)
    listed = json.loads(cli("datasets", "--json", "--workspace", tmp_path / "ws", check=True).stdout)
    assert listed[0]["counts"] == expected_counts(truth)
    manifest = store.load(tmp_path / "ws", "kag").manifest
    # train comes from all five tfrecord files
    per_file = [sum(1 for _ in tf.data.TFRecordDataset(str(source / f"training10_{i}.tfrecords"))) for i in range(5)]
    assert all(n > 0 for n in per_file)
    assert (manifest["split"] == "train").sum() == sum(per_file)
    # test is cv10 (masses) + test10 (calcifications), both present
    test = manifest[manifest["split"] == "test"]
    assert len(test) == len(np.load(source / "cv10_labels.npy")) + len(np.load(source / "test10_labels.npy"))
    assert {2, 4} <= set(test["label"]) and {1, 3} <= set(test["label"])
    # groups from the P_xxxxx part of the training file names
    train = manifest[manifest["split"] == "train"]
    assert train["group"].str.match(r"^P_\d+$").all()
    assert train["group"].nunique() < len(train)
    # PNGs written inside the dataset folder equal the raw bytes
    first = train.iloc[0]
    from ddsm_core.data.images import read_gray

    assert read_gray(tmp_path / "ws" / "datasets" / "kag" / first["path"]).shape == (48, 48)


# ---------------------------------------------------------------- refusals

def damage_missing_file(source):
    (source / "train_images" / pd.read_csv(source / "train.csv")["filename"][3]).unlink()
    return "train.csv line 5", "file not found"


def damage_traversal(source):
    edit_csv(source / "train.csv", lambda f: f.__setitem__("filename", f["filename"].where(f.index != 0, "../test.csv")))
    return "train.csv line 2", "path leaves the image folder"


def damage_absolute(source):
    edit_csv(source / "test.csv", lambda f: f.__setitem__("filename", f["filename"].where(f.index != 1, "/etc/hostname")))
    return "test.csv line 3", "path leaves the image folder"


def damage_not_image(source):
    name = pd.read_csv(source / "train.csv")["filename"][15]
    (source / "train_images" / name).write_bytes(b"this is not a png")
    return "train.csv line 17", "not a decodable image"


@pytest.mark.parametrize("bad_label", ["7", "x", "2.5", "-1"])
def test_bad_label_refused(seed_source, tmp_path, bad_label):
    source = copy_source(seed_source[0], tmp_path)
    edit_csv(source / "test.csv", lambda f: f.__setitem__("y", f["y"].where(f.index != 4, bad_label)))
    assert_refused(source, tmp_path, "test.csv line 6", "is not an integer 0-4")


def damage_duplicate(source):
    edit_csv(source / "train.csv", lambda f: f.__setitem__("filename", f["filename"].where(f.index != 9, f["filename"][2])))
    return "train.csv line 11", "duplicate filename (first on line 4)"


@pytest.mark.parametrize("damage", [damage_missing_file, damage_traversal, damage_absolute, damage_not_image,
                                    damage_duplicate])
def test_bad_row_refused_and_nothing_written(seed_source, tmp_path, damage):
    source = copy_source(seed_source[0], tmp_path)
    where, reason = damage(source)
    assert_refused(source, tmp_path, where, reason)


def assert_refused(source, tmp_path, where, reason):
    workspace = tmp_path / "ws"
    cli(*seed_csv_args("existing", seed_source_clean(tmp_path), workspace), check=True)
    before = snapshot(workspace)
    result = cli(*seed_csv_args("broken", source, workspace))
    assert result.returncode == 1
    lines = errors(result)
    assert any(line.startswith(f"{where}: ") and reason in line for line in lines), lines
    assert "Traceback" not in result.stderr
    assert snapshot(workspace) == before, "a refused import must leave the workspace byte-for-byte as it was"


def seed_source_clean(tmp_path):
    clean = tmp_path / "clean"
    if not clean.exists():
        synth.write_seed_csv(clean, n_train=10, n_test=5, size=32, seed=9)
    return clean


def test_error_line_format(seed_source, tmp_path):
    source = copy_source(seed_source[0], tmp_path)
    damage_not_image(source)
    name = pd.read_csv(source / "train.csv")["filename"][15]
    result = cli(*seed_csv_args("broken", source, tmp_path / "ws"))
    assert f"error: train.csv line 17: {name}: not a decodable image" in result.stderr.splitlines()
    assert not (tmp_path / "ws").exists()


def test_same_image_in_train_and_test_refused(seed_source, tmp_path):
    source = copy_source(seed_source[0], tmp_path)
    train = pd.read_csv(source / "train.csv")
    test = pd.read_csv(source / "test.csv")
    test.loc[0, "filename"] = train.loc[0, "filename"]
    test.to_csv(source / "test.csv", index=False)
    result = cli("import", "seed-csv", "--workspace", tmp_path / "ws", "--name", "leak",
                 "--train-csv", source / "train.csv", "--train-images", source / "train_images",
                 "--test-csv", source / "test.csv", "--test-images", source / "train_images")
    assert result.returncode == 1
    assert any("also in the train split" in line for line in errors(result)), result.stderr


def test_missing_columns_and_files_named(seed_source, tmp_path):
    source = copy_source(seed_source[0], tmp_path)
    edit_csv(source / "train.csv", lambda f: f.rename(columns={"y": "label"}, inplace=True))
    result = cli(*seed_csv_args("broken", source, tmp_path / "ws"))
    assert errors(result) == [f"{source / 'train.csv'}: missing column(s) y (expected filename,y)"]
    (source / "test.csv").unlink()
    result = cli(*seed_csv_args("broken", source, tmp_path / "ws"))
    assert result.returncode == 1


def test_skip_bad_records_what_it_skipped(seed_source, tmp_path):
    source = copy_source(seed_source[0], tmp_path)
    damage_not_image(source)
    damage_missing_file(source)
    cli(*seed_csv_args("partial", source, tmp_path / "ws"), "--skip-bad", check=True)
    info = store.load(tmp_path / "ws", "partial").info
    skipped = info["import_report"]["skipped"]
    assert [(s["where"], s["reason"]) for s in skipped] == [("train.csv line 5", "file not found"),
                                                            ("train.csv line 17", "not a decodable image")]
    assert info["n_patches"] == 90 - 2


def test_existing_name_refused_then_replaced(seed_source, tmp_path):
    source, truth = seed_source
    workspace = tmp_path / "ws"
    cli(*seed_csv_args("synth", seed_source_clean(tmp_path), workspace), check=True)
    before = snapshot(workspace)
    result = cli(*seed_csv_args("synth", source, workspace))
    assert result.returncode == 1 and "already exists" in errors(result)[0] and "--replace" in errors(result)[0]
    assert snapshot(workspace) == before
    cli(*seed_csv_args("synth", source, workspace), "--replace", check=True)
    assert store.load(workspace, "synth").info["n_patches"] == 90
    assert sorted(p.name for p in (workspace / "datasets").iterdir()) == ["synth"], "no staging or old folder left"


def test_mixed_sizes_and_empty_class_reported(seed_source, tmp_path):
    from PIL import Image

    source = copy_source(seed_source[0], tmp_path)
    name = pd.read_csv(source / "train.csv")["filename"][0]
    Image.new("L", (40, 40), 120).save(source / "train_images" / name)
    edit_csv(source / "test.csv", lambda f: f.drop(f.index[f["y"] == "3"], inplace=True))
    cli(*seed_csv_args("mixed", source, tmp_path / "ws"), check=True)
    warnings = store.load(tmp_path / "ws", "mixed").info["import_report"]["warnings"]
    assert any(w.startswith("mixed image sizes: 48x48") and "40x40 (1)" in w for w in warnings), warnings
    assert "test split has no patches of class 3 (malignant calcification)" in warnings


# ---------------------------------------------------------------- kaggle refusals

def write_bad_record(path, label=7, image=b"\x00" * 100):
    import tensorflow as tf

    feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
               "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    records = [bytes(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return len(records)


def test_kaggle_bad_rows_named_and_nothing_written(kaggle_source, tmp_path):
    source = copy_source(kaggle_source[0], tmp_path)
    index = write_bad_record(source / "training10_2.tfrecords")
    labels = np.load(source / "test10_labels.npy")
    labels[1] = 9
    np.save(source / "test10_labels.npy", labels)
    workspace = tmp_path / "ws"
    result = cli("import", "kaggle", "--workspace", workspace, "--name", "kag", "--source", source)
    assert result.returncode == 1
    lines = errors(result)
    assert any(line.startswith(f"training10_2.tfrecords record {index}: ") and "not an integer 0-4" in line
               for line in lines), lines
    assert any(line.startswith("test10_labels.npy row 1: test10_00001.png: label") for line in lines), lines
    assert not workspace.exists(), "nothing may be written"


def test_kaggle_missing_files_listed(kaggle_source, tmp_path):
    source = copy_source(kaggle_source[0], tmp_path)
    (source / "training10_4.tfrecords").unlink()
    (source / "cv10_data.npy").unlink()
    result = cli("import", "kaggle", "--workspace", tmp_path / "ws", "--name", "kag", "--source", source)
    assert result.returncode == 1
    assert "missing training10_4.tfrecords, cv10_data.npy" in errors(result)[0]
