"""Scale: a synthetic dataset the size of the DDSM patch release, end to end, with peak memory.

    python bench/scale.py [--n-train 55885] [--n-test 15364] [--size 299] [--backbone mobilenetv3small]
                          [--epochs 3] [--resnet-patches 256] [--base DIR] [--no-write]

Stages, each in its own child process (so each has its own peak resident memory, read with
os.wait4's rusage ru_maxrss), timed one after the other on one machine:

    synth     the synthetic release in the Kaggle layout (training10_0..4.tfrecords, cv10/test10 .npy),
              byte for byte what ddsm_core.synth.write_kaggle writes, with the patches drawn by two
              worker processes (setup for the benchmark, not part of the tool)
    import    ddsm_core.data.kaggle.import_kaggle (PNG per patch, noise statistics, manifest)
    load      ddsm_core.data.store.load (the manifest parquet)
    features  ddsm_core.features.ensure: the frozen backbone's pooled features of every patch
    heads     a `--fine-tune head` run of each of the six tasks from that cache (runs.create_run +
              training.train_run), per-task seconds
    evaluate  ddsm_core.evaluation.evaluate_run of the task-0 run on the test split (the dashboard's input)
    pages     every dashboard page on that run, AppTest.run() as in bench/page_render.py
    resnet50  resnet50 features/s at the same size on --resnet-patches patches, to extrapolate a
              resnet50 feature cache of the whole release (an extrapolation, labelled as one)

Stages whose result file exists in --base are skipped (a killed run continues). Writes the
"Scale" section of docs/PERFORMANCE.md (only that section) unless --no-write.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import add_no_write, command_line, write_section  # noqa: E402  (bench/, the script's folder)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "bench"))

SECTION = "## Scale"
DATASET = "ddsm_scale"
STAGES = ("synth", "import", "load", "features", "heads", "evaluate", "pages", "resnet50")
RELEASE = (55_885, 15_364, 299)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- stages (each runs in a child process)

def _draw(job):
    import numpy as np

    from ddsm_core import synth

    label, size, draw_size, seed, s, i, background = job
    patch = synth.make_patch(label, draw_size, np.random.default_rng([seed, s, i]), background)
    if draw_size == size:
        return patch
    from PIL import Image

    return np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR))


def stage_synth(args, base: Path) -> dict:
    """synth.write_kaggle, with synth.generate's per-patch drawing spread over the CPUs.

    generate() seeds each patch by (seed, split, row), so drawing them in a pool gives the identical
    patches; its table (labels, patients, filenames) is made by generate itself with drawing stubbed out.
    """
    import multiprocessing

    from ddsm_core import synth

    original_generate, original_make_patch = synth.generate, synth.make_patch
    workers = min(len(os.sched_getaffinity(0)), 8)

    def parallel_generate(n, size, seed, split):
        synth.make_patch = lambda label, size, rng, background=False: None
        try:
            _, table = original_generate(n, size, seed, split)
        finally:
            synth.make_patch = original_make_patch
        s = synth._split_index(split)
        draw = args.draw_size or size
        jobs = [(int(y), size, draw, seed, s, i, bool(b)) for i, (y, b) in enumerate(zip(table["y"], table["background"]))]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            images = pool.map(_draw, jobs, chunksize=64)
        return images, table

    synth.generate = parallel_generate
    try:
        started = time.perf_counter()
        synth.write_kaggle(base / "source", args.n_train, args.n_test, size=args.size, seed=0)
        seconds = time.perf_counter() - started
    finally:
        synth.generate = original_generate
    size = sum(p.stat().st_size for p in (base / "source").iterdir())
    return {"seconds": seconds, "workers": workers, "bytes": size, "draw_size": args.draw_size}


def stage_import(args, base: Path) -> dict:
    from ddsm_core.data.kaggle import import_kaggle

    started = time.perf_counter()
    dataset = import_kaggle(base / "workspace", DATASET, base / "source")
    seconds = time.perf_counter() - started
    images = base / "workspace"
    size = sum(p.stat().st_size for p in images.rglob("*.png"))
    return {"seconds": seconds, "rows": len(dataset.manifest), "png_bytes": size}


def stage_load(args, base: Path) -> dict:
    from ddsm_core.data import store

    started = time.perf_counter()
    dataset = store.load(base / "workspace", DATASET)
    seconds = time.perf_counter() - started
    counts = dataset.manifest["split"].value_counts().to_dict()
    return {"seconds": seconds, "rows": len(dataset.manifest), "counts": {k: int(v) for k, v in counts.items()}}


def _head_config(args, task: int):
    from ddsm_core.config import RunConfig

    return RunConfig(dataset=DATASET, task=task, backbone=args.backbone, image_size=args.size, fine_tune="head",
                     epochs=args.epochs, batch_size=args.batch_size)


def stage_features(args, base: Path) -> dict:
    from ddsm_core import features, hardware

    precision = hardware.choose_precision("auto")
    started = time.perf_counter()
    cache = features.ensure(base / "workspace", _head_config(args, 0), precision, log=log)
    seconds = time.perf_counter() - started
    files = sum(p.stat().st_size for p in cache.folder.iterdir())
    return {"seconds": seconds, "inner_seconds": cache.meta["seconds"], "n_patches": cache.meta["n_patches"],
            "patches_per_second": cache.meta["patches_per_second"], "dim": cache.meta["dim"],
            "precision": precision, "bytes": files}


def stage_heads(args, base: Path) -> dict:
    import pandas as pd

    from ddsm_core import runs, training
    from ddsm_core.tasks import get_task

    root = base / "workspace"
    results = []
    for task in range(6):
        started = time.perf_counter()
        run_id = runs.create_run(root, _head_config(args, task), run_id=f"scale-t{task}")
        state = training.train_run(root, run_id, log=log)
        seconds = time.perf_counter() - started
        history = pd.read_csv(runs.history_file(root, run_id))
        results.append({"task": task, "name": get_task(task).name, "run_id": run_id, "state": state,
                        "seconds": seconds, "epochs": len(history),
                        "epoch_seconds": history["seconds"].tolist(),
                        "val_accuracy": float(history["val_accuracy"].iloc[-1]),
                        "n_train": int((pd.read_parquet(runs.split_file(root, run_id))["subset"] == "train").sum())})
        log(f"task {task}: {seconds:.1f} s, epochs {history['seconds'].tolist()} s")
    return {"tasks": results}


def stage_evaluate(args, base: Path) -> dict:
    from ddsm_core.evaluation import evaluate_run

    started = time.perf_counter()
    evaluate_run(base / "workspace", "scale-t0", split="test", log=log)
    return {"seconds": time.perf_counter() - started}


def stage_pages(args, base: Path) -> dict:
    import pandas as pd
    from page_render import GALLERY_PATCHES, time_page

    from ddsm_core import runs

    root, run_id = base / "workspace", "scale-t0"
    predicted = pd.read_parquet(runs.predictions_file(root, run_id, "test"))["y_pred"].nunique()
    k = max(1, min(10, round((GALLERY_PATCHES - 20) / (2 * predicted))))

    def gallery_k(at):
        at.slider(key="gallery_k").set_value(k).run()

    cases = [("Runs", "streamlit_app.py", None), ("Training curves", "pages/training_curves.py", None),
             ("Confusion matrix", "pages/confusion_matrix.py", None), ("Certainty", "pages/certainty.py", None),
             ("Gallery (default k=5)", "pages/gallery.py", None), (f"Gallery (k={k})", "pages/gallery.py", gallery_k),
             ("Data", "pages/data.py", None)]
    rows = []
    for name, page, setup in cases:
        started = time.perf_counter()
        seconds, images = time_page(root, run_id, page, args.repeats, setup)
        rows.append({"page": name, "median_ms": statistics.median(seconds) * 1000, "min_ms": min(seconds) * 1000,
                     "max_ms": max(seconds) * 1000, "images": images,
                     "first_s": time.perf_counter() - started - sum(seconds)})
        log(f"page {name}: median {rows[-1]['median_ms']:.0f} ms")
    return {"pages": rows, "predicted_classes": int(predicted)}


def stage_resnet50(args, base: Path) -> dict:
    """resnet50 features/s at the benchmark's size, the way features._build computes them."""
    import keras

    from ddsm_core import hardware
    from ddsm_core.data import store
    from ddsm_core.features import BATCH_SIZE
    from ddsm_core.inference import inference_function, predict
    from ddsm_core.models import feature_extractor

    precision = hardware.choose_precision("auto")
    paths = store.load(base / "workspace", DATASET).absolute_paths()[: args.resnet_patches]
    keras.utils.set_random_seed(0)
    extractor, _ = feature_extractor("resnet50", args.size)
    infer = inference_function(extractor, args.size, precision)
    predict(infer, paths[:BATCH_SIZE], args.size, BATCH_SIZE)  # warm-up: tracing is not throughput
    started = time.perf_counter()
    predict(infer, paths, args.size, BATCH_SIZE)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "n": len(paths), "patches_per_second": len(paths) / seconds, "precision": precision}


