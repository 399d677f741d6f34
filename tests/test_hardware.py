"""ddsm_core.hardware on faked machines: precision `auto` per CPU and GPU, the memory estimate, the refusal."""
import subprocess
import sys
from pathlib import Path

import pytest

from ddsm_core import hardware
from ddsm_core.errors import UserError
from ddsm_core.hardware import (
    available_memory_bytes,
    check_fits,
    choose_precision,
    cpu_flags,
    describe_machine,
    estimate_training_memory,
    human_bytes,
    meminfo_bytes,
    own_cgroup_dir,
    total_memory_bytes,
)


def cpuinfo(model: str, flags: str) -> str:
    """Two processors, as /proc/cpuinfo lists them (only the first one's flags count)."""
    block = (f"processor\t: {{n}}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
             f"model name\t: {model}\ncpu cores\t: 2\nflags\t\t: {flags}\n"
             f"vmx flags\t: vnmi preemption_timer\nbugs\t\t: spectre_v1\n\n")
    return block.format(n=0) + block.format(n=1)


BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c"
SAPPHIRE_RAPIDS = cpuinfo("Intel(R) Xeon(R) Platinum 8480+", BASE + " avx2 avx512f avx512bw avx512_vnni "
                          "avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8")
COOPER_LAKE = cpuinfo("Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz", BASE + " avx2 avx512f avx512bw "
                      "avx512_vnni avx512_bf16")
CASCADE_LAKE = cpuinfo("Intel(R) Xeon(R) CPU @ 2.80GHz", BASE + " avx2 avx512f avx512bw avx512_vnni")
AVX2_XEON = cpuinfo("Intel(R) Xeon(R) CPU @ 2.20GHz", BASE + " avx2")

# the example: the release's training patches at 299 px
N_PATCHES, SIZE, PIXELS = 55_885, 299, 299 * 299
RESNET50_PARAMS = 23_587_712


@pytest.fixture
def machine_unasked(monkeypatch):
    """Fail any test that asks the real machine about its CPU or GPUs."""
    def refuse(*_, **__):
        raise AssertionError("asked the machine")

    monkeypatch.setattr(hardware, "gpu_count", refuse)
    monkeypatch.setattr(hardware, "_read", refuse)


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize("text, expected", [
    (SAPPHIRE_RAPIDS, "mixed_bfloat16"),
    (COOPER_LAKE, "mixed_bfloat16"),
    (CASCADE_LAKE, "float32"),  # AVX-512 without its bf16 extension emulates bf16
    (AVX2_XEON, "float32"),
    ("", "float32"),  # no /proc/cpuinfo (not Linux)
])
def test_auto_on_a_cpu(machine_unasked, text, expected):
    assert choose_precision("auto", flags=cpu_flags(text), gpus=0) == expected


@pytest.mark.parametrize("text", [SAPPHIRE_RAPIDS, COOPER_LAKE, AVX2_XEON, ""])
def test_auto_with_a_gpu_is_float16_whatever_the_cpu(machine_unasked, text):
    assert choose_precision("auto", flags=cpu_flags(text), gpus=1) == "mixed_float16"


def test_each_fast_bf16_flag_alone_is_enough():
    for flag in ("amx_bf16", "amx_tile", "avx512_bf16"):
        assert hardware.has_fast_bf16({"avx2", flag})
    assert not hardware.has_fast_bf16({"avx2", "avx512f", "avx512_vnni", "avx512_fp16", "amx_int8"})


def test_flags_are_the_first_processors_whole_words():
    flags = cpu_flags(COOPER_LAKE)
    assert "avx512_bf16" in flags and "amx_bf16" not in flags
    assert "bf16" not in flags and "spectre_v1" not in flags and "vnmi" not in flags  # the flags line's words
    assert cpu_flags("processor\t: 0\nflags\t\t: sse2 avx2\n\nprocessor\t: 1\nflags\t\t: sse2 amx_bf16\n") \
        == {"sse2", "avx2"}


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_explicit_precision_passes_through_without_asking_the_machine(machine_unasked, precision):
    assert choose_precision(precision) == precision


def test_auto_asks_the_machine_only_for_what_it_was_not_given(monkeypatch):
    monkeypatch.setattr(hardware, "gpu_count", lambda: 1)
    assert choose_precision("auto", flags=cpu_flags(AVX2_XEON)) == "mixed_float16"
    monkeypatch.setattr(hardware, "gpu_count", lambda: 0)
    monkeypatch.setattr(hardware, "_read", lambda path: SAPPHIRE_RAPIDS)
    assert choose_precision("auto") == "mixed_bfloat16"


