"""The six tasks: rows kept, class order and label mapping, on a generated dataset."""
import pandas as pd
import pytest

from ddsm_core import synth
from ddsm_core.data import noise
from ddsm_core.errors import UserError
from ddsm_core.tasks import TASKS, get_task

EXPECTED = {
    0: (["normal", "benign calcification", "benign mass", "malignant calcification", "malignant mass"], None),
    1: (["normal", "benign calcification", "benign mass", "malignant calcification", "malignant mass"], None),
    2: (["benign calcification", "benign mass", "malignant calcification", "malignant mass"], {1, 2, 3, 4}),
    3: (["normal", "abnormal"], None),
    4: (["benign calcification", "malignant calcification"], {1, 3}),
    5: (["benign mass", "malignant mass"], {2, 4}),
}


@pytest.fixture(scope="module")
def manifest():
    images, table = synth.generate(300, 64, seed=3, split="train")
    stats = pd.DataFrame([noise.patch_stats(image) for image in images])
    frame = pd.DataFrame({"label": table["y"], "split": "train", "background": table["background"]})
    frame = pd.concat([frame, stats], axis=1)
    frame["noisy"] = noise.flag_noisy(frame)
    return frame


@pytest.mark.parametrize("task_id", list(TASKS))
def test_task_classes_and_counts(manifest, task_id):
    task = get_task(task_id)
    names, kept_labels = EXPECTED[task_id]
    assert task.class_names == names
    rows = task.select(manifest)
    counts = manifest["label"].value_counts()
    if task_id == 1:
        dropped = manifest[(manifest["label"] == 0) & manifest["noisy"]]
        assert len(dropped) > 0, "the generator plants noisy normals for task 1 to remove"
        assert len(rows) == len(manifest) - len(dropped)
        assert not rows["noisy"][rows["label"] == 0].any()
    elif kept_labels is None:
        assert len(rows) == len(manifest)
    else:
        assert set(rows["label"]) == kept_labels
        assert len(rows) == sum(counts[label] for label in kept_labels)
    # targets are output indices in class order, and each maps back to its source labels
    assert sorted(rows["target"].unique()) == list(range(task.n_classes))
    for out, (_, labels) in enumerate(task.classes):
        assert set(rows.loc[rows["target"] == out, "label"]) <= set(labels)
    if task_id == 3:
        assert (rows["target"] == (rows["label"] > 0).astype(int)).all()


def test_missing_classes_named(manifest):
    no_malignant_mass = manifest[manifest["label"] != 4]
    assert get_task(5).missing_classes(no_malignant_mass, "train") == ["malignant mass"]
    assert get_task(0).missing_classes(manifest, "train") == []


def test_unknown_task_refused():
    with pytest.raises(UserError, match="unknown task 6"):
        get_task(6)
