"""Grad-CAM: the heat peaks on the one bright spot a model learned; every backbone gives a map; the
per-(run, patch) cache is reused, invalidated by a new checkpoint and read without TensorFlow; overlay."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ddsm_core import explain, runs
from ddsm_core.errors import UserError
from ddsm_core.models import BACKBONES
from support import PROJECT, cli_env

SIZE, SPOT = 48, 5  # small_cnn's last conv map is 6x6 here: one cell per 8 pixels
# the spot's half-width plus half a feature-map cell: Grad-CAM cannot place the heat more finely
HIT_RADIUS = SPOT // 2 + 4


def spot_images(n: int, rng: np.random.Generator):
    """Grey noise (0-200); every odd image carries a 5x5 spot of 255 at a random place: the only signal."""
    images = np.clip(rng.normal(100, 25, (n, SIZE, SIZE, 1)), 0, 200).astype("float32")
    labels = np.arange(n) % 2
    centres = rng.integers(SPOT // 2, SIZE - SPOT // 2, (n, 2))
    for image, label, (row, col) in zip(images, labels, centres, strict=True):
        if label:
            image[row - SPOT // 2:row + SPOT // 2 + 1, col - SPOT // 2:col + SPOT // 2 + 1] = 255
    return images, labels, centres


def heat_peak(heat_map: np.ndarray) -> np.ndarray:
    """Centre of mass of the hottest 5% of the map (steadier than one argmax pixel on an upsampled map)."""
    hot = heat_map >= np.quantile(heat_map, 0.95)
    rows, cols = np.nonzero(hot)
    weights = heat_map[hot]
    return np.array([rows @ weights, cols @ weights]) / weights.sum()


@pytest.fixture(scope="module")
def spot_model():
    import keras

    from ddsm_core.models import build_classifier

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels, _ = spot_images(400, rng)
    model = build_classifier("small_cnn", 2, SIZE, weights="none")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images, labels, epochs=5, batch_size=32, verbose=0)
    return model, spot_images(40, rng)


@pytest.mark.slow
def test_the_heat_peaks_on_the_bright_spot(spot_model, measurement):
    model, (images, labels, centres) = spot_model
    accuracy = float(np.mean(model.predict(images, verbose=0).argmax(axis=1) == labels))
    assert accuracy >= 0.9, f"the spot model did not learn the task (test accuracy {accuracy:.2f})"
    cams = explain.grad_cam_function(model)
    spots = centres[labels == 1]
    peaks = np.array([heat_peak(cams(image, [1])[0][0]) for image in images[labels == 1]])
    distances = np.hypot(*(peaks - spots).T)
    # control: the same peaks against another image's spot, so the criterion can tell a miss
    chance = np.hypot(*(peaks - np.roll(spots, 1, axis=0)).T)
    hit_rate, chance_rate = np.mean(distances <= HIT_RADIUS), np.mean(chance <= HIT_RADIUS)
    measurement(f"Grad-CAM spot test: heat peak within {HIT_RADIUS} px of the spot on {hit_rate:.0%} of "
                f"{len(spots)} spot images (median {np.median(distances):.1f} px; another image's spot: "
                f"{chance_rate:.0%}); test accuracy {accuracy:.2f}")
    assert hit_rate >= 0.8, f"peaks {np.round(distances, 1)} px from the spot"
    assert chance_rate <= 0.3


@pytest.mark.slow
def test_grad_cam_equals_the_independent_grad_cam_formula(spot_model):
    """The map is relu(sum_k mean(dy_c/dA_k) A_k), resized and scaled, with y_c the pre-softmax score."""
    import tensorflow as tf

    model, (images, labels, _) = spot_model
    image = images[labels == 1][0]
    feature_model, _ = explain.split_model(model)
    feature_map = tf.convert_to_tensor(feature_model(image[None]))
    dense = model.layers[-1]
    with tf.GradientTape() as tape:
        tape.watch(feature_map)
        pooled = tf.reduce_max(tf.reshape(feature_map, (1, 3, 2, 3, 2, -1)), axis=(2, 4))  # the last max-pool
        score = (tf.reduce_mean(pooled, axis=(1, 2)) @ dense.kernel + dense.bias)[0, 1]
    weights = tf.reduce_mean(tape.gradient(score, feature_map)[0], axis=(0, 1))
    cam = tf.nn.relu(tf.reduce_sum(feature_map[0] * weights, axis=-1))
    expected = tf.image.resize(cam[..., None], (SIZE, SIZE))[..., 0].numpy()
    assert np.allclose(explain.grad_cam(model, image, 1), expected / expected.max(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gives_a_map(name):
    """Right size, finite, in [0, 1]; the map before the backbone's trailing pooling, if any; and without
    pooling in between, Grad-CAM reduces to CAM: relu(A . W[:, c]) (Selvaraju et al., section 3.1)."""
    import tensorflow as tf

    from ddsm_core.models import build_classifier

    size = 64
    model = build_classifier(name, 3, size, weights="none")
    image = np.random.default_rng(1).uniform(0, 255, (size, size))
    feature_map = np.asarray(explain.split_model(model)[0](image[None, ..., None].astype("float32")))[0]
    pooled = name in ("vgg16", "small_cnn")  # their backbones end in a max-pool
    assert feature_map.shape[0] == size // (16 if name == "vgg16" else 8 if name == "small_cnn" else 32)
    cam = np.maximum(feature_map @ np.asarray(model.layers[-1].kernel), 0)  # (h, w, classes)
    class_index = int(cam.max(axis=(0, 1)).argmax())
    heat_map = explain.grad_cam(model, image, class_index)
    assert heat_map.shape == (size, size) and heat_map.dtype == np.float32
    assert np.isfinite(heat_map).all() and heat_map.min() >= 0 and heat_map.max() <= 1
    if not pooled and cam.max() > 0:
        expected = tf.image.resize(cam[..., class_index, None], (size, size))[..., 0].numpy()
        assert np.allclose(heat_map, expected / expected.max(), atol=1e-4)


def test_a_model_that_is_not_a_chain_is_refused():
    import keras

    inputs = keras.Input((8, 8, 3))
    residual = keras.layers.Add()([keras.layers.Conv2D(3, 3, padding="same")(inputs), inputs])
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(residual))
    with pytest.raises(ValueError, match="not a single chain"):
        explain.grad_cam(keras.Model(inputs, outputs), np.zeros((8, 8, 3)), 0)


# ---------------------------------------------------------------- a run's patches and the cache

def stored_predictions(root, run_id) -> pd.DataFrame:
    return pd.read_parquet(runs.predictions_file(root, run_id, "test"))


def resave_checkpoint(root, run_id) -> None:
    """A new best checkpoint: the same model with a changed head bias (new bytes, new predictions)."""
    import keras

    from ddsm_core.models import custom_objects

    path = runs.best_checkpoint(root, run_id)
    model = keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    dense = model.layers[-1]
    dense.bias.assign(dense.bias + np.arange(dense.units, dtype="float32"))
    model.save(path)


@pytest.mark.slow
def test_explain_patch_computes_then_reuses_the_cache(workspace_copy, monkeypatch):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    row = stored_predictions(root, run_id).iloc[0]
    size = runs.read_config(root, run_id)["image_size"]
    assert explain.load_cached(root, run_id, row["filename"]) is None
    first = explain.explain_patch(root, run_id, row["filename"])
    assert not first["cached"] and runs.gradcam_file(root, run_id, row["filename"]).is_file()
    assert runs.gradcam_file(root, run_id, row["filename"]).parent == runs.folder(root, run_id) / "gradcam"
    for key in ("predicted", "true"):
        assert first[key].shape == (size, size) and first[key].dtype == np.uint8
    assert first["true_class"] == row["y_true"] and first["predicted_class"] == row["y_pred"]
    assert first["true"].max() in (0, 255)  # scaled to its maximum before quantising

    monkeypatch.setattr(explain, "grad_cam_function", lambda model: pytest.fail("the model ran again"))
    second = explain.explain_patch(root, run_id, row["filename"])
    assert second["cached"]
    assert explain.load_cached(root, run_id, row["filename"])["cached"]
    for key in ("predicted", "true"):
        assert np.array_equal(first[key], second[key])
    assert {k: v for k, v in first.items() if k not in ("predicted", "true", "cached")} == \
        {k: v for k, v in second.items() if k not in ("predicted", "true", "cached")}


@pytest.mark.slow
def test_a_new_checkpoint_invalidates_the_cache(workspace_copy):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    filename = stored_predictions(root, run_id)["filename"].iloc[1]
    before = explain.explain_patch(root, run_id, filename)
    resave_checkpoint(root, run_id)
    assert explain.load_cached(root, run_id, filename) is None
    after = explain.explain_patch(root, run_id, filename)
    assert not after["cached"] and after["checkpoint_sha256"] != before["checkpoint_sha256"]
    assert explain.load_cached(root, run_id, filename)["checkpoint_sha256"] == after["checkpoint_sha256"]


@pytest.mark.slow
def test_explain_many_loads_the_model_once(workspace_copy, monkeypatch):
    root, run_id = workspace_copy.root, workspace_copy.run_t5
    filenames = list(stored_predictions(root, run_id)["filename"].iloc[:3])
    loads, load = [], explain._load_model
    monkeypatch.setattr(explain, "_load_model", lambda path: loads.append(path) or load(path))
    lines = []
    results = explain.explain_many(root, run_id, filenames, log=lines.append)
    assert len(loads) == 1 and not any(r["cached"] for r in results) and len(lines) == 3
    again = explain.explain_many(root, run_id, filenames[::-1], log=lines.append)
    assert len(loads) == 1 and all(r["cached"] for r in again)
    assert [r["true_class"] for r in again] == [r["true_class"] for r in results][::-1]


@pytest.mark.slow
def test_unknown_patches_and_unevaluated_splits_are_refused_before_any_work(workspace_copy, monkeypatch):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    known = stored_predictions(root, run_id)["filename"].iloc[0]
    monkeypatch.setattr(explain, "_load_model", lambda path: pytest.fail("loaded a model"))
    with pytest.raises(UserError) as error:
        explain.explain_many(root, run_id, [known, "nope.png", "nada.png"])
    assert [line.split(":")[0] for line in error.value.problems] == ["nope.png", "nada.png"]
    assert not (runs.folder(root, run_id) / "gradcam").exists()
    with pytest.raises(UserError, match="no val predictions yet"):
        explain.explain_patch(root, run_id, known, split="val")


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(),
                            cwd=PROJECT, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


TF_LOADED = "print(' '.join(m for m in ('tensorflow', 'keras') if m in sys.modules) or 'none')"


def test_importing_explain_keeps_tensorflow_out():
    assert run_python(f"import sys, ddsm_core.explain; {TF_LOADED}") == "none"


@pytest.mark.slow
def test_load_cached_reads_without_tensorflow(workspace_copy):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    filename = stored_predictions(root, run_id)["filename"].iloc[2]
    expected = explain.explain_patch(root, run_id, filename)
    out = run_python(f"import sys; from ddsm_core import explain; "
                     f"r = explain.load_cached({str(root)!r}, {run_id!r}, {filename!r}); "
                     f"print(r['cached'], r['predicted_class'], int(r['predicted'].sum())); {TF_LOADED}")
    assert out.splitlines() == [f"True {expected['predicted_class']} {int(expected['predicted'].sum())}", "none"]


# ---------------------------------------------------------------- overlay

def test_overlay_blends_a_colour_map_over_the_patch():
    patch = np.random.default_rng(2).integers(0, 256, (20, 30)).astype(np.uint8)
    heat = np.zeros((10, 10), np.uint8)
    heat[:5, :5] = 255  # hot top-left quarter, at the model's (smaller) size
    image = explain.overlay(patch, heat, 0.5)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert np.array_equal(explain.overlay(patch, heat, 0.0), np.repeat(patch[..., None], 3, axis=-1))
    full = explain.overlay(patch, heat, 1.0).astype(int)
    assert np.array_equal(full[0, 0], [128, 0, 0]) and np.array_equal(full[-1, -1], [0, 0, 128])  # hot red, cold blue
    with pytest.raises(ValueError):
        explain.overlay(patch, heat, 1.5)


def test_the_colour_map_runs_blue_cyan_yellow_red():
    colours = explain.jet(np.array([0.0, 0.375, 0.625, 1.0]))
    assert np.allclose(colours, [[0, 0, 0.5], [0, 1, 1], [1, 1, 0], [0.5, 0, 0]])
