"""The feature cache: a frozen backbone's pooled features of every patch of a dataset, computed once.

A head run (`--fine-tune head`) trains only the classifier head; the frozen
backbone gives every patch the same features in every epoch and every task, so
they are computed once per (dataset, backbone, weights, image size, precision)
with the fast evaluator and stored here, and each head run then trains in
seconds. The layout, owned by this module:

    features/<dataset>-<backbone>-<size>px-<key>/
        meta.json              the inputs that made it (its key), size, timing
        backbone.weights.h5    the backbone's weights (so a random "none" backbone is the same one later)
        features.npy           float16, one row per manifest row, in manifest order
        filenames.json         the manifest's filenames in that order (checked on use)

Any change of the inputs (a re-imported dataset, another weights file) gives
another key; `list_caches` marks caches whose dataset changed or vanished as
stale, `remove` deletes them. A cache is built in a staging folder and moved
into place with one rename, so a kill leaves no half cache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runs, workspace
from .config import RunConfig
from .data import store
from .errors import UserError
from .models import get_backbone, resolve_weights

FOLDER = "features"
META, WEIGHTS, FEATURES, FILENAMES = "meta.json", "backbone.weights.h5", "features.npy", "filenames.json"
BATCH_SIZE = 64


def cache_root(root: Path) -> Path:
    return Path(root) / FOLDER


def cache_inputs(root: Path, config: RunConfig, precision: str) -> dict:
    """Everything the features depend on; their hash is the cache's key.

    Random backbone weights ("none") depend on the seed; a weights file on its bytes.
    """
    backbone = get_backbone(config.backbone)
    weights_path = resolve_weights(backbone, config.weights)
    return {
        "dataset": config.dataset,
        "manifest_sha256": workspace.file_sha256(store.manifest_file(root, config.dataset)),
        "backbone": config.backbone,
        "weights": "none" if weights_path is None else workspace.file_sha256(weights_path),
        "seed": config.seed if weights_path is None else None,
        "image_size": config.image_size,
        "precision": precision,
    }


def cache_name(inputs: dict) -> str:
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return f"{inputs['dataset']}-{inputs['backbone']}-{inputs['image_size']}px-{key}"


@dataclass
class FeatureCache:
    folder: Path
    meta: dict

    @property
    def weights_file(self) -> Path:
        return self.folder / WEIGHTS

    def features(self) -> np.ndarray:
        """All rows (float16, memory-mapped: only the rows a run uses are read)."""
        return np.load(self.folder / FEATURES, mmap_mode="r")

    def rows_for(self, filenames) -> np.ndarray:
        """The features of these patches (by manifest filename), as float32, in the given order."""
        order = json.loads((self.folder / FILENAMES).read_text())
        index = {name: i for i, name in enumerate(order)}
        missing = [name for name in filenames if name not in index]
        if missing:
            raise UserError(f"feature cache {self.folder.name} has no features for {missing[0]} "
                            f"(and {len(missing) - 1} more): remove it and train again")
        return np.asarray(self.features()[[index[name] for name in filenames]], dtype=np.float32)


def find(root: Path, inputs: dict) -> FeatureCache | None:
    folder = cache_root(root) / cache_name(inputs)
    meta = workspace.read_json(folder / META)
    return FeatureCache(folder, meta) if meta and meta.get("inputs") == inputs else None


@contextmanager
def _build_lock(root: Path, name: str):
    """One builder per cache: a second job waits, then finds the cache built."""
    path = cache_root(root) / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(root: Path, config: RunConfig, precision: str, log=print) -> FeatureCache:
    """The cache for this run's inputs, built now if it does not exist yet."""
    inputs = cache_inputs(root, config, precision)
    name = cache_name(inputs)
    with _build_lock(root, name):
        cached = find(root, inputs)
        if cached:
            log(f"feature cache {name}: reused ({cached.meta['n_patches']} patches)")
            return cached
        workspace.recover_dirs(cache_root(root))  # what a killed build left behind
        return _build(root, config, inputs, name, log)


