"""Evaluation: stored predictions and metrics equal scikit-learn's, no repeated inference, one input for
grayscale and RGB files, and mixed-precision agreement."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from ddsm_core import runs, workspace
from ddsm_core.data import store
from ddsm_core.errors import UserError
from ddsm_core.evaluation import evaluate_run, probability_columns
from ddsm_core.tasks import get_task
from support import cli, errors

pytestmark = pytest.mark.slow


def stored(root, run_id, split="test"):
    frame = pd.read_parquet(runs.predictions_file(root, run_id, split))
    return frame, workspace.read_json(runs.metrics_file(root, run_id, split))


def probabilities(frame, task_id):
    return frame[probability_columns(get_task(task_id))].to_numpy()


@pytest.mark.parametrize("which", ["run_t0", "run_t5"])
def test_metrics_equal_scikit_learn_on_the_stored_predictions(trained_workspace, which):
    root, run_id = trained_workspace.root, getattr(trained_workspace, which)
    task_id = runs.read_config(root, run_id)["task"]
    frame, result = stored(root, run_id)
    y, probs = frame["y_true"].to_numpy(), probabilities(frame, task_id)
    k = probs.shape[1]
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (frame["y_pred"] == probs.argmax(axis=1)).all() and (frame["confidence"] == probs.max(axis=1)).all()
    y_pred = frame["y_pred"].to_numpy()
    cm = skm.confusion_matrix(y, y_pred, labels=range(k))
    assert result["confusion_matrix"] == cm.tolist()
    normalized = np.array(result["confusion_matrix_normalized"])
    assert np.allclose(normalized.sum(axis=1)[cm.sum(axis=1) > 0], 1, atol=1e-12)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, y_pred), abs=1e-9)
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, y_pred), abs=1e-9)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, y_pred, labels=range(k), zero_division=0)
    for i, row in enumerate(result["per_class"]):
        assert row["class"] == get_task(task_id).class_names[i]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]), abs=1e-9)
    if k == 2:
        assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-9)
        assert result["pr_auc"] == pytest.approx(skm.average_precision_score(y, probs[:, 1]), abs=1e-9)
        assert result["sensitivity"] == pytest.approx(cm[1, 1] / cm[1].sum(), abs=1e-9)
        assert result["specificity"] == pytest.approx(cm[0, 0] / cm[0].sum(), abs=1e-9)
    else:
        assert result["roc_auc"] == pytest.approx(
            skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(k)), abs=1e-9)
        assert result["sensitivity"] is None
    low, high = result["bootstrap"]["accuracy"]
    assert low <= result["accuracy"] <= high
    assert 0 <= result["ece"] <= 1 and len(result["reliability"]) == 10
    assert json.dumps(result, allow_nan=False)


def test_second_evaluation_of_the_same_checkpoint_does_no_inference(workspace_copy, monkeypatch):
    import ddsm_core.evaluation as evaluation

    root, run_id = workspace_copy.root, workspace_copy.run_t0
    parquet = runs.predictions_file(root, run_id, "test")
    before = parquet.stat().st_mtime_ns
    monkeypatch.setattr(evaluation, "predict", lambda *a, **k: pytest.fail("inference ran again"))
    result = cli("evaluate", "--workspace", root, "--run", run_id, check=True)
    assert "already belong to this best checkpoint; nothing to do" in result.stdout
    assert evaluate_run(root, run_id, log=lambda _: None).skipped
    assert parquet.stat().st_mtime_ns == before


def test_a_changed_checkpoint_is_evaluated_again(workspace_copy):
    import keras

    from ddsm_core.models import custom_objects

    root, run_id = workspace_copy.root, workspace_copy.run_t0
    best = runs.best_checkpoint(root, run_id)
    model = keras.models.load_model(best, custom_objects=custom_objects())
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(best)
    _, old = stored(root, run_id)
    evaluation = evaluate_run(root, run_id, log=lambda _: None)
    assert not evaluation.skipped
    assert evaluation.metrics["checkpoint_sha256"] != old["checkpoint_sha256"]


def test_validation_split_and_final_checkpoint(workspace_copy):
    root, run_id = workspace_copy.root, workspace_copy.run_t0
    evaluation = evaluate_run(root, run_id, split="val", checkpoint="final", log=lambda _: None)
    split = pd.read_parquet(runs.split_file(root, run_id))
    assert len(evaluation.predictions) == (split["subset"] == "val").sum()
    assert evaluation.metrics["checkpoint"] == "final"
    assert runs.metrics_file(root, run_id, "val").is_file()


def test_moved_image_files_are_named(workspace_copy, tmp_path):
    root, run_id = workspace_copy.root, workspace_copy.run_t5
    config = runs.read_config(root, run_id)
    manifest_path = workspace.dataset_dir(root, config["dataset"]) / "manifest.parquet"
    manifest = pd.read_parquet(manifest_path)
    manifest["path"] = manifest["path"].str.replace("test_images", "moved_away", regex=False)
    manifest.to_parquet(manifest_path)
    runs.metrics_file(root, run_id, "test").unlink()
    result = cli("evaluate", "--workspace", root, "--run", run_id)
    assert result.returncode == 1
    assert "image file(s) of dataset 'synth' are missing (moved or deleted?)" in errors(result)[0]


def test_grayscale_and_rgb_files_give_identical_model_input(trained_workspace, tmp_path):
    """The seed suspected RGB conversion of wrecking test accuracy: here both files give one tensor."""
    from ddsm_core.config import RunConfig
    from ddsm_core.data.pipeline import decode_patch
    from ddsm_core.inference import load_for_inference, predict

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(80, 80), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB").save(tmp_path / "rgb.png")
    for size in (None, 32, 64):
        one = decode_patch(str(tmp_path / "gray.png"), size).numpy()
        three = decode_patch(str(tmp_path / "rgb.png"), size).numpy()
        assert one.shape[-1] == 1 and np.array_equal(one, three)
    assert np.array_equal(decode_patch(str(tmp_path / "gray.png"), None).numpy()[..., 0], gray)
    root, run_id = trained_workspace.root, trained_workspace.run_t0
    config = RunConfig.from_dict(runs.read_config(root, run_id))
    model = load_for_inference(runs.best_checkpoint(root, run_id), config, "float32", False)
    probs = predict(model, [str(tmp_path / "gray.png"), str(tmp_path / "rgb.png")], config.image_size, 2)
    assert np.array_equal(probs[0], probs[1])


@pytest.fixture(scope="module")
def confident_run(trained_workspace, tmp_path_factory):
    """A run trained long enough to be confident: an untrained model's near-uniform outputs flip their
    argmax on any rounding, which says nothing about a precision's agreement on a real model."""
    from ddsm_core.config import RunConfig
    from ddsm_core.runs import create_run
    from ddsm_core.training import train_run

    root = tmp_path_factory.mktemp("confident")
    shutil.copytree(trained_workspace.root / "datasets", root / "datasets")
    run_id = create_run(root, RunConfig(dataset="synth", task=0, backbone="small_cnn", epochs=12, image_size=64,
                                        batch_size=16, lr=1e-3, precision="float32"))
    train_run(root, run_id, log=lambda _: None)
    return root, run_id


