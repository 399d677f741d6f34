"""Evaluation throughput: the seed's way (Keras predict, one patch per batch) against this evaluator,
in one run, one after the other, on the same machine, model and patches; then the evaluator against the
matrix-product ceiling, measured in interleaved rounds.

    python bench/eval_throughput.py [--patches 192] [--small-patches 2000] [--rounds 9]

Prints patches/s, the speed-up over the seed's way and the argmax agreement
with float32 predictions, and each precision's share of the ceiling; writes the
"Evaluation throughput" and "Evaluator against the matrix-product ceiling"
sections of docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from report import write_section  # noqa: E402  (bench/, the script's folder)

from ddsm_core import synth  # noqa: E402
from ddsm_core.config import RunConfig  # noqa: E402
from ddsm_core.data.images import write_png  # noqa: E402
from ddsm_core.data.pipeline import make_dataset  # noqa: E402
from ddsm_core.hardware import choose_precision  # noqa: E402
from ddsm_core.inference import load_for_inference, predict  # noqa: E402
from ddsm_core.models import build_classifier  # noqa: E402

SECTION = "## Evaluation throughput"
CEILING_SECTION = "## Evaluator against the matrix-product ceiling"
RESNET50_GFLOP = 14.6  # per 299 px patch: 4.1 GMAC at 224 px, times (299/224)^2, times 2 FLOP per MAC


def write_patches(folder: Path, n: int, size: int) -> list[str]:
    images, _ = synth.generate(n, size, seed=7, split="test")
    paths = []
    for index, image in enumerate(images):
        path = folder / f"patch_{size}_{index:05d}.png"
        write_png(path, image)
        paths.append(str(path))
    return paths


def saved_model(folder: Path, backbone: str, size: int) -> Path:
    """A model with random weights (no downloads here), its batch norms given statistics like a trained
    network's: speed does not depend on the values, but the graph does (see like_trained)."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_classifier(backbone, 5, size)
    like_trained(model)
    path = folder / f"{backbone}.keras"
    model.save(path)
    return path


def like_trained(model, seed: int = 0) -> None:
    """Give every batch norm non-trivial scale, offset, mean and variance. With Keras' initial values
    (offset 0, mean 0) the folded biases are zero and grappler drops them, so the convolutions of an
    untrained model lose their bias-add fusions and measure a different graph from a trained model's."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([1 + 0.1 * rng.standard_normal(shape), 0.1 * rng.standard_normal(shape),
                               0.1 * rng.standard_normal(shape), 1 + 0.1 * rng.random(shape)])


def all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model: the backbone inside the classifier
            yield from all_layers(layer)


def seed_way(path: Path, paths: list[str], size: int) -> tuple[np.ndarray, float]:
    """What the notebook did: Keras predict over a generator at batch size 1."""
    import keras

    from ddsm_core.models import custom_objects

    model = keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    data = make_dataset(paths, np.zeros(len(paths), dtype=int), size, 1).map(lambda x, y: x)
    model.predict(data.take(2), verbose=0)  # warm-up: graph tracing is not throughput
    started = time.perf_counter()
    probs = model.predict(data, verbose=0)
    return probs, time.perf_counter() - started


@dataclass
class Setup:
    """One backbone's bench material: patch files and a saved model."""
    backbone: str
    size: int
    batch: int
    paths: list[str]
    model: Path

    @property
    def config(self) -> RunConfig:
        return RunConfig(dataset="bench", task=0, backbone=self.backbone, image_size=self.size)


def set_up(folder: Path, backbone: str, size: int, n: int, batch: int) -> Setup:
    return Setup(backbone, size, batch, write_patches(folder, n, size), saved_model(folder, backbone, size))


def warm_evaluator(setup: Setup, precision: str, jit: bool = False):
    """A function running the evaluator over the setup's patches -> (probabilities, seconds); warmed up
    first, because tracing and grappler are not throughput."""
    infer = load_for_inference(setup.model, setup.config, precision, jit)
    predict(infer, setup.paths[:setup.batch], setup.size, setup.batch)

    def run() -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        probs = predict(infer, setup.paths, setup.size, setup.batch)
        return probs, time.perf_counter() - started

    return run


