"""The machine a run is on: which precision is fast here, and whether a run fits in its memory.

Everything reads plain text (/proc/cpuinfo, /proc/meminfo, cgroup files) that
tests can pass in, so each choice is a pure function of what it was given.
TensorFlow is imported only to count GPUs.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from .errors import UserError

AUTO = "auto"
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# oneDNN runs bfloat16 matrix products natively only with AMX or AVX-512 BF16; elsewhere it emulates
# them and bf16 is slower than float32 (training ResNet50 on a 2-core Xeon without them: 0.7 vs 1.4
# patches/s).
FAST_BF16_FLAGS = frozenset({"amx_bf16", "amx_tile", "avx512_bf16"})
# The flags worth recording with a benchmark: they decide which kernels oneDNN can use.
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                  "amx_tile", "amx_bf16", "amx_int8")

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")

PREFETCHED_BATCHES = 4  # tf.data's AUTOTUNE prefetch holds a few batches: an allowance, not a measurement
# Training memory per input pixel of each patch in the batch, in float32 values: activations kept for the
# backward pass and the step's temporaries. Measured as the peak RSS rise of a Keras train step at 224 px,
# batch 16, on CPU, less the model part, rounded up. Mixed precision barely lowers it on a CPU
# (resnet50 27% less, densenet121 5%: batch norm stays float32 and casts keep both copies), so it is not
# counted.
ACTIVATIONS_PER_PIXEL = {"resnet50": 700, "vgg16": 400, "efficientnetb0": 900, "densenet121": 1000,
                         "mobilenetv3small": 300, "small_cnn": 150}
RUNTIME_BYTES = 1_000_000_000  # TensorFlow, Keras and a built model: 0.88-1.03 GB RSS before the first step
BYTES_PER_PARAM = 4 * 4  # float32 weights, their gradients and Adam's two moments
HEADROOM = 0.8  # share of the available memory a run may plan to use: the estimate is rough


# ---------------------------------------------------------------- reading the machine

def _read(path: Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cpuinfo_field(text: str, name: str) -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo text."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo_text: str | None = None) -> frozenset[str]:
    """The x86 feature flags of the first CPU in /proc/cpuinfo; empty without one, and on ARM, which
    lists `Features` instead (so `auto` stays float32 there)."""
    text = _read(CPUINFO) if cpuinfo_text is None else cpuinfo_text
    return frozenset((_cpuinfo_field(text or "", "flags") or "").split())


def has_fast_bf16(flags) -> bool:
    return bool(FAST_BF16_FLAGS & set(flags))


def gpu_count() -> int:
    """GPUs TensorFlow can see (imports TensorFlow, which takes a few seconds the first time)."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def choose_precision(requested: str, flags=None, gpus: int | None = None) -> str:
    """The precision to run in: `auto` becomes mixed_float16 with a GPU, mixed_bfloat16 on a CPU with
    fast bf16, float32 elsewhere; an explicit precision is returned unchanged. Pure when flags and gpus
    are given; otherwise the machine is asked (and only for `auto`)."""
    if requested in PRECISIONS:
        return requested
    if requested != AUTO:
        raise UserError(f"unknown precision {requested!r}: use {AUTO}, {', '.join(PRECISIONS)}")
    if (gpu_count() if gpus is None else gpus) > 0:
        return "mixed_float16"
    return "mixed_bfloat16" if has_fast_bf16(cpu_flags() if flags is None else flags) else "float32"


