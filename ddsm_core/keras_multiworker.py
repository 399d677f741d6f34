"""A workaround for Keras 3 under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388).

It calls and replaces private Keras names, so it holds only for the Keras it was
written and tested against (WRITTEN_FOR, which the keras pin in requirements.txt
must match). On another version it refuses with the reason rather than patch
names that may have moved or changed meaning, and before patching it checks that
every name it touches exists (missing_names).
"""
from __future__ import annotations

import importlib
from importlib import metadata

WRITTEN_FOR = "3.15"  # major.minor of the Keras whose private names this patches
ISSUE = "https://github.com/tensorflow/tensorflow/issues/72388"
PRIVATE_NAMES = ("keras.src.trainers.trainer.Trainer._symbolic_build",  # called
                 "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._maybe_symbolic_build",  # replaced
                 "keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker")  # replaced


def installed_version() -> str:
    return metadata.version("keras")  # without importing keras (and TensorFlow with it)


def check_version() -> None:
    """Raise RuntimeError, saying why and what to check, unless the installed Keras is WRITTEN_FOR.x."""
    version = installed_version()
    if version.split(".")[:2] == WRITTEN_FOR.split("."):
        return
    raise RuntimeError(
        f"multi-worker training needs Keras {WRITTEN_FOR}.x, but Keras {version} is installed: it works around "
        f"Keras 3's incompatibility with MultiWorkerMirroredStrategy ({ISSUE}) by calling and replacing the "
        f"private names {', '.join(PRIVATE_NAMES)}. Install the pinned keras (requirements.txt), or check on that "
        f"issue whether Keras {version} fixed it (then drop ddsm_core/keras_multiworker.py) or still has these "
        f"names with the same meaning (then raise WRITTEN_FOR and run the multi-worker test in "
        f"tests/test_training.py).")


def missing_names() -> list[str]:
    """Those of PRIVATE_NAMES the installed Keras does not have (a patch release may move one)."""
    return [name for name in PRIVATE_NAMES if not _resolves(name)]


def _resolves(dotted: str) -> bool:
    """Whether a dotted name (module path, then attributes) exists, importing only the module part."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def prepare_fit(model, dataset, strategy) -> None:
    """Make model.fit work under MultiWorkerMirroredStrategy; two private spots:

    - fit() builds the metrics from a first batch by reducing a tuple of
      per-replica values, which that strategy rejects: build them here from one
      local batch, so that step has nothing left to do.
    - fit() reduces each scalar log with axis=0, which fails on scalars: the
      logs are already synchronised across workers by then, so each worker
      takes its local value instead.
    """
    check_version()
    if missing := missing_names():
        raise RuntimeError(f"multi-worker training cannot work around {ISSUE}: this Keras has no {', '.join(missing)}")
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(dataset)))
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    keras_tf_trainer._collective_all_reduce_multi_worker = lambda strategy: False