# ---------------------------------------------------------------- the parent: children, memory, report

def run_stage(name: str, args, base: Path) -> dict:
    result_file = base / f"stage_{name}.json"
    if result_file.exists():
        log(f"{name}: done before, reusing {result_file}")
        return json.loads(result_file.read_text())
    log(f"{name}: starting")
    command = [sys.executable, __file__, "--stage", name, "--base", str(base), *sys.argv[1:]]
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or not result_file.exists():
        raise SystemExit(f"stage {name} failed (exit {child.returncode})")
    result = json.loads(result_file.read_text()) | {
        "wall_seconds": wall, "peak_rss_bytes": usage.ru_maxrss * 1024,
        "cpu_seconds": usage.ru_utime + usage.ru_stime}
    result_file.write_text(json.dumps(result, indent=1))
    log(f"{name}: {wall:.0f} s wall, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB")
    return result


def machine_text() -> str:
    import platform

    import tensorflow as tf

    from ddsm_core.hardware import describe_machine, human_bytes

    m = describe_machine()
    device = "GPU" if m["gpus"] else "CPU"
    return (f"{m['cpus']} cores, {m['cpu_model']}; flags {' '.join(m['cpu_flags']) or 'none listed'}; fast bf16 "
            f"(AMX / AVX-512 BF16): {'yes' if m['fast_bf16'] else 'no'}; {m['gpus']} GPU(s); memory "
            f"{human_bytes(m['memory_total_bytes'] or 0)} total, {human_bytes(m['memory_available_bytes'] or 0)} "
            f"available at the start; Python {platform.python_version()}, TensorFlow {tf.__version__}; "
            f"ran on the {device}"), m


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(args, results: dict, total: float, machine: str, command: str, started_at: str, base: Path) -> str:
    full = (args.n_train, args.n_test, args.size) == RELEASE
    label = ("the release's size" if full else
             f"**NOT the release's size**: {args.n_train:,} train + {args.n_test:,} test at {args.size} px")
    n = args.n_train + args.n_test
    r = results
    # how each stage grows with the dataset: per patch (all, train or test), or not with its size
    factor = {"synth": (RELEASE[0] + RELEASE[1]) / n, "import": (RELEASE[0] + RELEASE[1]) / n,
              "features": (RELEASE[0] + RELEASE[1]) / n, "heads": RELEASE[0] / args.n_train,
              "evaluate": RELEASE[1] / args.n_test, "load": (RELEASE[0] + RELEASE[1]) / n}
    pixels = (RELEASE[2] / args.size) ** 2
    extra = "" if full else " linear extrapolation to the release (NOT measured) |"
    lines = ["| stage | what | wall time | peak RSS of the stage's process | note |" + extra,
             "|---|---|---|---|---|" + ("---|" if extra else "")]

    def row(name, what, note=""):
        if name in r:
            guess = ""
            if not full:
                grow = factor.get(name, 1.0) * (pixels if name in ("synth", "import", "features") else 1.0)
                guess = f" about {r[name]['wall_seconds'] * grow / 60:.0f} min |" if name in factor else " (see note) |"
            lines.append(f"| {name} | {what} | {r[name]['wall_seconds']:.0f} s | {gib(r[name]['peak_rss_bytes'])} | "
                         f"{note} |{guess}")

    if "synth" in r:
        drawn = f", drawn at {r['synth']['draw_size']} px and upsampled" if r["synth"].get("draw_size") else ""
        row("synth", f"write {n:,} synthetic patches, Kaggle layout (benchmark setup, {r['synth']['workers']} "
                     f"drawing processes{drawn})", f"{r['synth']['bytes'] / 1e9:.1f} GB of tfrecords/npy")
    if "import" in r:
        row("import", "`import_kaggle`: one PNG per patch, noise statistics, manifest",
            f"{r['import']['rows']:,} rows, {n / r['import']['seconds']:.0f} patches/s, "
            f"{r['import']['png_bytes'] / 1e9:.1f} GB of PNGs")
    if "load" in r:
        row("load", "`store.load` (manifest)", f"{r['load']['seconds'] * 1000:.0f} ms inside the process")
    if "features" in r:
        f = r["features"]
        row("features", f"feature cache, {args.backbone} at {args.size} px, {f['precision']}",
            f"{f['n_patches']:,} patches, {f['patches_per_second']:.0f} patches/s, {f['dim']} features each, "
            f"{f['bytes'] / 1e6:.0f} MB")
    if "heads" in r:
        row("heads", f"six head runs from the cache, {args.epochs} epoch(s) each",
            f"{sum(t['seconds'] for t in r['heads']['tasks']):.0f} s inside the process")
    if "evaluate" in r:
        row("evaluate", f"`evaluate_run` of the task-0 run, {args.n_test:,} test patches",
            f"{r['evaluate']['seconds']:.0f} s inside the process")
    if "pages" in r:
        row("pages", f"every dashboard page ({args.repeats} timed runs each after warm-up)")
    if "resnet50" in r:
        x = r["resnet50"]
        row("resnet50", f"resnet50 features on {x['n']} patches at {args.size} px, {x['precision']}",
            f"{x['patches_per_second']:.1f} patches/s")
    stages_total = sum(v["wall_seconds"] for v in r.values())
    if not full:
        grown = sum(v["wall_seconds"] * factor.get(k, 1.0) * (pixels if k in ("synth", "import", "features") else 1.0)
                    for k, v in r.items())
        label += (f"; at the release's size the same stages would need roughly {grown / 60:.0f} minutes on this "
                  f"machine in this state (each stage scaled linearly by its patch count; pages and the resnet50 "
                  f"sample taken as they are: an extrapolation, not a measurement)")
    peak = max(v["peak_rss_bytes"] for v in r.values())

    heads = ["| task | training patches | epochs | seconds per epoch | run total (create + train + export) | "
             "val accuracy (last epoch) |", "|---|---|---|---|---|---|"]
    for t in r.get("heads", {}).get("tasks", []):
        heads.append(f"| {t['task']} {t['name']} | {t['n_train']:,} | {t['epochs']} | "
                     f"{', '.join(f'{s:.1f}' for s in t['epoch_seconds'])} | {t['seconds']:.1f} s | "
                     f"{t['val_accuracy']:.3f} |")
    pages = ["| page | median ms | min-max ms | images drawn | first (cold) run s |", "|---|---|---|---|---|"]
    for p in r.get("pages", {}).get("pages", []):
        pages.append(f"| {p['page']} | {p['median_ms']:.0f} | {p['min_ms']:.0f}-{p['max_ms']:.0f} | {p['images']} | "
                     f"{p['first_s']:.1f} |")

    spread = ""
    for cache in sorted((base / "workspace" / "features").glob("*/features.npy")):
        import numpy as np

        values = np.load(cache, mmap_mode="r")
        std = float(np.asarray(values[:2000], dtype=np.float32).std(axis=0).mean())
        spread = (f"The cached features vary across patches (mean per-feature standard deviation {std:.3g}), so "
                  f"a head can learn from them, but these are a random-weight backbone's features: the heads' "
                  f"validation accuracy, compare it with each task's chance level, says nothing about "
                  f"mammograms (it is reported so a head that learned nothing is seen)." if std > 0 else
                  f"**The cached features are all zero** (random-weight {args.backbone}'s pooled outputs are "
                  f"about 1e-10, below float16's smallest value): the heads below stay at chance, and their rows "
                  f"are timings only.")
    extrapolation = ""
    if "resnet50" in r and "features" in r:
        rate = r["resnet50"]["patches_per_second"]
        extrapolation = (
            f"\n**Extrapolation, not measured:** at the {rate:.1f} resnet50 patches/s measured above, a resnet50 "
            f"feature cache of all {n:,} patches at {args.size} px would take about {n / rate / 3600:.1f} hours "
            f"on this machine, and of the release's {sum(RELEASE[:2]):,} patches at {RELEASE[2]} px about "
            f"{sum(RELEASE[:2]) / rate * (RELEASE[2] / args.size) ** 2 / 3600:.1f} hours, once; every head run after "
            f"it trains from the cache in seconds, as the "
            f"{args.backbone} runs above do (the head's cost depends on the feature width, 2048 for resnet50 "
            f"against {r['features']['dim']}, not on the backbone's depth).\n")
    return f"""{SECTION}

Measured by `{command}` (`make bench` runs it small; the table below is one run at {label}), started
{started_at}, on: {machine}.
Each stage runs in its own child process, one after another; peak RSS is that process's `ru_maxrss`
(from `os.wait4`), so it includes TensorFlow itself where the stage imports it. `{args.backbone}` is the
backbone of the feature cache because its feature pass at {args.size} px fits in this benchmark on a
2-core machine; resnet50's rate is measured on a few hundred patches and extrapolated (labelled below).
Backbones have random weights (nothing is downloaded here); speed does not depend on the weights' values.
{spread}

**Total: {total / 60:.1f} minutes** from start to end ({stages_total / 60:.1f} minutes in the stages);
largest peak RSS of any stage: {gib(peak)}.

{chr(10).join(lines)}

Head runs (`--fine-tune head`, {args.backbone}, batch {args.batch_size}, default learning rate; each run's
history.csv `seconds`):

{chr(10).join(heads)}

Dashboard pages on the task-0 run ({args.n_test:,} test predictions; {n:,} patches in the dataset; six
runs in the workspace), `AppTest.run()` server-side time after warm-up, median of {args.repeats}:

{chr(10).join(pages)}
{extrapolation}"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=RELEASE[0])
    parser.add_argument("--n-test", type=int, default=RELEASE[1])
    parser.add_argument("--size", type=int, default=RELEASE[2])
    parser.add_argument("--draw-size", type=int, default=None,
                        help="draw the synthetic patches at this size and upsample them to --size (a faster setup; "
                             "the files are --size either way)")
    parser.add_argument("--backbone", default="mobilenetv3small")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resnet-patches", type=int, default=256)
    parser.add_argument("--base", type=Path, help="work folder, kept (a rerun skips finished stages); default: temp")
    add_no_write(parser)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage:
        args.base.mkdir(parents=True, exist_ok=True)
        result = globals()[f"stage_{args.stage}"](args, args.base)
        (args.base / f"stage_{args.stage}.json").write_text(json.dumps(result, indent=1))
        return 0

    raw = argv if argv is not None else sys.argv[1:]
    command = command_line(__file__, raw)
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine, _ = machine_text()
    log(machine)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scale_") as scratch:
        base = (args.base or Path(scratch)).resolve()
        if args.base is None:
            sys.argv = [sys.argv[0], *raw, "--base", str(base)]
        results = {}
        for name in STAGES:
            results[name] = run_stage(name, args, base)
        total = time.perf_counter() - started
        record = base / "run.json"  # the first complete run's start and total (a rerun only reuses stages)
        if record.exists():
            first = json.loads(record.read_text())
            started_at, total, command = first["started_at"], first["total_seconds"], first["command"]
            machine = first.get("machine", machine)
        else:
            record.write_text(json.dumps({"started_at": started_at, "total_seconds": total, "command": command,
                                          "machine": machine}))
        text = report(args, results, total, machine, command, started_at, base)
    print("\n" + text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
