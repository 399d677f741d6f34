"""The task-1 noisy-normal filter: measurements on hand-made arrays, and rates on the synthetic set."""
import time

import numpy as np
import pandas as pd
import pytest

from ddsm_core import synth
from ddsm_core.data import noise
from ddsm_core.errors import UserError


def test_all_black_is_all_dark():
    stats = noise.patch_stats(np.zeros((299, 299), np.uint8))
    assert stats == {"dark_fraction": 1.0, "saturated_block": 0.0}


def test_uniform_grey_is_clean():
    stats = noise.patch_stats(np.full((128, 128), 128, np.uint8))
    assert stats == {"dark_fraction": 0.0, "saturated_block": 0.0}


def test_one_white_block_saturates_exactly_one_window():
    img = np.full((128, 128), 128, np.uint8)
    k = noise.block_side(128, 128)
    assert k == 16  # 1/8 of the side
    img[40 : 40 + k, 70 : 70 + k] = 255
    assert noise.patch_stats(img)["saturated_block"] == 1.0

    smaller = np.full((128, 128), 128, np.uint8)
    smaller[40 : 40 + k - 1, 70 : 70 + k - 1] = 255
    assert noise.patch_stats(smaller)["saturated_block"] == pytest.approx((k - 1) ** 2 / k**2)


def test_levels_are_inclusive_and_window_is_found_at_the_border():
    img = np.full((64, 64), noise.DARK_LEVEL + 1, np.uint8)
    img[:32] = noise.DARK_LEVEL
    img[-8:, -8:] = noise.SATURATED_LEVEL
    stats = noise.patch_stats(img)
    assert stats["dark_fraction"] == 0.5
    assert stats["saturated_block"] == 1.0


def test_channel_layouts_agree():
    img = np.zeros((64, 64), np.uint8)
    img[:, :40] = 200
    img[:8, :8] = 255
    expected = noise.patch_stats(img)
    assert noise.patch_stats(img[..., None]) == expected
    assert noise.patch_stats(np.repeat(img[..., None], 3, axis=2)) == expected


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 2), np.uint8), np.zeros(8, np.uint8), np.zeros((8, 8), np.float32)])
def test_patch_stats_rejects_unknown_layouts(bad):
    with pytest.raises(UserError):
        noise.patch_stats(bad)


def test_saturated_block_equals_a_brute_force_window_scan(measurement):
    rng = np.random.default_rng(0)
    img = np.where(rng.random((48, 48)) < 0.3, 255, 100).astype(np.uint8)
    img[5:14, 20:29] = 255
    side = noise.block_side(48, 48)
    saturated = img >= noise.SATURATED_LEVEL
    brute = max(saturated[y:y + side, x:x + side].mean() for y in range(49 - side) for x in range(49 - side))
    assert noise.patch_stats(img)["saturated_block"] == pytest.approx(brute)
    big = rng.integers(0, 256, (299, 299), dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(20):
        noise.patch_stats(big)
    measurement(f"patch_stats on a 299x299 patch: {(time.perf_counter() - start) / 20 * 1000:.2f} ms")


def test_flag_noisy_thresholds_and_index():
    frame = pd.DataFrame(
        {"dark_fraction": [0.0, 0.49, 0.5, 0.1, 0.1], "saturated_block": [0.0, 0.2, 0.0, 0.9, 0.89]},
        index=[10, 11, 12, 13, 14],
    )
    flags = noise.flag_noisy(frame)
    assert flags.dtype == bool
    assert list(flags.index) == [10, 11, 12, 13, 14]
    assert list(flags) == [False, False, True, True, False]
    assert list(noise.flag_noisy(frame, dark_fraction=1.0, saturated_block=1.0)) == [False] * 5
    assert list(noise.flag_noisy(frame, dark_fraction=0.0)) == [True] * 5


@pytest.mark.parametrize("kwargs", [{"dark_fraction": -0.1}, {"dark_fraction": 1.5},
                                    {"saturated_block": float("nan")}, {"saturated_block": "high"}])
def test_flag_noisy_rejects_bad_thresholds(kwargs):
    frame = pd.DataFrame({"dark_fraction": [0.2], "saturated_block": [0.0]})
    with pytest.raises(UserError) as info:
        noise.flag_noisy(frame, **kwargs)
    assert len(info.value.problems) == 1 and "between 0 and 1" in info.value.problems[0]


def test_flag_noisy_needs_the_stats_columns():
    with pytest.raises(UserError):
        noise.flag_noisy(pd.DataFrame({"dark_fraction": [0.2]}))


def test_filter_catches_planted_background_and_keeps_clean_normals(measurement):
    images, table = synth.generate(800, 128, seed=11, split="train")
    normal = table["y"] == 0
    stats = pd.DataFrame([noise.patch_stats(images[i]) for i in np.flatnonzero(normal)], index=table.index[normal])
    flags = noise.flag_noisy(stats)
    planted = table.loc[normal, "background"]
    assert planted.sum() >= 60 and (~planted).sum() >= 200

    removed_planted = flags[planted].mean()
    removed_clean = flags[~planted].mean()
    measurement(
        f"noisy-normal filter: removed {removed_planted:.1%} of planted background patches, "
        f"{removed_clean:.1%} of clean normals "
        f"({planted.sum()} planted, {(~planted).sum()} clean)"
    )
    assert removed_planted >= 0.90
    assert removed_clean <= 0.05
    # The clean set holds borderline breast-edge patches, so the test is not trivially easy ...
    assert (stats.loc[~planted, "dark_fraction"] > 0.15).sum() >= 5
    # ... and both rules do work: labels are caught by the block rule, not only by darkness.
    assert (stats.loc[planted, "saturated_block"] >= noise.DEFAULT_SATURATED_BLOCK).sum() >= 5
