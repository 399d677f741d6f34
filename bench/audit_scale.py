"""The data audit at the public release's size: 55,885 training + 15,364 test patches of 299 px, end to end.

    python bench/audit_scale.py [--n-train 55885 --n-test 15364 --copies 500 --flips 0.03 --workers 2]
                                [--hash-sample 3000] [--base DIR] [--write]

1. Hashing throughput on native 299 px synthetic patches (`--hash-sample` of them, written as PNG and
   measured by audit.patches.measure_files), so the per-patch cost is that of the real generator's content.
2. The full size end to end: synthetic patches generated at 64 px (the generator costs ~35 ms per patch at
   299 px, which would make writing 71k of them take the better part of an hour) and written as 299 px PNGs
   (bicubic upsampling plus film grain), imported with the seed-CSV importer, with `--copies` test patches
   leaked into training after a random flip or rotation, a brightness/contrast change and a shift of up to
   1 % of the side, and `--flips` of the training labels changed to another class; then
   `audit.run_audit` with its stage timings, and the recall/precision of the planted problems.

Prints a markdown section; `--write` puts it in docs/PERFORMANCE.md ("## Data audit at the release's size").
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from report import write_section  # noqa: E402  (bench/, the script's folder)

from ddsm_core import audit, synth  # noqa: E402
from ddsm_core.audit import patches  # noqa: E402
from ddsm_core.data.images import read_gray, write_png  # noqa: E402
from ddsm_core.data.seed_csv import import_seed_csv  # noqa: E402

SECTION = "## Data audit at the release's size"
CHUNK = 1000
SIZE = 299


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    shown = [f for f in flags if f in ("popcnt", "avx2", "avx512f", "avx512_vpopcntdq", "avx512_bf16", "amx_tile")]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cores = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("CPU(s):")), "?")
    return f"{cores} CPUs ({model}; flags {' '.join(shown)}), Python {platform.python_version()}, numpy {np.__version__}"


def _native_chunk(args) -> list[str]:
    folder, start, n, seed = args
    images, _ = synth.generate(n, SIZE, seed + start, "test")
    paths = []
    for offset, image in enumerate(images):
        path = Path(folder) / f"native_{start + offset:06d}.png"
        write_png(path, image)
        paths.append(str(path))
    return paths


def _upsampled_chunk(args) -> pd.DataFrame:
    """One chunk of a split: generated at 64 px, written at 299 px; file and patient names made unique."""
    folder, split, index, n, seed = args
    images, table = synth.generate(n, 64, seed * 1000 + index, split)
    rng = np.random.default_rng([seed, index, split == "test"])
    table["filename"] = [f"c{index:03d}_{name}" for name in table["filename"]]
    table["patient_id"] = [f"c{index:03d}_{patient}" for patient in table["patient_id"]]
    for name, image in zip(table["filename"], images):
        big = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float64)
        big += rng.normal(0, 2.0, big.shape)  # film grain, so neighbouring pixels are not interpolated copies
        # fast zlib level: writing is not what is measured (decoding speed hardly depends on the level)
        Image.fromarray(np.clip(np.rint(big), 0, 255).astype(np.uint8)).save(Path(folder) / name, compress_level=1)
    return table[["filename", "y", "patient_id"]]


def leaked_copy(image: np.ndarray, rng) -> np.ndarray:
    most = max(1, image.shape[0] // 100)
    dy, dx = rng.integers(-most, most + 1, 2)
    padded = np.pad(image, ((abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    moved = padded[abs(dy) - dy:abs(dy) - dy + image.shape[0], abs(dx) - dx:abs(dx) - dx + image.shape[1]]
    changed = patches.dihedral(moved, int(rng.integers(1, 8))).astype(np.float64)
    return np.clip(np.rint(changed * rng.uniform(0.85, 1.15) + rng.uniform(-20, 20)), 0, 255).astype(np.uint8)


def hashing_throughput(base: Path, n: int, workers: int) -> dict:
    folder = base / "native"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    jobs = [(str(folder), start, min(CHUNK // 4, n - start), 11) for start in range(0, n, CHUNK // 4)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = [p for chunk in pool.map(_native_chunk, jobs) for p in chunk]
    generated = time.perf_counter() - started
    started = time.perf_counter()
    patches.measure_files(paths, workers)
    seconds = time.perf_counter() - started
    return {"n": n, "seconds": seconds, "per_second": n / seconds, "generate_seconds": generated}


def write_release(base: Path, n_train: int, n_test: int, copies: int, flips: float, workers: int) -> dict:
    source = base / "src"
    shutil.rmtree(source, ignore_errors=True)
    started = time.perf_counter()
    tables = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for split, n in (("train", n_train), ("test", n_test)):
            (source / f"{split}_images").mkdir(parents=True)
            jobs = [(str(source / f"{split}_images"), split, i, min(CHUNK, n - start), 3)
                    for i, start in enumerate(range(0, n, CHUNK))]
            tables[split] = pd.concat(pool.map(_upsampled_chunk, jobs), ignore_index=True)
    rng = np.random.default_rng(0)
    train, test = tables["train"], tables["test"]
    planted = []
    for k, row in enumerate(rng.choice(len(test), copies, replace=False)):
        name = f"leak_{k:05d}.png"
        image = read_gray(source / "test_images" / test["filename"].iloc[row])
        write_png(source / "train_images" / name, leaked_copy(image, rng))
        train.loc[len(train)] = [name, int(test["y"].iloc[row]), f"leak_{k:05d}"]
        planted.append((name, test["filename"].iloc[row]))
    n_flips = int(round(flips * n_train))
    flipped = rng.choice(n_train, n_flips, replace=False)  # among the original training rows, not the copies
    train.loc[flipped, "y"] = (train.loc[flipped, "y"] + rng.integers(1, 5, n_flips)) % 5
    for split, table in (("train", train), ("test", test)):
        table.to_csv(source / f"{split}.csv", index=False)
    return {"seconds": time.perf_counter() - started, "planted": planted,
            "flipped": set(train["filename"].iloc[flipped]), "n_train": len(train), "n_test": len(test)}


def full_audit(base: Path, written: dict, workers: int) -> dict:
    root = base / "workspace"
    shutil.rmtree(root, ignore_errors=True)
    source = base / "src"
    started = time.perf_counter()
    import_seed_csv(root, "release", source / "train.csv", source / "train_images", source / "test.csv",
                    source / "test_images")
    imported = time.perf_counter() - started
    marks = {}
    begun = time.perf_counter()

    def log(line: str) -> None:
        marks[line] = time.perf_counter() - begun
        print(f"  [{marks[line]:7.1f} s] {line}", flush=True)

    result = audit.run_audit(root, "release", workers=workers, log=log)
    total = time.perf_counter() - begun
    measured = next((t for line, t in marks.items() if "patches measured" in line), None)
    cross = {(d["a"], d["b"]) for d in result["duplicates"] if d["split_a"] != d["split_b"]}
    pairs = {frozenset((d["a"], d["b"])) for d in result["duplicates"]}
    hits = cross & set(written["planted"])
    ranking = audit.label_ranking(root, "release")
    k = len(written["flipped"])
    top = set(ranking["filename"].head(2 * k))
    return {"import_seconds": imported, "total": total, "measure_seconds": measured, **result["timings"],
            "pairs": len(pairs), "cross": len(cross), "recall": len(hits) / max(len(written["planted"]), 1),
            "precision": len(hits) / max(len(cross), 1),
            "precision_all": len({frozenset(p) for p in written["planted"]} & pairs) / max(len(pairs), 1),
            "label_recall": len(top & written["flipped"]) / max(k, 1), "k": k,
            "flagged": len([i for i in result["label_issues"] if i["split"] == "train"]),
            "shortcut": {task: entry["auc"] for task, entry in result["shortcut"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=55885)
    parser.add_argument("--n-test", type=int, default=15364)
    parser.add_argument("--copies", type=int, default=500)
    parser.add_argument("--flips", type=float, default=0.03)
    parser.add_argument("--hash-sample", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--base", default="/tmp/ddsm_audit_bench")
    parser.add_argument("--keep", action="store_true", help="keep the written patches (several GB at full size)")
    parser.add_argument("--write", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = parser.parse_args()
    base = Path(args.base)
    base.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    print(f"machine: {machine()}; load average {load_before:.1f}", flush=True)

    hashing = hashing_throughput(base, args.hash_sample, args.workers)
    print(f"hashing: {hashing['n']} native 299 px patches in {hashing['seconds']:.1f} s "
          f"({hashing['per_second']:.0f} patches/s with {args.workers} workers)", flush=True)
    written = write_release(base, args.n_train, args.n_test, args.copies, args.flips, args.workers)
    print(f"wrote {written['n_train']} + {written['n_test']} patches of 299 px in {written['seconds']:.0f} s", flush=True)
    found = full_audit(base, written, args.workers)
    load_after = os.getloadavg()[0]
    n = written["n_train"] + written["n_test"]
    release = args.n_train + args.n_test
    extrapolated = release / hashing["per_second"]
    body = f"""{SECTION}

