"""``nhsize="auto"`` / ``sth="auto"``: validation, the bounded sample, determinism,
chunk invariance, and that the choice helps on noisy stacks (held-out seeds)."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from fstack_dask import (
    AutoParameters,
    auto_parameters,
    auto_parameters_for,
    focus_stack,
    fuse,
    overlap_depth,
    synthetic_stack,
)
from fstack_dask._algorithm.auto import (
    NHSIZE_LADDER,
    SAMPLE_BUDGET,
    _gaussian_noise,
    noise_selectivity,
    sample_tiles,
)

# Seeds never used to fit the rule (benchmarks/auto_sweep.py fits on 100 and 101).
SEED = 9101


def _psnr(img, truth, peak):
    err = np.mean((img.astype(float) - truth.astype(float)) ** 2)
    return 10 * np.log10(peak**2 / err)


def _planes(stack):
    return np.moveaxis(stack, 2, 0) if stack.ndim == 3 else np.moveaxis(stack, (2, 3), (1, 0))


@pytest.fixture(scope="module")
def noisy():
    return synthetic_stack((160, 176), 21, noise=0.06, max_sigma=3.0, seed=SEED)


@pytest.fixture(scope="module")
def clean():
    return synthetic_stack((160, 176), 21, noise=0.0, max_sigma=3.0, seed=SEED)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"nhsize": "Auto"}, TypeError, "nhsize must be an integer from 1 to 4095 or 'auto'"),
        ({"nhsize": "nine"}, TypeError, "nhsize"),
        ({"nhsize": 2.5}, TypeError, "nhsize"),
        ({"nhsize": None}, TypeError, "nhsize"),
        ({"nhsize": True}, TypeError, "nhsize"),
        ({"nhsize": 0}, ValueError, "nhsize must be an integer from 1 to 4095"),
        ({"sth": "automatic"}, TypeError, "sth must be a finite real number or 'auto'"),
        ({"sth": None}, TypeError, "sth"),
        ({"sth": float("nan")}, ValueError, "sth"),
    ],
)
def test_bad_values_name_the_parameter(clean, kwargs, exc, match):
    for call in (
        lambda: focus_stack(clean.stack, **kwargs),
        lambda: fuse(clean.stack, axes="yxz", **kwargs),
        lambda: auto_parameters_for(clean.stack, axes="yxz", **kwargs),
    ):
        with pytest.raises(exc, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def test_fixed_values_pass_through(noisy):
    planes = _planes(noisy.stack)
    chosen = auto_parameters(
        lambda y0, y1, x0, x1: planes[:, y0:y1, x0:x1],
        shape_yx=planes.shape[1:],
        n_planes=21,
        dtype=planes.dtype,
        rgb=False,
        nhsize=9,
        sth=13,
    )
    assert (chosen.nhsize, chosen.sth) == (9, 13.0)
    only_sth = auto_parameters_for(noisy.stack, axes="yxz", nhsize=15)
    only_nh = auto_parameters_for(noisy.stack, axes="yxz", sth=4.5)
    both = auto_parameters_for(noisy.stack, axes="yxz")
    assert only_sth.nhsize == 15 and only_nh.sth == 4.5
    assert only_nh.nhsize == both.nhsize
    # The default call is untouched by the auto machinery: the reference's numbers.
    assert np.array_equal(focus_stack(noisy.stack), focus_stack(noisy.stack, nhsize=9, sth=13))


# -- the sample -----------------------------------------------------------------------------


def test_tile_grid_depends_only_on_shape_and_is_bounded():
    grid = sample_tiles((800, 512), n_planes=34, itemsize=2)
    assert len(grid) == 16 and all(t[1] - t[0] == 128 and t[3] - t[2] == 128 for t in grid)
    assert min(t[0] for t in grid) == 0 and max(t[1] for t in grid) == 800  # edge to edge
    assert min(t[2] for t in grid) == 0 and max(t[3] for t in grid) == 512
    assert grid == sample_tiles((800, 512), n_planes=34, itemsize=2)
    small = sample_tiles((40, 300), n_planes=7, itemsize=1)
    assert all(0 <= y0 < y1 <= 40 and 0 <= x0 < x1 <= 300 for y0, y1, x0, x1 in small)
    for n_planes, channels, itemsize in ((51, 1, 2), (400, 3, 1), (1000, 1, 4)):
        grid = sample_tiles(
            (100_000, 100_000), n_planes=n_planes, n_channels=channels, itemsize=itemsize
        )
        px = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in grid)
        floor = 4 * 64 * 64  # never fewer than 2 x 2 tiles of 64 px
        assert px * n_planes * channels * itemsize <= max(SAMPLE_BUDGET, floor * n_planes * 4)
        assert len(grid) >= 4


def test_reads_exactly_the_grid(noisy):
    planes = _planes(noisy.stack)
    calls = []

    def read(y0, y1, x0, x1):
        calls.append((y0, y1, x0, x1))
        return planes[:, y0:y1, x0:x1]

    chosen = auto_parameters(
        read, shape_yx=planes.shape[1:], n_planes=21, dtype=planes.dtype, rgb=False
    )
    grid = sample_tiles(planes.shape[1:], n_planes=21, itemsize=planes.dtype.itemsize)
    assert tuple(calls) == grid
    assert chosen.bytes_read == sum(planes[:, a:b, c:d].nbytes for a, b, c, d in grid)
    assert chosen.tiles == len(grid)
    assert chosen.nhsize in NHSIZE_LADDER
    json.dumps(chosen.as_dict())  # provenance is JSON-ready
    assert isinstance(chosen, AutoParameters) and "nhsize=" in chosen.summary()


def test_noise_estimate_and_simulation_are_deterministic():
    z = _gaussian_noise((200, 300), 5)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert np.array_equal(z, _gaussian_noise((200, 300), 5))
    assert noise_selectivity(21, 15) == noise_selectivity(21, 15)
    # Pure noise looks more "selective" with fewer planes (the fit is on fewer points).
    assert noise_selectivity(7, 15) > noise_selectivity(21, 15) > noise_selectivity(51, 15)
    stack = synthetic_stack((128, 128), 9, noise=0.04, max_sigma=2.0, seed=SEED)
    chosen = auto_parameters_for(stack.stack, axes="yxz")
    # The generator adds noise of 4 % of full scale: the estimate should find it.
    assert chosen.noise / 65535 == pytest.approx(0.04, rel=0.1)


# -- what it chooses, and what that gives (held-out seed) ----------------------------------


def test_noisier_stacks_get_wider_windows_and_higher_thresholds(noisy, clean):
    a, b = (
        auto_parameters_for(noisy.stack, axes="yxz"),
        auto_parameters_for(clean.stack, axes="yxz"),
    )
    assert a.snr < b.snr
    assert a.nhsize > b.nhsize and a.sth > b.sth


def test_auto_beats_the_defaults_on_a_noisy_stack_and_keeps_clean_ones(noisy, clean):
    peak = 65535.0
    gain = _psnr(focus_stack(noisy.stack, nhsize="auto", sth="auto"), noisy.all_in_focus, peak)
    gain -= _psnr(focus_stack(noisy.stack), noisy.all_in_focus, peak)
    assert gain > 1.0
    loss = _psnr(focus_stack(clean.stack), clean.all_in_focus, peak)
    loss -= _psnr(focus_stack(clean.stack, nhsize="auto", sth="auto"), clean.all_in_focus, peak)
    assert loss < 0.2


def test_rgb_uses_the_luminance():
    s = synthetic_stack((96, 112), 9, rgb=True, dtype="uint8", noise=0.05, seed=SEED)
    fused = focus_stack(s.stack, nhsize="auto", sth="auto")
    chosen = auto_parameters_for(s.stack, axes="yxzc")
    assert fused.shape == (96, 112, 3) and fused.dtype == np.uint8
    assert np.array_equal(fused, focus_stack(s.stack, nhsize=chosen.nhsize, sth=chosen.sth))


# -- chunk invariance -----------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [(40, 64), 23, (160, 7), 1000])
def test_bit_identical_across_chunkings(noisy, chunks):
    whole = focus_stack(noisy.stack, nhsize="auto", sth="auto")
    lazy = fuse(noisy.stack, axes="yxz", nhsize="auto", sth="auto", chunks=chunks)
    assert np.array_equal(lazy.compute(scheduler="threads"), whole)


def test_choice_does_not_depend_on_the_input_chunks(noisy):
    base = auto_parameters_for(noisy.stack, axes="yxz")
    for chunks in ((17, 33, -1), (160, 176, 5), (50, 50, 21)):
        again = auto_parameters_for(da.from_array(noisy.stack, chunks=chunks), axes="yxz")
        assert again == base


def test_halo_follows_the_chosen_window(noisy):
    chosen = auto_parameters_for(noisy.stack, axes="yxz")
    assert chosen.nhsize >= 15  # a wide window: chunks below are thinner than its halo
    assert overlap_depth(chosen.nhsize) > 20
    lazy = fuse(noisy.stack, axes="yxz", nhsize="auto", sth="auto", chunks=20)
    explicit = focus_stack(noisy.stack, nhsize=chosen.nhsize, sth=chosen.sth)
    assert np.array_equal(lazy.compute(), explicit)


def test_independent_channels_are_pooled_and_batches_sampled_at_index_zero(noisy, clean):
    czyx = np.stack([_planes(noisy.stack), _planes(clean.stack)])
    chosen = auto_parameters_for(czyx, axes="czyx", channels="independent")
    out = fuse(czyx, axes="czyx", channels="independent", nhsize="auto", sth="auto", chunks=64)
    expect = [focus_stack(s.stack, nhsize=chosen.nhsize, sth=chosen.sth) for s in (noisy, clean)]
    assert np.array_equal(out.compute(), np.stack(expect))
    tzyx = np.stack([_planes(noisy.stack), _planes(clean.stack)])
    assert auto_parameters_for(tzyx, axes="tzyx") == auto_parameters_for(noisy.stack, axes="yxz")