def meminfo_bytes(meminfo_text: str | None = None) -> dict[str, int]:
    """/proc/meminfo as {field: bytes} (fields given in kB are converted; counts are kept)."""
    text = _read(MEMINFO) if meminfo_text is None else meminfo_text
    fields = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and parts and parts[0].isdigit():
            fields[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


def own_cgroup_dir(proc_cgroup_text: str | None = None, root: Path = CGROUP_ROOT) -> Path:
    """This process's cgroup v2 folder (the `0::<path>` line of /proc/self/cgroup), else the root.

    A container that shares the host's cgroup namespace sees a host path here but has its own cgroup
    mounted at the root, so a path that does not exist also means the root.
    """
    text = _read(Path("/proc/self/cgroup")) if proc_cgroup_text is None else proc_cgroup_text
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            folder = root / line[3:].strip().lstrip("/")
            return folder if folder.is_dir() else root
    return root


def cgroup_limit(cgroup_dir: Path | None = None) -> tuple[int, int] | None:
    """(memory.max, memory.current) of a cgroup v2 folder in bytes, or None when it sets no limit."""
    folder = own_cgroup_dir() if cgroup_dir is None else Path(cgroup_dir)
    limit = (_read(folder / "memory.max") or "").strip()
    if not limit.isdigit():  # "max", or no such file (cgroup v1, no cgroup, not Linux)
        return None
    current = (_read(folder / "memory.current") or "0").strip()
    return int(limit), int(current) if current.isdigit() else 0


def available_memory_bytes(meminfo_text: str | None = None, cgroup_dir: Path | None = None) -> int | None:
    """Memory a new run can use: MemAvailable, or the cgroup's room (limit minus use) when smaller.
    None where neither is known (not Linux)."""
    candidates = [meminfo_bytes(meminfo_text).get("MemAvailable")]
    limit = cgroup_limit(cgroup_dir)
    if limit:
        candidates.append(max(limit[0] - limit[1], 0))
    known = [n for n in candidates if n is not None]
    return min(known) if known else None


def total_memory_bytes(meminfo_text: str | None = None, cgroup_dir: Path | None = None) -> int | None:
    """MemTotal, or the cgroup's limit when smaller; None where neither is known."""
    limit = cgroup_limit(cgroup_dir)
    known = [n for n in (meminfo_bytes(meminfo_text).get("MemTotal"), limit and limit[0]) if n is not None]
    return min(known) if known else None


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, which containers often narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_machine(cpuinfo_text: str | None = None, gpus: int | None = None) -> dict:
    """What a benchmark table or a run's config.json records about the machine (counts GPUs with
    TensorFlow unless gpus is given)."""
    text = _read(CPUINFO) if cpuinfo_text is None else cpuinfo_text
    flags = cpu_flags(text or "")
    return {
        "cpu_model": _cpuinfo_field(text or "", "model name") or platform.processor() or platform.machine(),
        "cpus": usable_cpus(),
        "cpu_flags": [flag for flag in RELEVANT_FLAGS if flag in flags],
        "fast_bf16": has_fast_bf16(flags),
        "gpus": gpu_count() if gpus is None else gpus,
        "memory_total_bytes": total_memory_bytes(),
        "memory_available_bytes": available_memory_bytes(),
    }


# ---------------------------------------------------------------- will the run fit?

def estimate_training_memory(n_cached_patches: int, image_size: int, batch_size: int, n_params: int,
                             cache_dtype_bytes: int = 1, feature_dim: int | None = None,
                             shuffle_buffer: int = 0,
                             activations_per_pixel: float = ACTIVATIONS_PER_PIXEL["resnet50"],
                             runtime_bytes: int = RUNTIME_BYTES) -> dict[str, int]:
    """An estimate, in bytes, of the host memory a training run needs, by part:

    cache: the decoded one-channel patches kept by --cache (n_cached_patches; 0 without it).
    batches: PREFETCHED_BATCHES float32 input batches, the shuffle buffer's shuffle_buffer decoded
        patches (cache_dtype_bytes a pixel, like the cache's) and one step's activations, batch_size *
        image_size**2 * activations_per_pixel float32 values. Pass the backbone's own ACTIVATIONS_PER_PIXEL, or 0 when
        nothing is back-propagated through a backbone on the host (a head on cached features; a GPU).
    model: n_params * 16 bytes (float32 weights, gradients and two Adam moments, even when mixed).
    features: n_cached_patches * feature_dim float16 values, when a feature cache is used (pass
        cache_dtype_bytes=0 when the patches themselves are not kept as well).
    runtime: TensorFlow and Keras themselves (pass 0 when the process measuring has loaded them).
    total: their sum.

    The cache, features and model parts are exact sizes; batches and runtime are measured rules of thumb:
    without a cache, the total was 0.8-1.3x the peak RSS of Keras train steps for every backbone at 128
    and 224 px (batch 16) and resnet50 at 299 px (1.18x).
    """
    pixels = image_size * image_size
    parts = {
        "cache": n_cached_patches * pixels * cache_dtype_bytes,
        "batches": int((PREFETCHED_BATCHES * batch_size * 4 + shuffle_buffer * cache_dtype_bytes
                        + batch_size * activations_per_pixel * 4) * pixels),
        "model": n_params * BYTES_PER_PARAM,
        "features": n_cached_patches * (feature_dim or 0) * 2,
        "runtime": runtime_bytes,
    }
    return parts | {"total": sum(parts.values())}


def human_bytes(n: float) -> str:
    """Decimal units, one decimal: 19984699540 -> '20.0 GB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < (1000 if unit == "B" else 999.95):  # so 999.96 MB reads 1.0 GB, not 1000.0 MB
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_fits(estimate: dict, available: int | None = None, headroom: float = HEADROOM) -> None:
    """Refuse a run whose estimated total exceeds headroom * available memory (measured when not
    given; no check where it cannot be measured)."""
    available = available_memory_bytes() if available is None else available
    if available is None or estimate["total"] <= headroom * available:
        return
    parts = ", ".join(f"{name} {human_bytes(size)}" for name, size in estimate.items()
                      if name != "total" and size > 0)
    hints = (["drop --cache"] if estimate.get("cache") else []) + \
        ["lower --image-size or --batch-size", "use --fine-tune head"]
    raise UserError(f"this run needs about {human_bytes(estimate['total'])} ({parts}) but only "
                    f"{human_bytes(available)} of memory is available and a run may plan on "
                    f"{headroom:.0%} of it: {', '.join(hints[:-1])}, or {hints[-1]}")