Measured by `python bench/audit_scale.py --n-train {args.n_train} --n-test {args.n_test} --copies {args.copies} \
--flips {args.flips} --workers {args.workers}` on {machine()}; load average {load_before:.1f} at the start and \
{load_after:.1f} at the end (the 2 cores are shared with other work, so these are upper bounds).

| stage | patches | seconds | notes |
|---|---|---|---|
| hashing, native 299 px synthetic patches | {hashing['n']:,} | {hashing['seconds']:.1f} | {hashing['per_second']:.0f} patches/s \
with {args.workers} workers: decode, 8 pHashes, descriptor, features; {extrapolated / 60:.1f} min for {release:,} |
| import (seed CSV, validation + noise statistics; not the audit) | {n:,} | {found['import_seconds']:.0f} | |
| audit: per-patch pass (hashes, descriptors, features) | {n:,} | {found['measure_seconds']:.0f} | \
299 px PNGs upsampled from 64 px synthetic patches |
| audit: near-duplicate search and confirmation | {n:,} | {found['duplicates_seconds']:.0f} | \
{found['pairs']} pairs, {found['cross']} across splits |
| audit: label errors (5-fold logistic regression + cleanlab) | {written['n_train']:,} | {found['label_issues_seconds']:.0f} | |
| audit: shortcut probe, six tasks | {n:,} | {found['shortcut_seconds']:.0f} | |
| **audit, end to end** | **{n:,}** | **{found['total']:.0f}** | {found['total'] / 60:.1f} min |

Planted problems at this size: {args.copies} test patches leaked into training (random flip or rotation, contrast \
x0.85-1.15, brightness +-20 levels, shift up to 1 % of the side): recall **{found['recall']:.3f}**, precision \
**{found['precision']:.3f}** across splits ({found['precision_all']:.3f} over all {found['pairs']} reported pairs). \
{found['k']} training labels ({args.flips:.0%}) changed to another class: recall among the top {2 * found['k']} \
ranked **{found['label_recall']:.3f}**; find_label_issues flagged {found['flagged']}. Properties-only AUC per task: \
{', '.join(f"task {t} {auc:.2f}" for t, auc in found['shortcut'].items())}.
"""
    print(body, flush=True)
    if args.write:
        write_section(body)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