def test_mixed_precision_and_xla_agree_with_float32(confident_run, measurement):
    from ddsm_core.config import RunConfig
    from ddsm_core.inference import load_for_inference, predict

    root, run_id = confident_run
    config = RunConfig.from_dict(runs.read_config(root, run_id))
    # every patch of the dataset, so one flipped patch moves the rate by well under half a percent
    dataset = store.load(root, config.dataset)
    rows = get_task(config.task).select(dataset.manifest)
    paths = dataset.absolute_paths(rows)
    best = runs.best_checkpoint(root, run_id)
    reference = predict(load_for_inference(best, config, "float32", False), paths, config.image_size, 32)
    xla = predict(load_for_inference(best, config, "float32", True), paths, config.image_size, 32)
    bf16 = predict(load_for_inference(best, config, "mixed_bfloat16", False), paths, config.image_size, 32)
    xla_agree = (xla.argmax(1) == reference.argmax(1)).mean()
    bf16_agree = (bf16.argmax(1) == reference.argmax(1)).mean()
    # bfloat16 keeps about three significant digits: only near-ties may flip
    top_two = np.sort(reference, axis=1)[:, -2:]
    clear = (top_two[:, 1] - top_two[:, 0]) > BF16_MARGIN
    clear_agree = (bf16.argmax(1) == reference.argmax(1))[clear].mean()
    accuracy = (reference.argmax(1) == rows["target"].to_numpy()).mean()
    measurement(f"argmax agreement with float32 on a trained small_cnn (accuracy {accuracy:.1%}, "
                f"{len(paths)} patches): XLA {xla_agree:.2%}, mixed_bfloat16 {bf16_agree:.2%} "
                f"({clear_agree:.2%} where float32's top two differ by more than {BF16_MARGIN}), "
                f"largest probability difference {np.abs(bf16 - reference).max():.4f}")
    assert xla_agree == 1.0
    assert clear.mean() > 0.5 and clear_agree == 1.0
    assert bf16_agree >= 0.95