def bench_backbone(setup: Setup) -> list[dict]:
    n, batch = len(setup.paths), setup.batch
    reference, seconds = seed_way(setup.model, setup.paths, setup.size)
    rows = [{"backbone": setup.backbone, "size": setup.size, "way": "seed: Keras predict, batch 1, float32",
             "patches_per_s": n / seconds, "speedup": 1.0, "agreement": 1.0}]
    for precision, jit in (("float32", False), ("float32", True), ("mixed_bfloat16", False)):
        probs, seconds = warm_evaluator(setup, precision, jit)()
        rows.append({"backbone": setup.backbone, "size": setup.size,
                     "way": f"evaluator, batch {batch}, {precision}{', XLA' if jit else ''}",
                     "patches_per_s": n / seconds, "agreement": float((probs.argmax(1) == reference.argmax(1)).mean())})
    base = rows[0]["patches_per_s"]
    for row in rows:
        row["speedup"] = row["patches_per_s"] / base
        row["n"] = n
    return rows


def matmul_ceiling(dtype: str):
    """A function measuring what this machine's cores deliver right now, in GFLOP/s, on a large matrix
    product (the compute ceiling) in dtype."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([4096, 4096]), dtype)
    product = tf.function(lambda: tf.matmul(a, a))
    product().numpy()

    def measure(repeats: int = 3) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            product().numpy()
        return 2 * 4096**3 * repeats / (time.perf_counter() - started) / 1e9

    return measure


def in_rounds(measures: dict, rounds: int) -> dict[str, list[float]]:
    """Each measure (a function returning a rate) once per round, in turn, so that neighbouring
    measurements see the machine in the same state: its speed drifts (the ceiling moved 2x between runs,
    and within one), and a ratio is fair only between measurements of one round."""
    results = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


def evaluator_rate(setup: Setup, precision: str):
    """A function measuring the evaluator's patches/s over the setup's patches."""
    run = warm_evaluator(setup, precision)
    return lambda: len(setup.paths) / run()[1]


def ceiling_shares(resnet: Setup, small: Setup, rounds: int) -> tuple[list[dict], dict]:
    """ResNet50's evaluator in each precision against that precision's matrix-product ceiling, the share
    taken within each round; and small_cnn's bfloat16 over float32 speed, also within each round."""
    precisions = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
    measures = {}
    for precision, dtype in precisions.items():
        measures[f"ceiling {dtype}"] = matmul_ceiling(dtype)
        measures[precision] = evaluator_rate(resnet, precision)
    rates = in_rounds(measures, rounds)
    rows = []
    for precision, dtype in precisions.items():
        tops = rates[f"ceiling {dtype}"]
        shares = [rate * RESNET50_GFLOP / top for rate, top in zip(rates[precision], tops)]
        rows.append({"precision": precision, "dtype": dtype,
                     "patches_per_s": statistics.median(rates[precision]),
                     "reached": statistics.median(rates[precision]) * RESNET50_GFLOP,
                     "ceiling": statistics.median(tops), "ceiling_range": (min(tops), max(tops)),
                     "share": statistics.median(shares), "share_range": (min(shares), max(shares))})
    speeds = in_rounds({precision: evaluator_rate(small, precision) for precision in precisions}, rounds)
    ratios = [bf16 / f32 for bf16, f32 in zip(speeds["mixed_bfloat16"], speeds["float32"])]
    return rows, {"float32": statistics.median(speeds["float32"]),
                  "mixed_bfloat16": statistics.median(speeds["mixed_bfloat16"]),
                  "ratio": statistics.median(ratios), "ratio_range": (min(ratios), max(ratios))}


def ceiling_table(rows: list[dict], auto: str) -> str:
    lines = ["| evaluator (ResNet50, 299 px, batch 32, from PNG files) | patches/s | GFLOP/s reached | "
             "ceiling: 4096² matmul, same rounds (range) | share of the ceiling, median of rounds (range) |",
             "|---|---|---|---|---|"]
    for r in rows:
        chosen = " (what `auto` picks here)" if r["precision"] == auto else ""
        share = f"{r['share']:.0%}"
        lines.append(f"| {r['precision']}{chosen} | {r['patches_per_s']:.1f} | {r['reached']:.0f} | "
                     f"{r['ceiling']:.0f} GFLOP/s {r['dtype']} ({r['ceiling_range'][0]:.0f}-{r['ceiling_range'][1]:.0f}) | "
                     f"{f'**{share}**' if chosen else share} ({r['share_range'][0]:.0%}-{r['share_range'][1]:.0%}) |")
    return "\n".join(lines)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    import tensorflow as tf

    from ddsm_core.hardware import describe_machine

    flags = " ".join(describe_machine(gpus=0)["cpu_flags"])
    return (f"{os.cpu_count()} cores ({cpu}; flags {flags}), {int(memory) / 2**20:.0f} GiB RAM, no GPU; "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}")


