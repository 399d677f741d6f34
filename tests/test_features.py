"""Fast retrains on a CPU: the feature cache for head runs, learning-rate defaults that learn, precision
`auto` recorded per run, 8-bit patch caching and the memory refusal."""
import json

import numpy as np
import pandas as pd
import pytest

from ddsm_core import evaluation, features, hardware, inference, runs, synth
from ddsm_core.config import LR_FINE_TUNE, LR_FROM_SCRATCH, RunConfig, check_settings, default_lr
from ddsm_core.data.seed_csv import import_seed_csv
from ddsm_core.errors import UserError
from ddsm_core.training import train_and_evaluate
from support import cli, errors, snapshot

pytestmark = pytest.mark.slow
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A workspace with a synthetic seed-csv dataset `s` (1000 training, 300 test patches at 64 px; task 4 keeps
    360 training and 90 test patches of them)."""
    root, source = tmp_path_factory.mktemp("ws"), tmp_path_factory.mktemp("src")
    synth.write_seed_csv(source, n_train=1000, n_test=300, size=64, seed=5)
    import_seed_csv(root, "s", source / "train.csv", source / "train_images", source / "test.csv",
                    source / "test_images")
    return root


def head_config(task: int, **overrides) -> RunConfig:
    return RunConfig(**{"dataset": "s", "task": task, "backbone": "small_cnn", "epochs": 4, "image_size": 48,
                        "fine_tune": "head", "seed": 3} | overrides)


def train(root, config: RunConfig) -> str:
    run_id = runs.create_run(root, config)
    assert train_and_evaluate(root, run_id, **QUIET) == "completed"
    return run_id


# ---------------------------------------------------------------- the feature cache

def test_head_runs_share_one_feature_cache_across_tasks(root, measurement):
    first = train(root, head_config(0))
    caches = features.list_caches(root)
    assert len(caches) == 1 and caches[0]["n_patches"] == 1300 and caches[0]["dim"] == 96
    built = caches[0]["created"]
    second = train(root, head_config(5))
    after = features.list_caches(root)
    assert [c["name"] for c in after] == [caches[0]["name"]] and after[0]["created"] == built  # reused, not rebuilt
    for run_id in (first, second):
        history = pd.read_csv(runs.history_file(root, run_id))
        assert len(history) == 4 and (history["seconds"] > 0).all()
        assert runs.read_config(root, run_id)["feature_cache"] is True
    n_train = len(pd.read_parquet(runs.split_file(root, second)).query("subset == 'train'"))
    measurement(f"head epoch on cached small_cnn features: {history['seconds'].median():.2f} s for {n_train} patches")


def test_best_checkpoint_is_the_full_classifier_and_agrees_with_the_cached_head(root):
    """The run's best.keras takes patches, like any run's; on the test images it predicts what the head
    predicted from the cached features (float16 features: the same classes, probabilities within 1e-2)."""
    run_id = train(root, head_config(3))
    config = RunConfig.from_dict(runs.read_config(root, run_id))
    stored = evaluation.evaluate_run(root, run_id, **QUIET)
    assert stored.metrics["inputs"] == "feature cache"
    dataset, rows = evaluation.split_rows(root, run_id, config, "test")
    infer = inference.load_for_inference(runs.best_checkpoint(root, run_id), config, "float32")
    from_images = inference.predict(infer, dataset.absolute_paths(rows), config.image_size, 64)
    from_cache = stored.predictions[evaluation.probability_columns(get_task(3))].to_numpy()
    assert from_images.shape == from_cache.shape == (len(rows), 2)
    assert np.abs(from_images - from_cache).max() < 1e-2
    assert (from_images.argmax(1) == from_cache.argmax(1)).mean() >= 0.97


def get_task(task_id):
    from ddsm_core.tasks import get_task as lookup

    return lookup(task_id)


def test_cache_follows_its_inputs_and_is_listed_and_removed_from_the_cli(root, tmp_path):
    config = head_config(0, image_size=40)
    inputs = features.cache_inputs(root, config, "float32")
    assert features.find(root, inputs) is None
    cache = features.ensure(root, config, "float32", **QUIET)
    assert features.find(root, inputs).folder == cache.folder
    for changed in ({"image_size": 44}, {"seed": 4}, {"backbone": "mobilenetv3small"}):
        other = features.cache_inputs(root, head_config(0, **changed), "float32")
        assert features.cache_name(other) != cache.folder.name
    listed = json.loads(cli("features", "list", "--json", "--workspace", root, check=True).stdout)
    assert cache.folder.name in [entry["name"] for entry in listed]
    assert not any(entry["stale"] for entry in listed)
    refused = cli("features", "remove", "no-such-cache", "--workspace", root)
    assert refused.returncode == 1 and "no feature cache named 'no-such-cache'" in errors(refused)[0]
    removed = cli("features", "remove", cache.folder.name, "--workspace", root, check=True)
    assert f"removed feature cache {cache.folder.name}" in removed.stdout
    assert not cache.folder.exists() and features.find(root, inputs) is None


def test_a_reimported_dataset_makes_its_caches_stale(tmp_path):
    root, source = tmp_path / "ws", tmp_path / "src"
    synth.write_seed_csv(source, n_train=60, n_test=20, size=32, seed=1)
    args = ("s", source / "train.csv", source / "train_images", source / "test.csv", source / "test_images")
    import_seed_csv(root, *args)
    features.ensure(root, head_config(0, image_size=32), "float32", **QUIET)
    import_seed_csv(root, *args, replace=True)  # the same content: the cache still holds
    assert [entry["stale"] for entry in features.list_caches(root)] == [False]
    pd.read_csv(source / "train.csv").iloc[1:].to_csv(source / "train.csv", index=False)
    import_seed_csv(root, *args, replace=True)
    entries = features.list_caches(root)
    assert [entry["stale"] for entry in entries] == [True]
    assert features.remove(root, stale=True) == [entries[0]["name"]] and features.list_caches(root) == []


def test_augmentation_on_cached_features_is_refused_in_one_sentence():
    problems = check_settings(head_config(0, augment=True))
    assert len(problems) == 1 and "augmentation cannot apply to cached features" in problems[0]
    assert check_settings(head_config(0, augment=True, feature_cache=False)) == []


# ---------------------------------------------------------------- defaults that learn

def test_default_learning_rates():
    assert default_lr(RunConfig("d", 0, "small_cnn")) == LR_FROM_SCRATCH
    assert default_lr(RunConfig("d", 0, "resnet50", weights="imagenet", fine_tune="head")) == LR_FROM_SCRATCH
    assert default_lr(RunConfig("d", 0, "resnet50", weights="imagenet", fine_tune="full")) == LR_FINE_TUNE
    assert default_lr(RunConfig("d", 0, "resnet50", weights="/w.h5")) == LR_FINE_TUNE


def test_small_cnn_without_lr_learns_on_a_few_hundred_patches(root, measurement):
    """The seed's pain: 1e-4 from scratch learned nothing in 8 epochs. With no --lr the default must learn
    (task 4, calcification benign vs malignant, 288 training patches, 90 unseen test patches)."""
    result = cli("train", "--workspace", root, "--dataset", "s", "--task", "4", "--backbone", "small_cnn",
                 "--epochs", "8", "--image-size", "64", "--precision", "float32", check=True, timeout=900)
    run_id = result.stdout.strip().splitlines()[-1]
    config = runs.read_config(root, run_id)
    assert config["lr"] == LR_FROM_SCRATCH and config["lr_default"] is True
    auc = json.loads(runs.metrics_file(root, run_id, "test").read_text())["roc_auc"]
    measurement(f"small_cnn, default lr {LR_FROM_SCRATCH:g}, 8 epochs, task 4: test AUC {auc:.3f}")
    assert auc > 0.8


def test_reduce_on_plateau_and_early_stopping_are_recorded(root):
    run_id = train(root, head_config(0, epochs=30, lr=0.5, reduce_lr_patience=1, early_stop_patience=3,
                                     monitor="val_loss"))
    config = runs.read_config(root, run_id)
    assert (config["reduce_lr_patience"], config["early_stop_patience"]) == (1, 3)
    history = pd.read_csv(runs.history_file(root, run_id))
    assert history["lr"].iloc[0] == pytest.approx(0.5) and history["lr"].min() < 0.5  # halved on a plateau
    assert len(history) < 30 and runs.read_status(root, run_id)["stopped_early"] is True


# ---------------------------------------------------------------- precision per machine

AMX = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
PLAIN = "flags\t\t: fpu sse2 avx avx2 fma\n"


def test_precision_auto_is_decided_by_the_machine_and_recorded(root, monkeypatch):
    for flags, gpus, expected in ((AMX, 0, "mixed_bfloat16"), (PLAIN, 0, "float32"), (PLAIN, 1, "mixed_float16")):
        assert hardware.choose_precision("auto", hardware.cpu_flags(flags), gpus) == expected
    monkeypatch.setattr(hardware, "choose_precision", lambda requested, *a, **k: "float32"
                        if requested == "auto" else requested)
    run_id = train(root, head_config(0, epochs=1))
    config = runs.read_config(root, run_id)
    assert (config["precision_requested"], config["precision"]) == ("auto", "float32")


# ---------------------------------------------------------------- memory

def test_uint8_cache_gives_the_model_the_same_patches(root):
    from ddsm_core.data import store
    from ddsm_core.data.pipeline import decode_patch_uint8, make_dataset

    dataset = store.load(root, "s")
    paths = dataset.absolute_paths()[:40]
    assert decode_patch_uint8(paths[0], 48).dtype.name == "uint8"
    plain = np.concatenate([x.numpy() for x, _ in make_dataset(paths, [0] * 40, 48, 16)])
    cached = make_dataset(paths, [0] * 40, 48, 16, cache=True)
    for _ in range(2):  # the second pass reads the cache
        again = np.concatenate([x.numpy() for x, _ in cached])
        assert again.dtype == np.float32 and np.array_equal(again, plain)
    assert np.array_equal(plain, np.round(plain))  # whole grey levels: exactly what 8 bits keep


def test_a_run_that_would_not_fit_in_memory_is_refused_before_anything_is_written(root, monkeypatch):
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda *a, **k: 2_000_000_000)
    before = snapshot(root)
    with pytest.raises(UserError) as refused:
        runs.create_run(root, RunConfig("s", 0, "resnet50", image_size=299, batch_size=64, cache=True))
    sentence = refused.value.problems[0]
    assert sentence.startswith("this run needs about") and "2.0 GB of memory is available" in sentence
    assert snapshot(root) == before


def test_features_that_are_the_same_for_every_patch_are_refused():
    """mobilenetv3small with random weights pools to ~1e-10 for every patch: zero in float16, a head on them
    could only guess. The build says so instead of training at chance."""
    config = head_config(0, backbone="mobilenetv3small")
    with pytest.raises(UserError, match="the same for every patch"):
        features._refuse_constant(np.zeros((5, 576), np.float16), config)
    varied = np.zeros((5, 576), np.float16)
    varied[2, 7] = 0.5
    features._refuse_constant(varied, config)  # one feature that differs is enough