BF16_MARGIN = 0.1


def test_unknown_run_refused(trained_workspace):
    with pytest.raises(UserError, match="no run 'nope'"):
        evaluate_run(trained_workspace.root, "nope")


def test_metrics_per_metadata_slice_are_stored_with_the_evaluation(trained_workspace):
    """The seed CSV's metadata columns (view, breast density) become slices, computed from the stored predictions."""
    from ddsm_core import slices

    root, run_id = trained_workspace.root, trained_workspace.run_t0
    frame, result = stored(root, run_id)
    manifest = store.load(root, "synth").manifest
    assert set(result["slices"]["columns"]) == {"view", "breast_density"}
    views = {entry["value"]: entry for entry in result["slices"]["columns"]["view"]}
    assert set(views) == {"CC", "MLO"} and sum(entry["n"] for entry in views.values()) == len(frame)
    for view, entry in views.items():
        chosen = frame[frame["filename"].map(manifest.set_index("filename")["view"]) == view]
        assert entry["accuracy"] == pytest.approx((chosen["y_true"] == chosen["y_pred"]).mean(), abs=1e-9)
    assert result["slices"] == json.loads(json.dumps(slices.compute(frame, manifest, get_task(0).class_names)))


def test_an_evaluation_stored_before_slices_gets_them_without_inference(trained_workspace):
    from ddsm_core.evaluation import evaluate_run

    root, run_id = trained_workspace.root, trained_workspace.run_t0
    _, result = stored(root, run_id)
    older = {key: value for key, value in result.items() if key != "slices"}
    workspace.write_json(runs.metrics_file(root, run_id, "test"), older)
    evaluation = evaluate_run(root, run_id, log=lambda *_: None)
    assert evaluation.skipped  # the checkpoint is unchanged: no inference
    assert stored(root, run_id)[1]["slices"] == result["slices"]


def test_the_evaluator_works_unfrozen_on_a_tensorflow_it_was_not_checked_on(monkeypatch):
    """Freezing uses a TensorFlow-internal function, only on the checked versions; elsewhere the plain
    concrete function gives the same probabilities."""
    import tensorflow as tf

    from ddsm_core import inference
    from ddsm_core.models import build_classifier

    monkeypatch.setattr(inference, "FROZEN_ON_TF", tf.__version__)  # this TensorFlow freezes, whichever it is
    model = build_classifier("small_cnn", 5, 32)
    batch = tf.constant(np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32) * 255)
    frozen = np.asarray(inference.inference_function(model, 32)(batch))
    monkeypatch.setattr(inference, "FROZEN_ON_TF", "0.0.")
    plain = np.asarray(inference.inference_function(model, 32)(batch))
    assert frozen.shape == plain.shape == (4, 5)
    assert np.allclose(frozen, plain, atol=1e-5)
