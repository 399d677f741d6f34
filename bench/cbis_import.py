"""Time `import cbis-ddsm` on a synthetic full-size CBIS-DDSM tree and print a markdown table.

    python bench/cbis_import.py --out /tmp/cbis-bench --n-images 3100 --distinct 40 --workers 2

`--distinct` full-size mammograms (with their crop and mask series) are generated; the other images are hard
links to them, so the tree costs the disk only the distinct files while every image is still read and
decoded (from a warm page cache). The CPU model, its relevant flags and the load average are printed with
the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ddsm_core import synth_cbis
from ddsm_core.data import cbis

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_line() -> str:
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    present = ", ".join(flag for flag in FLAGS if flag in flags) or "none of " + ", ".join(FLAGS)
    return f"{model}, {os.cpu_count()} CPUs, flags {present}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/cbis-bench", help="a scratch folder (replaced)")
    parser.add_argument("--n-images", type=int, default=3100)
    parser.add_argument("--distinct", type=int, default=40)
    parser.add_argument("--height", type=int, default=5000)
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--layout", choices=("tcia", "jpeg"), default="tcia")
    parser.add_argument("--patch-size", type=int, default=299)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    load_start = os.getloadavg()
    started = time.perf_counter()
    truth = synth_cbis.write(out / "source", args.layout, args.n_images, height=args.height, width=args.width,
                             distinct=args.distinct)
    generated = time.perf_counter() - started
    started = time.perf_counter()
    dataset = cbis.import_cbis(out / "workspace", "bench", out / "source", patch_size=args.patch_size,
                               workers=args.workers)
    imported = time.perf_counter() - started
    load_end = os.getloadavg()
    counts = dataset.info["counts"]
    n_patches = dataset.info["n_patches"]
    print(f"CPU: {cpu_line()}; Python {platform.python_version()}, numpy {np.__version__}; load average "
          f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; page cache warm (hard links)")
    print()
    print("| stage | mammograms | abnormalities | patches | seconds | per mammogram |")
    print("|---|---|---|---|---|---|")
    print(f"| generate {args.distinct} distinct {args.width}x{args.height} 12-bit DICOMs, hard-link the rest "
          f"| {args.n_images:,} | {len(truth):,} | | {generated:.0f} | |")
    print(f"| import cbis-ddsm ({args.layout}, patch {args.patch_size}, {args.workers} workers) "
          f"| {args.n_images:,} | {len(truth):,} | {n_patches:,} | {imported:.0f} | "
          f"{1000 * imported / args.n_images:.0f} ms |")
    print()
    print("patches per class:", {split: dict(per_label) for split, per_label in counts.items()})
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