def table(rows: list[dict]) -> str:
    lines = ["| backbone | input | way | patches | patches/s | speed-up vs seed | argmax agreement with seed's float32 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['size']} px | {r['way']} | {r['n']} | {r['patches_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['agreement']:.2%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=192, help="ResNet50 patches at 299 px")
    parser.add_argument("--small-patches", type=int, default=2000, help="small_cnn patches at 64 px")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the ceiling measurements")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        resnet = set_up(Path(folder), "resnet50", 299, args.patches, 32)
        small_cnn = set_up(Path(folder), "small_cnn", 64, args.small_patches, 256)
        rows = bench_backbone(resnet) + bench_backbone(small_cnn)
        shares, small = ceiling_shares(resnet, small_cnn, args.rounds)
    report = table(rows)
    print(report)
    resnet = {r["way"]: r for r in rows if r["backbone"] == "resnet50"}
    summary = ("ResNet50 at 299 px: " + ", ".join(f"{way.split(', ', 1)[1]} {r['speedup']:.1f}x"
                                                  for way, r in resnet.items() if way.startswith("evaluator"))
               + " the seed's way (target: at least 3x).")
    print(summary)
    command = (f"`python bench/eval_throughput.py --patches {args.patches} --small-patches {args.small_patches} "
               f"--rounds {args.rounds}` (`make bench`)")
    where = machine()
    write_section(f"""{SECTION}

Measured by {command}, all rows in one run on one machine: {where}.
The seed's way is Keras `predict` over the patches at batch size 1, as the notebook's
`predict_generator(test_generator, n)` with `batch_size_test = 1` did. The evaluator is
`ddsm_core.inference.predict`: the same tf.data decoding, batched, through a frozen graph (weights as
constants, so batch norm folds into the convolutions), rewritten by grappler to bfloat16 for oneDNN when
asked (`evaluate --precision mixed_bfloat16`), or compiled by XLA (`evaluate --jit`).
Models have random weights (nothing is downloaded here) with batch-norm statistics like a trained
network's (`like_trained`: with Keras' initial zeros grappler drops the folded biases and measures a
different graph); agreement is counted on the argmax of each patch against the seed's float32 predictions.
These rows are measured one after another, so the machine's drift is in their ratios; the next
section measures in rounds.

{report}

{summary}

With random weights ResNet50's outputs are close to uniform, so a few patches whose two best classes
are nearly tied can flip their argmax under bfloat16 rounding; on trained models
(`tests/test_evaluation.py::test_mixed_precision_and_xla_agree_with_float32`) the argmax agrees on
every patch.
""")
    auto = choose_precision("auto")
    ceiling_report = ceiling_table(shares, auto)
    print(ceiling_report)
    small_line = (f"small_cnn at 64 px, same rounds ({args.small_patches} patches, batch 256): "
                  f"{small['mixed_bfloat16']:.0f} patches/s in mixed_bfloat16, {small['float32']:.0f} in float32; "
                  f"bfloat16 over float32 within a round: median {small['ratio']:.2f}x "
                  f"(range {small['ratio_range'][0]:.2f}-{small['ratio_range'][1]:.2f}x).")
    print(small_line)
    write_section(f"""{CEILING_SECTION}

Issue 13, item 3: at the precision `auto` picks, the evaluator should reach at least 80% of the
matrix-product ceiling. Measured by the same run ({command}) in {args.rounds} rounds; each round
measures, in turn, a 4096² float32 matmul, the float32 evaluator over {args.patches} ResNet50 patches
from PNG files, a 4096² bfloat16 matmul and the bfloat16 evaluator. A share is taken only between the
ceiling and the evaluator of one round, because this machine's speed drifts: the ceiling moved 2x
between runs and within them (the ranges below). ResNet50 at 299 px needs {RESNET50_GFLOP} GFLOP per patch.
Precision `auto` picks **{auto}** here (`ddsm_core.hardware.choose_precision`). Machine: {where}.

{ceiling_report}

{small_line}
""")


if __name__ == "__main__":
    main()