@pytest.mark.parametrize("precision", ["fp16", "bfloat16", "Auto", ""])
def test_unknown_precision_is_refused(machine_unasked, precision):
    with pytest.raises(UserError) as error:
        choose_precision(precision, flags=frozenset(), gpus=0)
    assert error.value.problems == [f"unknown precision {precision!r}: use auto, float32, mixed_bfloat16, "
                                    "mixed_float16"]


def test_describe_machine_records_model_and_relevant_flags():
    described = describe_machine(SAPPHIRE_RAPIDS, gpus=0)
    assert described["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert described["cpu_flags"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                      "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
    assert described["fast_bf16"] is True and described["gpus"] == 0 and described["cpus"] >= 1
    assert describe_machine(AVX2_XEON, gpus=2)["cpu_flags"] == ["sse4_2", "avx", "avx2", "fma"]
    assert describe_machine(AVX2_XEON, gpus=2)["fast_bf16"] is False
    assert set(described) == {"cpu_model", "cpus", "cpu_flags", "fast_bf16", "gpus", "memory_total_bytes",
                              "memory_available_bytes"}


def test_importing_the_module_does_not_import_tensorflow():
    code = "import sys, ddsm_core.hardware; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# ---------------------------------------------------------------- memory

def test_uint8_cache_of_the_release_is_5_gb_and_float32_20_gb():
    uint8 = estimate_training_memory(N_PATCHES, SIZE, 32, RESNET50_PARAMS, cache_dtype_bytes=1)
    float32 = estimate_training_memory(N_PATCHES, SIZE, 32, RESNET50_PARAMS, cache_dtype_bytes=4)
    assert uint8["cache"] == 4_996_174_885 == N_PATCHES * PIXELS
    assert float32["cache"] == 19_984_699_540
    assert (human_bytes(uint8["cache"]), human_bytes(float32["cache"])) == ("5.0 GB", "20.0 GB")


def test_every_part_of_the_estimate():
    got = estimate_training_memory(N_PATCHES, SIZE, 32, RESNET50_PARAMS, feature_dim=2048, shuffle_buffer=4096)
    prefetched = 4 * 32 * PIXELS * 4  # four float32 batches
    shuffled = 4096 * PIXELS * 1  # uint8 patches
    activations = 32 * PIXELS * 700 * 4  # resnet50's multiplier, float32
    assert got == {
        "cache": 4_996_174_885,
        "batches": prefetched + shuffled + activations,
        "model": 377_403_392,  # 23,587,712 params * 4 bytes * (weights, gradients, two Adam moments)
        "features": 228_904_960,  # 55,885 * 2048 float16
        "runtime": 1_000_000_000,
        "total": 4_996_174_885 + prefetched + shuffled + activations + 377_403_392 + 228_904_960 + 10**9,
    }


def test_no_cache_no_features_no_activations_no_runtime():
    got = estimate_training_memory(0, 64, 8, 10, activations_per_pixel=0, runtime_bytes=0)
    assert got == {"cache": 0, "batches": 4 * 8 * 64 * 64 * 4, "model": 160, "features": 0, "runtime": 0,
                   "total": 4 * 8 * 64 * 64 * 4 + 160}


def test_a_feature_cache_without_patches():
    got = estimate_training_memory(1000, 299, 32, 2049 * 2, cache_dtype_bytes=0, feature_dim=2048,
                                   activations_per_pixel=0)
    assert (got["cache"], got["features"]) == (0, 1000 * 2048 * 2)


def test_every_backbone_has_a_measured_multiplier():
    from ddsm_core.models import BACKBONES

    multiplier = hardware.ACTIVATIONS_PER_PIXEL
    assert set(multiplier) == set(BACKBONES)
    small = estimate_training_memory(0, 128, 16, 0, activations_per_pixel=multiplier["small_cnn"])
    large = estimate_training_memory(0, 128, 16, 0, activations_per_pixel=multiplier["densenet121"])
    assert large["batches"] - small["batches"] == 16 * 128 * 128 * (1000 - 150) * 4


def test_refusal_names_the_numbers():
    estimate = {"cache": 19_900_000_000, "batches": 100_000_000, "model": 400_000_000, "features": 0,
                "total": 20_400_000_000}
    with pytest.raises(UserError) as error:
        check_fits(estimate, available=11_200_000_000)
    assert error.value.problems == [
        "this run needs about 20.4 GB (cache 19.9 GB, batches 100.0 MB, model 400.0 MB) but only 11.2 GB of "
        "memory is available and a run may plan on 80% of it: drop --cache, lower --image-size or "
        "--batch-size, or use --fine-tune head"]


def test_refusal_without_a_cache_does_not_suggest_dropping_it():
    estimate = estimate_training_memory(0, 299, 32, RESNET50_PARAMS)
    with pytest.raises(UserError, match=r"^this run needs about 9\.4 GB \(batches 8\.1 GB, model 377\.4 MB, "
                                        r"runtime 1\.0 GB\) "
                                        r".*: lower --image-size or --batch-size, or use --fine-tune head$"):
        check_fits(estimate, available=8_000_000_000)


def test_fits_up_to_the_headroom():
    estimate = {"cache": 800, "batches": 0, "model": 0, "features": 0, "total": 800}
    check_fits(estimate, available=1000)  # exactly 80%
    check_fits(estimate, available=900, headroom=0.9)
    with pytest.raises(UserError):
        check_fits(estimate | {"total": 801}, available=1000)


def test_check_fits_measures_when_not_told(monkeypatch):
    estimate = {"cache": 800, "batches": 0, "model": 0, "features": 0, "total": 800}
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 999)
    with pytest.raises(UserError, match="only 999 B of memory"):
        check_fits(estimate)
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: None)  # not Linux: nothing to check
    check_fits(estimate)


