"""Evaluation throughput: the seed's way (Keras predict, one patch per batch) against this evaluator,
side by side in one run, on the same machine, model and patches.

    python bench/eval_throughput.py [--patches 96] [--small-patches 2000]

Prints patches/s, the speed-up over the seed's way and the argmax agreement
with float32 predictions; writes the "Evaluation throughput" section of
docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from report import write_section  # noqa: E402  (bench/, the script's folder)

from ddsm_core import synth  # noqa: E402
from ddsm_core.config import RunConfig  # noqa: E402
from ddsm_core.data.images import write_png  # noqa: E402
from ddsm_core.data.pipeline import make_dataset  # noqa: E402
from ddsm_core.inference import load_for_inference, predict  # noqa: E402
from ddsm_core.models import build_classifier  # noqa: E402

SECTION = "## Evaluation throughput"


def write_patches(folder: Path, n: int, size: int) -> list[str]:
    images, _ = synth.generate(n, size, seed=7, split="test")
    paths = []
    for index, image in enumerate(images):
        path = folder / f"patch_{size}_{index:05d}.png"
        write_png(path, image)
        paths.append(str(path))
    return paths


def saved_model(folder: Path, backbone: str, size: int) -> Path:
    """A model with random weights (no downloads here); speed does not depend on the weights' values."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_classifier(backbone, 5, size)
    path = folder / f"{backbone}.keras"
    model.save(path)
    return path


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


def evaluator(path: Path, config: RunConfig, paths: list[str], batch: int, precision: str, jit: bool):
    model = load_for_inference(path, config, precision, jit)
    predict(model, paths[:batch], config.image_size, batch)  # warm-up
    started = time.perf_counter()
    probs = predict(model, paths, config.image_size, batch)
    return probs, time.perf_counter() - started


def bench_backbone(folder: Path, backbone: str, size: int, n: int, batch: int) -> list[dict]:
    paths = write_patches(folder, n, size)
    path = saved_model(folder, backbone, size)
    config = RunConfig(dataset="bench", task=0, backbone=backbone, image_size=size)
    reference, seconds = seed_way(path, paths, size)
    rows = [{"backbone": backbone, "size": size, "way": "seed: Keras predict, batch 1, float32",
             "patches_per_s": n / seconds, "speedup": 1.0, "agreement": 1.0}]
    for precision, jit in (("float32", False), ("float32", True), ("mixed_bfloat16", False)):
        probs, seconds = evaluator(path, config, paths, batch, precision, jit)
        rows.append({"backbone": backbone, "size": size,
                     "way": f"evaluator, batch {batch}, {precision}{', XLA' if jit else ''}",
                     "patches_per_s": n / seconds, "agreement": float((probs.argmax(1) == reference.argmax(1)).mean())})
    base = rows[0]["patches_per_s"]
    for row in rows:
        row["speedup"] = row["patches_per_s"] / base
        row["n"] = n
    return rows


def matmul_gflops(dtype: str) -> float:
    """What this machine's cores deliver right now on a large matrix product (the compute ceiling)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([4096, 4096]), dtype)
    product = tf.function(lambda: tf.matmul(a, a))
    product().numpy()
    started = time.perf_counter()
    for _ in range(5):
        product().numpy()
    return 2 * 4096**3 * 5 / (time.perf_counter() - started) / 1e9


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = bench_backbone(Path(folder), "resnet50", 299, args.patches, 32)
        rows += bench_backbone(Path(folder), "small_cnn", 64, args.small_patches, 256)
    report = table(rows)
    ceiling = (f"Matrix-product ceiling measured in the same run: {matmul_gflops('float32'):.0f} GFLOP/s in float32, "
               f"{matmul_gflops('bfloat16'):.0f} GFLOP/s in bfloat16; ResNet50 at 299 px needs about 14.6 GFLOP "
               f"per patch.")
    print(report)
    print(ceiling)
    resnet = {r["way"]: r for r in rows if r["backbone"] == "resnet50"}
    summary = ("ResNet50 at 299 px: " + ", ".join(f"{way.split(', ', 1)[1]} {r['speedup']:.1f}x"
                                                  for way, r in resnet.items() if way.startswith("evaluator"))
               + " the seed's way (target: at least 3x).")
    print(summary)
    write_section(f"""{SECTION}

Measured by `python bench/eval_throughput.py --patches {args.patches} --small-patches {args.small_patches}`
(`make bench`), all rows in one run on one machine: {machine()}.
The seed's way is Keras `predict` over the patches at batch size 1, as the notebook's
`predict_generator(test_generator, n)` with `batch_size_test = 1` did. The evaluator is
`ddsm_core.inference.predict`: the same tf.data decoding, batched, through a frozen graph (weights as
constants, so batch norm folds into the convolutions), rewritten by grappler to bfloat16 for oneDNN when
asked (`evaluate --precision mixed_bfloat16`), or compiled by XLA (`evaluate --jit`).
Models have random weights (nothing is downloaded here); speed does not depend on the weights' values,
and agreement is counted on the argmax of each patch against the seed's float32 predictions.

{report}

{summary} {ceiling}

With random weights ResNet50's outputs are close to uniform, so a few patches whose two best classes
are nearly tied can flip their argmax under bfloat16 rounding; on trained models
(`tests/test_evaluation.py::test_mixed_precision_and_xla_agree_with_float32`) the argmax agrees on
every patch.
""")


if __name__ == "__main__":
    main()