def _build(root: Path, config: RunConfig, inputs: dict, name: str, log) -> FeatureCache:
    import keras

    from .inference import inference_function, predict
    from .models import feature_extractor

    dataset = store.load(root, config.dataset)
    paths = dataset.absolute_paths()
    log(f"feature cache {name}: computing {config.backbone} features of {len(paths)} patches "
        f"at {config.image_size} px ({precision_text(inputs['precision'])})")
    keras.utils.set_random_seed(config.seed)  # a random ("none") backbone is reproducible from the seed
    extractor, backbone = feature_extractor(config.backbone, config.image_size, config.weights)
    staging = workspace.staging_dir(cache_root(root), name)
    try:
        started = time.perf_counter()
        infer = inference_function(extractor, config.image_size, inputs["precision"])
        features = predict(infer, paths, config.image_size, BATCH_SIZE).astype(np.float16)
        seconds = time.perf_counter() - started
        _refuse_constant(features, config)
        backbone.save_weights(str(staging / WEIGHTS))
        np.save(staging / FEATURES, features)
        workspace.write_json(staging / FILENAMES, dataset.manifest["filename"].tolist())
        workspace.write_json(staging / META, {
            "inputs": inputs, "n_patches": len(paths), "dim": int(features.shape[1]),
            "seconds": round(seconds, 2), "patches_per_second": round(len(paths) / max(seconds, 1e-9), 1),
            "created": runs.now()})
        workspace.replace_dir(staging, cache_root(root) / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"feature cache {name}: {len(paths)} patches in {seconds:.1f} s ({len(paths) / seconds:.0f} patches/s)")
    return find(root, inputs)


def _refuse_constant(features: np.ndarray, config: RunConfig) -> None:
    """A head cannot learn from features that are the same for every patch; random backbones can give such
    (mobilenetv3small's are about 1e-10, below what float16 holds), so say so instead of training at chance."""
    if len(features) > 1 and not np.ptp(features, axis=0).any():
        raise UserError(f"the {config.backbone} features ({config.weights} weights) are the same for every patch, so a "
                        "head cannot learn from them: use --weights imagenet or a weights file, or --fine-tune full")


def precision_text(precision: str) -> str:
    return "float32" if precision == "float32" else f"{precision} rewrite"


# ---------------------------------------------------------------- listing and removing

def list_caches(root: Path) -> list[dict]:
    """Every cache with its inputs, size on disk and whether it is stale (its dataset changed or vanished)."""
    base = cache_root(root)
    entries = []
    for folder in sorted(base.iterdir()) if base.exists() else []:
        meta = workspace.read_json(folder / META) if folder.is_dir() and not folder.name.startswith(".") else None
        if not meta:
            continue
        inputs = meta["inputs"]
        manifest = store.manifest_file(root, inputs["dataset"])
        stale = not manifest.exists() or workspace.file_sha256(manifest) != inputs["manifest_sha256"]
        size = sum(path.stat().st_size for path in folder.iterdir())
        entries.append({"name": folder.name, **inputs, "n_patches": meta["n_patches"], "dim": meta["dim"],
                        "bytes": size, "stale": stale, "created": meta["created"]})
    return entries


def remove(root: Path, names: list[str] | None = None, stale: bool = False) -> list[str]:
    """Delete the named caches, or every stale one; returns what was removed."""
    known = {entry["name"]: entry for entry in list_caches(root)}
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise UserError(f"no feature cache named {unknown[0]!r} (list them with: python -m ddsm_core features list)")
    chosen = list(names or []) + ([name for name, entry in known.items() if entry["stale"]] if stale else [])
    for name in dict.fromkeys(chosen):
        shutil.rmtree(cache_root(root) / name)
    return list(dict.fromkeys(chosen))
