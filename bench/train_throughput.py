"""Training throughput: the seed's input pipeline, ours and the in-memory ceiling, side by side in one run;
then a head retrain from the feature cache against the same head without it.

    python bench/train_throughput.py [--backbone resnet50] [--size 128] [--patches 256] [--batch-size 32]
                                     [--rounds 2] [--head-train 400] [--head-epochs 4] [--task 3] [--no-write]

Part 1, same model, same precision, same patches (PNGs at --size), one epoch of model.fit each,
interleaved for --rounds rounds (median reported), in float32 and in the precision `auto` picks here
(when it is not float32):
  (a) the seed's way: what Keras 2's ImageDataGenerator.flow_from_dataframe did, as a public
      keras.utils.PyDataset: PIL decodes each patch in Python and the batches are handed to fit;
  (b) ours: ddsm_core.data.pipeline.make_dataset (tf.data) feeding fit;
  (c) the ceiling: fit on the patches already decoded into an in-memory array.
Part 2, the real code path (runs.create_run + training.train_run on a synthetic seed-csv dataset):
  (d) `--fine-tune head` (features cached once, then the head trains on them) against
  (e) `--fine-tune head --no-feature-cache` (every patch through the frozen backbone in every epoch),
  same data, split, seed, learning rate, precision and the identical frozen backbone (the no-cache run
  loads the weights file the cache kept). Per-epoch seconds and val_accuracy come from each run's
  history.csv; the cache build is reported on its own.
Writes the "Training throughput" section of docs/PERFORMANCE.md (only that section) unless --no-write.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from report import add_no_write, command_line, write_section  # noqa: E402  (bench/, the script's folder)

SECTION = "## Training throughput"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- part 1: three input pipelines

def write_patches(folder: Path, n: int, size: int) -> pd.DataFrame:
    from ddsm_core import synth
    from ddsm_core.data.images import write_png

    images, table = synth.generate(n, size, seed=5, split="train")
    paths = []
    for index, image in enumerate(images):
        path = folder / f"patch_{index:05d}.png"
        write_png(path, image)
        paths.append(str(path))
    return pd.DataFrame({"path": paths, "y": table["y"].to_numpy()})


def seed_generator(frame: pd.DataFrame, size: int, batch: int):
    """What the notebook's ImageDataGenerator().flow_from_dataframe did (grayscale, sparse labels, shuffled),
    through Keras 3's public PyDataset: each patch opened and resized by PIL in Python, one batch at a time."""
    import keras
    from PIL import Image

    class SeedStyle(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng(self.epoch).permutation(len(frame))

        def __len__(self):
            return -(-len(frame) // batch)

        def __getitem__(self, index):
            rows = frame.iloc[self.order[index * batch:(index + 1) * batch]]
            images = [np.asarray(Image.open(path).convert("L").resize((size, size), Image.NEAREST), np.float32)
                      for path in rows["path"]]
            return np.stack(images)[..., None], rows["y"].to_numpy()

        def on_epoch_end(self):
            self.epoch += 1  # a new order each epoch, as ImageDataGenerator's shuffle gives
            self.order = np.random.default_rng(self.epoch).permutation(len(frame))

    return SeedStyle()


def in_memory(frame: pd.DataFrame, size: int) -> np.ndarray:
    """The patches decoded once (by the same tf.data decoding), as one float32 array."""
    from ddsm_core.data.pipeline import make_dataset

    data = make_dataset(frame["path"], frame["y"], size, 64)
    return np.concatenate([images.numpy() for images, _ in data])


def build(backbone: str, size: int, precision: str):
    import keras

    from ddsm_core.models import build_classifier

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_classifier(backbone, 5, size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    keras.mixed_precision.set_global_policy("float32")
    return model


def bench_pipelines(frame: pd.DataFrame, args, precision: str) -> list[dict]:
    from ddsm_core.data.pipeline import make_dataset

    size, batch = args.size, args.batch_size
    n = len(frame)
    x = in_memory(frame, size)
    y = frame["y"].to_numpy()
    model = build(args.backbone, size, precision)
    ways = {
        "a": ("seed-style: PIL in Python per patch (PyDataset)",
              lambda: seed_generator(frame, size, batch), {}),
        "b": ("ours: make_dataset (tf.data)",
              lambda: make_dataset(frame["path"], y, size, batch, shuffle=True), {}),
        "c": ("ceiling: in-memory array", lambda: x, {"y": y, "batch_size": batch, "shuffle": True}),
    }
    # warm-up: each way's first steps trace the train function for its input's shapes
    for key, (_, data, _) in ways.items():
        if key == "c":
            model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)
        else:
            model.fit(data(), epochs=1, steps_per_epoch=2, verbose=0)
    rates = {key: [] for key in ways}
    for round_ in range(args.rounds):
        for key, (name, data, extra) in ways.items():
            source = data()
            started = time.perf_counter()
            model.fit(source, epochs=1, verbose=0, **extra)
            seconds = time.perf_counter() - started
            rates[key].append(n / seconds)
            log(f"{precision} round {round_ + 1} ({key}) {name}: {n / seconds:.2f} patches/s")
    ceiling = statistics.median(rates["c"])
    return [{"precision": precision, "way": f"({key}) {name}", "rate": statistics.median(rates[key]),
             "low": min(rates[key]), "high": max(rates[key]), "ratio": statistics.median(rates[key]) / ceiling}
            for key, (name, _, _) in ways.items()]


# ---------------------------------------------------------------- part 2: head from the cache vs without

def bench_head(base: Path, args) -> dict:
    from ddsm_core import features, runs, training, workspace
    from ddsm_core.config import RunConfig
    from ddsm_core.data.seed_csv import import_seed_csv
    from ddsm_core.synth import write_seed_csv

    src, root = base / "src", base / "workspace"
    write_seed_csv(src, n_train=args.head_train, n_test=args.head_test, size=args.size, seed=1)
    import_seed_csv(root, "tt", src / "train.csv", src / "train_images", src / "test.csv", src / "test_images")
    common = {"dataset": "tt", "task": args.task, "backbone": args.backbone, "image_size": args.size,
              "fine_tune": "head", "epochs": args.head_epochs, "batch_size": args.batch_size}
    messages = []

    def remember(message):
        messages.append(message)
        log(message)

    cached_id = runs.create_run(root, RunConfig(**common), run_id="head-cached")
    started = time.perf_counter()
    training.train_run(root, cached_id, log=remember)
    cached_total = time.perf_counter() - started
    (entry,) = features.list_caches(root)
    meta = workspace.read_json(features.cache_root(root) / entry["name"] / features.META)

    weights = features.cache_root(root) / entry["name"] / features.WEIGHTS  # the identical frozen backbone
    plain_id = runs.create_run(root, RunConfig(**common, weights=str(weights), feature_cache=False),
                               run_id="head-no-cache")
    started = time.perf_counter()
    training.train_run(root, plain_id, log=log)
    plain_total = time.perf_counter() - started

    result = {"cache_seconds": meta["seconds"], "cache_patches": meta["n_patches"],
              "cache_rate": meta["patches_per_second"], "cache_precision": meta["inputs"]["precision"],
              "cached_total": cached_total, "plain_total": plain_total, "messages": messages}
    for key, run_id in (("cached", cached_id), ("plain", plain_id)):
        history = pd.read_csv(runs.history_file(root, run_id))
        config = runs.read_config(root, run_id)
        result[key] = {"seconds": history["seconds"].tolist(), "val_accuracy": history["val_accuracy"].tolist(),
                       "precision": config["precision"], "lr": config["lr"]}
        split = pd.read_parquet(runs.split_file(root, run_id))
        result["n_train"], result["n_val"] = int((split["subset"] == "train").sum()), int((split["subset"] == "val").sum())
    return result


# ---------------------------------------------------------------- report

def machine() -> tuple[str, str]:
    import tensorflow as tf

    from ddsm_core.hardware import describe_machine, human_bytes

    m = describe_machine()
    device = f"GPU ({m['gpus']})" if m["gpus"] else "CPU"
    return (f"{m['cpus']} cores, {m['cpu_model']}; flags {' '.join(m['cpu_flags']) or 'none listed'}; fast bf16 "
            f"(AMX / AVX-512 BF16): {'yes' if m['fast_bf16'] else 'no'}; {m['gpus']} GPU(s); memory "
            f"{human_bytes(m['memory_total_bytes'] or 0)} total, {human_bytes(m['memory_available_bytes'] or 0)} "
            f"available; Python {platform.python_version()}, TensorFlow {tf.__version__}"), device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--patches", type=int, default=256, help="patches per epoch in part 1 (a multiple of the batch)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved epochs of each way; the median is reported")
    parser.add_argument("--precision", action="append", help="precisions of part 1 (default: float32 and auto's pick)")
    parser.add_argument("--head-train", type=int, default=400, help="training patches of part 2's dataset")
    parser.add_argument("--head-test", type=int, default=40)
    parser.add_argument("--head-epochs", type=int, default=4)
    parser.add_argument("--task", type=int, default=3)
    parser.add_argument("--skip-pipelines", action="store_true", help="part 2 only")
    add_no_write(parser)
    args = parser.parse_args(argv)
    args.patches -= args.patches % args.batch_size
    command = command_line(__file__, argv)

    from ddsm_core import hardware

    machine_text, device = machine()
    auto = hardware.choose_precision("auto")
    precisions = args.precision or list(dict.fromkeys(["float32", auto]))
    log(f"{machine_text}; device {device}; precision auto -> {auto}")
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[1]  # the machine may be shared: its 5-minute load average, start and end
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as scratch:
        base = Path(scratch)
        if not args.skip_pipelines:
            (base / "patches").mkdir()
            frame = write_patches(base / "patches", args.patches, args.size)
            for precision in precisions:
                rows += bench_pipelines(frame, args, precision)
        head = bench_head(base / "head", args)
    total = time.perf_counter() - started
    load_after = os.getloadavg()[1]

    lines = ["| precision | input to `model.fit` | patches/s (median) | min-max | vs (c) the ceiling |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['way']} | {r['rate']:.2f} | {r['low']:.2f}-{r['high']:.2f} | "
                     f"{r['ratio']:.2f}x |")
    table = "\n".join(lines)

    cached, plain = head["cached"], head["plain"]
    later = lambda s: s[1:] if len(s) > 1 else s  # noqa: E731  (epochs after the first: no tracing)
    cached_epoch, plain_epoch = statistics.median(later(cached["seconds"])), statistics.median(later(plain["seconds"]))
    speedup, first_speedup = plain_epoch / cached_epoch, plain["seconds"][0] / cached["seconds"][0]
    accuracy_gap = abs(cached["val_accuracy"][-1] - plain["val_accuracy"][-1])
    # standard error of the difference of two accuracies near 0.5 (the largest), each on n_val patches
    noise = float(np.sqrt(2 * 0.25 / head["n_val"]))
    head_lines = ["| run | cache build (features.ensure, once) | epoch 1 s | later epochs s (median) | "
                  "val accuracy per epoch |", "|---|---|---|---|---|"]
    head_lines.append(f"| (d) `--fine-tune head` (feature cache), {cached['precision']} | {head['cache_seconds']:.1f} s "
                      f"for {head['cache_patches']} patches ({head['cache_rate']:.0f}/s, {head['cache_precision']}) | "
                      f"{cached['seconds'][0]:.2f} | {cached_epoch:.2f} | "
                      f"{', '.join(f'{v:.3f}' for v in cached['val_accuracy'])} |")
    head_lines.append(f"| (e) `--fine-tune head --no-feature-cache`, {plain['precision']} | none | "
                      f"{plain['seconds'][0]:.2f} | {plain_epoch:.2f} | "
                      f"{', '.join(f'{v:.3f}' for v in plain['val_accuracy'])} |")
    head_table = "\n".join(head_lines)
    same = accuracy_gap <= 2 * noise
    verdict = (f"A head epoch from the cache is **{speedup:.0f}x** faster than without it (epochs after the first; "
               f"the first epoch, which traces the graph, {first_speedup:.0f}x; target: at least 20x). Last-epoch "
               f"val accuracy {cached['val_accuracy'][-1]:.3f} vs {plain['val_accuracy'][-1]:.3f} on "
               f"{head['n_val']} validation patches: a gap of {accuracy_gap:.3f}, "
               + (f"within noise (two standard errors of the difference of two accuracies on {head['n_val']} patches: "
                  f"about {2 * noise:.2f})."
                  if same else f"MORE than two standard errors ({2 * noise:.2f}): not the same within noise."))
    print("\n" + table + "\n\n" + head_table + "\n\n" + verdict)
    section = f"""{SECTION}

Measured by `{command}` (`make bench`), every row in one run started {started_at} ({total / 60:.1f} minutes in
all), on {machine_text}. Device: **{device}**. Precision `auto` picks **{auto}** on this machine.
Five-minute load average {load_before:.1f} at the start and {load_after:.1f} at the end, on
{os.cpu_count()} logical CPUs: above the CPU count means other jobs shared the cores, and every absolute
rate below is lower, and noisier, than on a quiet machine.

Same model ({args.backbone} at {args.size} px, random weights, five classes, Adam), same {args.patches}
synthetic PNG patches, batch {args.batch_size}, one epoch of `model.fit` per row; the three inputs are
interleaved over {args.rounds} rounds after a warm-up that traces each one, and the median is shown.
(a) is the seed's way: what Keras 2's `ImageDataGenerator().flow_from_dataframe` did, as a public
`keras.utils.PyDataset` (PIL decoding and resizing each patch in Python, shuffled batches);
(b) is `ddsm_core.data.pipeline.make_dataset`
(tf.data, parallel decoding, prefetch), what `train` uses; (c) is fit on the patches already decoded into one
in-memory array, the most any input pipeline can give.

{table}

Head retrain, the real code path (`runs.create_run` + `training.train_run`) on a synthetic seed-csv dataset
of {args.head_train} training patches ({head['n_train']} train / {head['n_val']} validation after the
grouped split) at {args.size} px, task {args.task}, {args.backbone}, {args.head_epochs} epochs, batch
{args.batch_size}, learning rate {cached['lr']:g} (the default for a head) for both. (e) loads the
frozen backbone's weights from the file the cache kept, so both runs train a head on the identical
backbone. Seconds per epoch are each run's history.csv `seconds` (training plus validation); the cache
build, which computes the features of every patch of the dataset (train and test) once, is shown apart.

{head_table}

{verdict}
"""
    if not args.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
