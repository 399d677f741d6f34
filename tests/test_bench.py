"""The benchmarks' own measuring helpers (bench/eval_throughput.py): rounds that interleave, and models
whose batch norms look trained."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import eval_throughput  # noqa: E402  (bench/ is not a package)


def test_rounds_interleave_the_measures_so_neighbours_see_the_same_machine():
    calls = []
    measures = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("ceiling", "evaluator")}
    rates = eval_throughput.in_rounds(measures, rounds=3)
    assert calls == ["ceiling", "evaluator"] * 3
    assert rates == {"ceiling": [1, 3, 5], "evaluator": [2, 4, 6]}


def test_like_trained_reaches_the_batch_norms_inside_the_nested_backbone():
    import keras

    from ddsm_core.models import build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier("small_cnn", 3, 32)
    norms = [layer for layer in eval_throughput.all_layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 4  # small_cnn's four blocks, one level down in the classifier
    eval_throughput.like_trained(model)
    for norm in norms:
        gamma, beta, mean, variance = (np.asarray(w) for w in norm.get_weights())
        assert np.abs(beta).min() > 0 and np.abs(mean).min() > 0  # Keras starts both at exactly zero
        assert variance.min() >= 1 and not np.allclose(gamma, 1)
    assert np.isfinite(model(np.zeros((2, 32, 32, 1), "float32"), training=False)).all()