@pytest.mark.parametrize("n, text", [(0, "0 B"), (512, "512 B"), (1500, "1.5 kB"), (999_960_000, "1.0 GB"),
                                     (11_249_000_000, "11.2 GB"), (2_500_000_000_000, "2.5 TB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


MEMINFO = """MemTotal:       24684092 kB
MemFree:        20000000 kB
MemAvailable:   12000000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def cgroup(folder, limit: str | None, current: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    if limit is not None:
        (folder / "memory.max").write_text(limit + "\n")
    if current is not None:
        (folder / "memory.current").write_text(current + "\n")
    return folder


def test_meminfo_fields_in_bytes():
    fields = meminfo_bytes(MEMINFO)
    assert fields["MemTotal"] == 24684092 * 1024 and fields["MemAvailable"] == 12000000 * 1024
    assert fields["HugePages_Total"] == 0 and fields["Hugepagesize"] == 2048 * 1024


def test_available_memory_without_a_cgroup_limit(tmp_path):
    for folder in (cgroup(tmp_path / "none", None), cgroup(tmp_path / "max", "max", "123456")):
        assert available_memory_bytes(MEMINFO, cgroup_dir=folder) == 12000000 * 1024
        assert total_memory_bytes(MEMINFO, cgroup_dir=folder) == 24684092 * 1024


def test_a_smaller_cgroup_limit_wins(tmp_path):
    folder = cgroup(tmp_path, str(8 << 30), str(3 << 30))
    assert available_memory_bytes(MEMINFO, cgroup_dir=folder) == 5 << 30
    assert total_memory_bytes(MEMINFO, cgroup_dir=folder) == 8 << 30


def test_a_larger_cgroup_limit_does_not(tmp_path):
    folder = cgroup(tmp_path, str(64 << 30), str(1 << 30))
    assert available_memory_bytes(MEMINFO, cgroup_dir=folder) == 12000000 * 1024


def test_a_full_cgroup_leaves_nothing(tmp_path):
    assert available_memory_bytes(MEMINFO, cgroup_dir=cgroup(tmp_path, "1000", "1200")) == 0


def test_only_a_cgroup_or_nothing_known(tmp_path):
    assert available_memory_bytes("", cgroup_dir=cgroup(tmp_path / "a", "1000", "400")) == 600
    assert available_memory_bytes("", cgroup_dir=cgroup(tmp_path / "b", None)) is None
    assert total_memory_bytes("", cgroup_dir=tmp_path / "b") is None


def test_own_cgroup_folder(tmp_path):
    hybrid = "4:memory:/process_api/abc\n1:cpu:/\n0::/user.slice/session-1.scope\n"
    assert own_cgroup_dir(hybrid, root=tmp_path) == tmp_path  # no such folder: the container's own root
    (tmp_path / "user.slice" / "session-1.scope").mkdir(parents=True)
    assert own_cgroup_dir(hybrid, root=tmp_path) == tmp_path / "user.slice" / "session-1.scope"
    assert own_cgroup_dir("0::/\n", root=tmp_path) == tmp_path
    assert own_cgroup_dir("4:memory:/docker/abc\n", root=tmp_path) == tmp_path  # cgroup v1 only
