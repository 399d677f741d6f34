"""Grad-CAM: where in a patch a run's model looked, per class, cached per (run, patch).

    grad_cam(model, image, class_index) -> (H, W) float32 in [0, 1]     one map, for any loaded classifier
    explain_patch(root, run_id, filename, split="test") -> dict         maps for the predicted and true class
    explain_many(root, run_id, filenames, split="test", log=print)      the same for many, one model load
    load_cached(root, run_id, filename) -> dict | None                  what the dashboard reads
    start_job(root, run_id, filenames) / job_state(root, run_id, filename)   the dashboard's background job
    overlay(patch, heat_map, opacity) -> (H, W, 3) uint8                a jet-like colour map over the patch

A result dict holds `predicted` and `true` (uint8 maps, 0-255, the size of the
model input), `predicted_class` and `true_class` (output indices),
`predicted_name` and `true_name`, `checkpoint_sha256` and `cached`. It is cached
at runs.gradcam_file(root, run_id, filename) (runs owns the run folder's layout),
valid while the best checkpoint is the one that made it. The dashboard never
imports TensorFlow: start_job runs `python -m ddsm_core explain` detached
(ddsm_core.jobs.spawn) and job_state says whether a patch's maps are ready.

How the feature map is found (public Keras API only). A classifier from
models.build_classifier is a chain of top-level layers: input, GrayToRGB,
preprocessing, the backbone (a nested Functional model), global pooling, Dense.
The last top-level layer with a 4-D output is the backbone. Inside it the
feature map is its output, unless the backbone ends in spatial pooling (VGG16's
block5_pool, small_cnn's last max-pool): then it is the pooling's input, which
holds the same evidence at twice the resolution. The model is split there:
`features` runs the layers up to the map (the backbone part as a sub-model of
its own graph, keras.Model(backbone.inputs, map)); `head` runs the remaining
layers eagerly and returns the class scores before the softmax, which Grad-CAM
differentiates because a saturated probability has no gradient. The split is
checked once per model against model(x) on a random patch, so a classifier
laid out differently fails loudly instead of giving wrong maps.

This module imports TensorFlow and Keras only inside the functions that run a
model: `import ddsm_core.explain` and load_cached stay TF-free for the dashboard.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import processes, runs, workspace
from .config import RunConfig
from .errors import UserError
from .tasks import get_task

_SPLIT_TOLERANCE = 1e-3  # split vs whole model, on probabilities (loose enough for bfloat16 runs)


# ---------------------------------------------------------------- Grad-CAM on a loaded model

def grad_cam(model, image, class_index: int) -> np.ndarray:
    """Grad-CAM of one class on one patch: an (H, W) float32 map in [0, 1], the size of the model input.

    image: (H, W) or (H, W, 1) grey levels 0-255, as the model takes them.
    Each channel of the last convolutional feature map is weighted by the mean
    gradient of the class score over its positions; the weighted sum, clipped at
    zero, is resized to the input (bilinear) and divided by its maximum (all
    zeros when nothing speaks for the class).
    """
    maps, _ = grad_cam_function(model)(image, [class_index])
    return maps[0]


def grad_cam_function(model):
    """Split the model once; return cams(image, class_indices) -> (list of maps, class scores).

    The scores are the model's outputs before its softmax (argmax = predicted class).
    """
    import tensorflow as tf

    features, head = split_model(model)
    size = tuple(model.input_shape[1:3])

    def cams(image, class_indices):
        batch = _as_batch(image, model.input_shape[1:])
        feature_map = tf.cast(features(batch), tf.float32)  # outside the tape: only the head is differentiated
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(feature_map)
            scores = tf.cast(head(feature_map), tf.float32)[0]
            targets = [scores[int(c)] for c in class_indices]
        maps = [_weighted_map(feature_map[0], tape.gradient(target, feature_map)[0], size) for target in targets]
        return maps, scores.numpy()

    return cams


def split_model(model):
    """(features, head): features(batch) -> last conv feature map; head(map) -> class scores before softmax.

    See the module docstring for how the map is chosen. Raises ValueError when
    the model has no 4-D layer or the two parts do not reproduce the model.
    """
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    four_d = [i for i, layer in enumerate(layers) if len(layer.output.shape) == 4]
    if not four_d:
        raise ValueError(f"{model.name} has no layer with a 4-D (spatial) output for Grad-CAM")
    k = four_d[-1]
    extractor, pooling = layers[k], []
    if isinstance(extractor, keras.Model):
        feature_map, pooling = _unpooled_output(extractor)
        extractor = keras.Model(extractor.inputs, feature_map)
    before, after = layers[:k] + [extractor], pooling + layers[k + 1:]

    def features(batch):
        return _run(before, batch)

    def head(feature_map):
        return _class_scores(after[-1], _run(after[:-1], feature_map))

    _check_split(model, features, head)
    return features, head


def _unpooled_output(backbone):
    """The backbone's output before any trailing spatial pooling, and those pooling layers in order."""
    import keras

    tensor, pooling = backbone.output, []
    producers = {id(layer.output): layer for layer in backbone.layers}
    while isinstance(producers.get(id(tensor)), (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        layer = producers[id(tensor)]
        pooling.insert(0, layer)
        tensor = layer.input
    return tensor, pooling


def _run(layers, x):
    for layer in layers:
        x = layer(x, training=False)
    return x


def _ends_in_softmax(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.softmax


def _class_scores(layer, x):
    """The last layer's output before its softmax (the Dense layer's own weights, applied without it)."""
    from keras import ops

    if not _ends_in_softmax(layer):
        return layer(x, training=False)
    logits = ops.matmul(ops.cast(x, layer.kernel.dtype), layer.kernel)
    return logits + layer.bias if layer.use_bias else logits


def _check_split(model, features, head) -> None:
    from keras import ops

    problem = ValueError(f"cannot split {model.name} at its last feature map for Grad-CAM: its top-level "
                         "layers are not a single chain (input, preprocessing, backbone, head)")
    probe = np.random.default_rng(0).uniform(0, 255, (1, *model.input_shape[1:])).astype("float32")
    try:  # a branching model may not even run as a chain
        scores = head(features(probe))
    except Exception as error:
        raise problem from error
    split = ops.softmax(scores) if _ends_in_softmax(model.layers[-1]) else scores
    whole = model(probe, training=False)
    if not np.allclose(np.asarray(split, "float32"), np.asarray(whole, "float32"), atol=_SPLIT_TOLERANCE):
        raise problem


def _as_batch(image, input_shape) -> np.ndarray:
    array = np.asarray(image, dtype="float32")
    if array.ndim == 2:
        array = array[..., None]
    if array.shape != tuple(input_shape):
        raise ValueError(f"image of shape {array.shape} does not fit the model input {tuple(input_shape)}")
    return array[None]


def _weighted_map(feature_map, gradients, size) -> np.ndarray:
    import tensorflow as tf

    weights = tf.reduce_mean(gradients, axis=(0, 1))  # one weight per channel
    cam = tf.nn.relu(tf.reduce_sum(feature_map * weights, axis=-1))
    cam = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0].numpy()
    peak = cam.max()
    return (cam / peak if peak > 0 else np.zeros_like(cam)).clip(0, 1).astype(np.float32)


# ---------------------------------------------------------------- a run's patches, cached

def load_cached(root: Path, run_id: str, filename: str) -> dict | None:
    """The cached result for a patch, or None when absent or made by another checkpoint. No TensorFlow."""
    try:
        sha = _checkpoint_sha(runs.checkpoint_file(root, run_id, "best"))
    except UserError:
        return None
    return _read_cache(runs.gradcam_file(root, run_id, filename), sha, filename)


def start_job(root: Path, run_id: str, filenames, split: str = "test") -> int | None:
    """Compute the maps of `filenames` in a detached `python -m ddsm_core explain` process; return its pid.

    Unknown patches are refused first (UserError); patches already cached are
    left out, and None is returned when nothing is left to compute or the job
    running for this run already covers every patch asked for.
    """
    from . import jobs

    filenames = list(dict.fromkeys(filenames))
    _prediction_rows(root, run_id, filenames, split)
    runs.checkpoint_file(root, run_id, "best")  # refuses a run that has not finished an epoch
    wanted = [name for name in filenames if load_cached(root, run_id, name) is None]
    job = workspace.read_json(runs.explain_job_file(root, run_id)) or {}
    if not wanted or (processes.pid_alive(job.get("pid")) and set(wanted) <= set(job.get("filenames") or [])):
        return None
    args = ["explain", "--run", run_id, "--split", split, "--workspace", root]
    args += [f"--filename={name}" for name in wanted]  # the = form: a filename may start with a dash
    process = jobs.spawn(args, runs.explain_log(root, run_id))
    workspace.write_json(runs.explain_job_file(root, run_id),
                         {"pid": process.pid, "filenames": wanted, "split": split, "started": runs.now()})
    return process.pid


def job_state(root: Path, run_id: str, filename: str) -> dict:
    """{'state': cached|running|failed|none, 'message': ...}: where one patch's maps are. No TensorFlow."""
    if load_cached(root, run_id, filename) is not None:
        return {"state": "cached", "message": ""}
    job = workspace.read_json(runs.explain_job_file(root, run_id)) or {}
    if filename not in (job.get("filenames") or []):
        return {"state": "none", "message": ""}
    if processes.pid_alive(job.get("pid")):
        return {"state": "running", "message": f"computing Grad-CAM since {job.get('started')}"}
    if load_cached(root, run_id, filename) is not None:  # the job finished between the two looks
        return {"state": "cached", "message": ""}
    from .review import log_tail

    tail = log_tail(runs.explain_log(root, run_id))
    if not any(line.startswith(("error: ", "Traceback")) or "Error" in line for line in tail.splitlines()):
        return {"state": "none", "message": ""}  # it finished, and the map went stale since (a new checkpoint)
    return {"state": "failed", "message": tail}


def explain_patch(root: Path, run_id: str, filename: str, split: str = "test") -> dict:
    """Grad-CAM of one patch for its predicted and true class, from the cache when still valid.

    The patch is found by filename in the run's predictions/<split>.parquet (the
    true class and the file come from there) and read as evaluation reads it.
    """
    return explain_many(root, run_id, [filename], split, log=lambda *_: None)[0]


def explain_many(root: Path, run_id: str, filenames, split: str = "test", log=print) -> list[dict]:
    """explain_patch for each filename, in order, loading the model once and only if a map is missing.

    Every filename is checked first: unknown ones are refused together (UserError), before any work.
    """
    config = RunConfig.from_dict(runs.read_config(root, run_id))
    class_names = get_task(config.task).class_names
    rows = _prediction_rows(root, run_id, list(filenames), split)
    checkpoint = runs.checkpoint_file(root, run_id, "best")
    sha = _checkpoint_sha(checkpoint)
    cams, results = None, []
    for i, row in enumerate(rows, 1):
        result = _read_cache(runs.gradcam_file(root, run_id, row["filename"]), sha, row["filename"])
        if result is None:
            # a checkpoint replaced after hashing only makes this entry look stale later, never wrong
            cams = cams or grad_cam_function(_load_model(checkpoint))
            result = _explain_row(cams, row, config.image_size, class_names, sha, log)
            _write_cache(runs.gradcam_file(root, run_id, row["filename"]), result, row["filename"])
        log(f"run {run_id}: Grad-CAM {i}/{len(rows)} {row['filename']}"
            f"{' (cached)' if result['cached'] else ''}")
        results.append(result)
    return results


def _prediction_rows(root: Path, run_id: str, filenames: list[str], split: str) -> list[dict]:
    import pandas as pd

    path = runs.predictions_file(root, run_id, split)
    if not path.is_file():
        raise UserError(f"run {run_id} has no {split} predictions yet: evaluate it first "
                        f"(python -m ddsm_core evaluate --run {run_id} --split {split})")
    frame = pd.read_parquet(path, columns=["filename", "path", "y_true", "y_pred"])
    by_name = frame.drop_duplicates("filename").set_index("filename", drop=False)
    unknown = [name for name in dict.fromkeys(filenames) if name not in by_name.index]
    if unknown:
        raise UserError([f"{name}: no patch with this filename in run {run_id}'s {split} predictions"
                         for name in unknown])
    return [by_name.loc[name].to_dict() for name in filenames]


def _explain_row(cams, row: dict, size: int, class_names: list[str], sha: str, log) -> dict:
    true_class = int(row["y_true"])
    image = _read_patch(row["path"], size)
    (true_map,), scores = cams(image, [true_class])
    predicted_class = int(np.argmax(scores))
    predicted_map = true_map if predicted_class == true_class else cams(image, [predicted_class])[0][0]
    if predicted_class != int(row["y_pred"]):
        log(f"note: the checkpoint now predicts {class_names[predicted_class]} for {row['filename']}, the "
            f"stored predictions say {class_names[int(row['y_pred'])]} (re-evaluate the run)")
    return {"predicted": to_uint8(predicted_map), "true": to_uint8(true_map),
            "predicted_class": predicted_class, "true_class": true_class,
            "predicted_name": class_names[predicted_class], "true_name": class_names[true_class],
            "checkpoint_sha256": sha, "cached": False}


def _read_patch(path: str, size: int) -> np.ndarray:
    """The (size, size, 1) float32 input evaluation feeds the model: the same decode and resize."""
    import tensorflow as tf

    from .data.pipeline import decode_patch

    if not Path(path).is_file():
        raise UserError(f"patch file {path} is missing (moved or deleted?): re-import the dataset with --replace")
    return decode_patch(tf.constant(str(path)), size).numpy()


def _load_model(checkpoint: Path):
    import keras

    from .models import custom_objects

    return keras.models.load_model(checkpoint, custom_objects=custom_objects(), compile=False)


def to_uint8(heat_map: np.ndarray) -> np.ndarray:
    """A [0, 1] map as 0-255 (what the cache stores and results carry)."""
    return np.round(np.clip(heat_map, 0, 1) * 255).astype(np.uint8)


_STORED = ("predicted", "true", "predicted_class", "true_class", "predicted_name", "true_name",
           "checkpoint_sha256")


def _write_cache(path: Path, result: dict, filename: str) -> None:
    arrays = {key: np.asarray(result[key]) for key in _STORED} | {"filename": np.asarray(filename)}
    workspace.atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


def _read_cache(path: Path, sha: str, filename: str) -> dict | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        if not set(_STORED) <= set(stored.files) or str(stored["checkpoint_sha256"]) != sha \
                or str(stored["filename"]) != filename:
            return None
        values = {key: stored[key] for key in _STORED}
    return {"predicted": values["predicted"], "true": values["true"],
            "predicted_class": int(values["predicted_class"]), "true_class": int(values["true_class"]),
            "predicted_name": str(values["predicted_name"]), "true_name": str(values["true_name"]),
            "checkpoint_sha256": sha, "cached": True}


def _checkpoint_sha(path: Path) -> str:
    """file_sha256, remembered per file version: the dashboard asks on every rerun, a checkpoint is ~100 MB."""
    stat = Path(path).stat()
    return _sha_of_version(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha_of_version(path: str, inode: int, size: int, mtime_ns: int) -> str:
    return workspace.file_sha256(Path(path))


# ---------------------------------------------------------------- drawing (numpy only)

def overlay(patch: np.ndarray, heat_map: np.ndarray, opacity: float) -> np.ndarray:
    """The heat map in a jet-like colour map (blue cold, red hot) blended over a grey patch.

    patch: (H, W) uint8; heat_map: uint8 0-255 of any size (stretched to the
    patch: the model input is the patch resized, so this undoes it); opacity in
    [0, 1], 0 gives the patch itself as RGB. Returns (H, W, 3) uint8.
    """
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be between 0 and 1, not {opacity}")
    patch = np.asarray(patch)
    heat = _resize_bilinear(np.asarray(heat_map, dtype=np.float32) / 255.0, patch.shape[:2])
    grey = np.repeat(patch[..., None].astype(np.float32), 3, axis=-1)
    blended = (1 - opacity) * grey + opacity * 255.0 * jet(heat)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB in [0, 1]: dark blue, blue, cyan, yellow, red, dark red (piecewise linear)."""
    t = np.clip(values, 0, 1)[..., None] * 4
    centres = np.array([3.0, 2.0, 1.0])  # where red, green and blue peak on the 0-4 scale
    return np.clip(1.5 - np.abs(t - centres), 0, 1)


def _resize_bilinear(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D array with pixel centres aligned (as tf.image.resize does)."""
    for axis, new in enumerate(shape):
        old = array.shape[axis]
        if old == new:
            continue
        position = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, old - 1)
        weight = (position - low).reshape([-1 if a == axis else 1 for a in range(array.ndim)])
        array = np.take(array, low, axis=axis) * (1 - weight) + np.take(array, high, axis=axis) * weight
    return array
