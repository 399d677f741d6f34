"""Dashboard page render: server-side time of each page on a run with 15,364 test predictions.

    python bench/page_render.py [--test-patches 15364] [--repeats 5] [--keep DIR]

Builds, in a temporary folder, a synthetic seed-csv dataset (32 px PNGs) with
as many test patches as the DDSM test set of the seed analysis, trains a small
small_cnn run on it (one epoch) and evaluates it with the real
ddsm_core.evaluation.evaluate_run, so the predictions parquet and metrics json
are the real thing. Then times `AppTest.run()` of every page (after warm-up
runs; median of --repeats) and prints a table with the ratio to the target
(under 1 s per page, under 0.5 s for a gallery page of 40 patches). Writes
the "Dashboard page render" section of docs/PERFORMANCE.md (only that section).

Server side only: the script run that builds the page (reads, plotly figures,
image encoding), not the browser's drawing or the websocket transfer.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from report import add_no_write, command_line, write_section  # noqa: E402  (bench/, the script's folder)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

SECTION = "## Dashboard page render"
APP = str(PROJECT / "streamlit_app.py")
PAGE_TARGET_S, GALLERY_TARGET_S = 1.0, 0.5
GALLERY_PATCHES = 40


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        ram = f"{kib / 1024 ** 2:.0f} GiB RAM"
    except (OSError, AttributeError):
        ram = "unknown RAM"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import streamlit
    return (f"{cores} cores (nproc), {cpu}, {ram}; Python {platform.python_version()}, "
            f"Streamlit {streamlit.__version__}")


def build_workspace(base: Path, n_test: int, n_train: int, log=print) -> tuple[Path, str]:
    """Synthetic seed-csv dataset + one trained, evaluated small_cnn run (task 0); returns (root, run_id)."""
    from ddsm_core import synth
    from ddsm_core.config import RunConfig
    from ddsm_core.data.seed_csv import import_seed_csv
    from ddsm_core.runs import create_run
    from ddsm_core.training import train_and_evaluate

    src, root = base / "src", base / "workspace"
    started = time.perf_counter()
    synth.write_seed_csv(src, n_train=n_train, n_test=n_test, size=32, seed=3)
    log(f"  wrote {n_train} train + {n_test} test patches (32 px PNG) in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    import_seed_csv(root, "ddsm_size", src / "train.csv", src / "train_images", src / "test.csv", src / "test_images")
    log(f"  imported in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    run_id = create_run(root, RunConfig(dataset="ddsm_size", task=0, backbone="small_cnn", epochs=1, image_size=32,
                                        batch_size=64, lr=1e-3))
    state = train_and_evaluate(root, run_id, log=lambda *_: None)  # evaluate_run on the test split
    if state != "completed":
        raise SystemExit(f"the benchmark run ended {state}")
    log(f"  trained 1 epoch and evaluated {n_test} test patches in {time.perf_counter() - started:.1f} s")
    return root, run_id


def time_page(root: Path, run_id: str, page: str, repeats: int, setup=None) -> tuple[list[float], int]:
    """Seconds of `at.run()` for `page` (repeats, after warm-up) and the number of images it drew."""
    from streamlit.testing.v1 import AppTest

    os.environ["DDSM_WORKSPACE"] = str(root)
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page(page).run()  # warm-up: caches filled (results parquet, dataset), widget ids settled
    if setup:
        setup(at)
    at.run()
    if at.exception:
        raise SystemExit(f"{page} raised: {[e.value for e in at.exception]}")
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        at.run()
        seconds.append(time.perf_counter() - started)
        if at.exception:
            raise SystemExit(f"{page} raised: {[e.value for e in at.exception]}")
    return seconds, len(at.get("image"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-patches", type=int, default=15364)
    parser.add_argument("--train-patches", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temp dir)")
    add_no_write(parser)
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)

    with tempfile.TemporaryDirectory(prefix="page_render_") as scratch:
        base = args.keep or Path(scratch)
        print(f"Building the workspace in {base} ...")
        root, run_id = build_workspace(base, args.test_patches, args.train_patches)

        import pandas as pd

        from ddsm_core import runs

        predicted = pd.read_parquet(runs.predictions_file(root, run_id, "test"))["y_pred"].nunique()
        k = max(1, min(10, round((GALLERY_PATCHES - 20) / (2 * predicted))))

        def gallery_40(at):  # each predicted class: k highest + k lowest; plus the browser's first 20
            at.slider(key="gallery_k").set_value(k).run()

        cases = [
            ("Runs", "streamlit_app.py", None, PAGE_TARGET_S),
            ("Training curves", "pages/training_curves.py", None, PAGE_TARGET_S),
            ("Confusion matrix", "pages/confusion_matrix.py", None, PAGE_TARGET_S),
            ("Certainty", "pages/certainty.py", None, PAGE_TARGET_S),
            ("Gallery (default k=5)", "pages/gallery.py", None, PAGE_TARGET_S),
            (f"Gallery, {GALLERY_PATCHES} patches (k={k})", "pages/gallery.py", gallery_40, GALLERY_TARGET_S),
            ("Data", "pages/data.py", None, PAGE_TARGET_S),
        ]
        rows = []
        print(f"\nTiming AppTest.run() per page, median of {args.repeats} after warm-up ...")
        for name, page, setup, target in cases:
            seconds, images = time_page(root, run_id, page, args.repeats, setup)
            if setup is gallery_40 and images != GALLERY_PATCHES:
                print(f"  note: the gallery case drew {images} patches, not {GALLERY_PATCHES} "
                      f"({predicted} predicted classes do not divide evenly)")
            median = statistics.median(seconds)
            if setup is gallery_40:
                name = f"Gallery, {images} patches (k={k})"
            rows.append((name, median * 1000, min(seconds) * 1000, max(seconds) * 1000, images, target))
            print(f"  {name:<30} {median * 1000:8.0f} ms  ({images} images)")

    header = "| page | median ms | min-max ms | images drawn | target | median / target |"
    lines = [header, "|---|---|---|---|---|---|"]
    for name, median, low, high, images, target in rows:
        verdict = "ok" if median / 1000 < target else "OVER"
        lines.append(f"| {name} | {median:.0f} | {low:.0f}-{high:.0f} | {images} | < {target * 1000:.0f} ms | "
                     f"{median / 1000 / target:.2f}x {verdict} |")
    table = "\n".join(lines)
    print("\n" + table)
    over = [r[0] for r in rows if r[1] / 1000 >= r[5]]
    summary = ("Every page is under its target." if not over else
               "Over target: " + ", ".join(over) + ".")
    print("\n" + summary)
    section = f"""{SECTION}

Measured by `{command}` (`make bench`) on {machine()}.
One small_cnn run (task 0, five classes, 1 epoch, 32 px) on a synthetic dataset with
{args.test_patches:,} test patches (the size of the DDSM test set in the seed analysis), evaluated by
`ddsm_core.evaluation.evaluate_run`, so the predictions parquet and metrics json are the real files.
Each page is timed as `AppTest.run()` (the whole script run: shared sidebar, reads, plotly figures, image
encoding) after warm-up runs that fill the caches; median of {args.repeats} runs. This is server-side time only:
the browser's drawing and the transfer come on top. Targets: under 1 s per page, under 0.5 s for a
gallery page of {GALLERY_PATCHES} patches (the Gallery page draws both tabs: k highest and k lowest per
predicted class, here {predicted} predicted class(es), plus the browser's first 20 patches).

{table}

{summary}
"""
    if not args.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
