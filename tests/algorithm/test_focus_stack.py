"""Defined behaviour where the reference crashes or returns garbage, and argument checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import reference_float

from fstack_dask import focus_stack, synthetic_stack


def psnr(image, truth, peak):
    err = np.mean((image.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return 10 * np.log10(peak**2 / err)


@pytest.mark.parametrize("seed", [0, 1])
def test_fusion_beats_single_planes_and_mean(seed):
    data = synthetic_stack((192, 192), 21, dtype="uint16", noise=0.03, seed=seed)
    fused = focus_stack(data.stack)
    p_fused = psnr(fused, data.all_in_focus, 65535)
    best_plane = max(psnr(data.stack[:, :, p], data.all_in_focus, 65535) for p in range(21))
    p_mean = psnr(data.stack.mean(axis=2), data.all_in_focus, 65535)
    assert p_fused > best_plane + 3.0, (p_fused, best_plane)
    assert p_fused > p_mean + 3.0, (p_fused, p_mean)


def test_single_plane_is_returned_unchanged():
    plane = synthetic_stack((30, 20), 1, dtype="uint16", seed=0).stack
    assert np.array_equal(focus_stack(plane), plane[:, :, 0])


@pytest.mark.parametrize("planes", [2, 3, 4])
def test_fewer_than_five_planes(reference, planes):
    data = synthetic_stack((64, 64), planes, dtype="uint8", noise=0.0, max_sigma=3.0, seed=5)
    with pytest.raises((ValueError, IndexError)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.focus_stack(data.stack)  # the reference cannot fit 3 points at step 2
    fused = focus_stack(data.stack)
    assert fused.dtype == np.uint8
    # Fully selective: closer to the truth than any plane and than the mean.
    p_fused = psnr(fused, data.all_in_focus, 255)
    assert p_fused > max(psnr(data.stack[:, :, p], data.all_in_focus, 255) for p in range(planes))
    assert p_fused > psnr(data.stack.mean(axis=2), data.all_in_focus, 255)


def test_identical_planes_give_that_plane():
    plane = synthetic_stack((40, 40), 1, dtype="uint16", seed=3).stack
    stack = np.repeat(plane, 7, axis=2)
    assert np.array_equal(focus_stack(stack), plane[:, :, 0])


@pytest.mark.parametrize("value", [0, 255])
def test_flat_or_saturated_image(reference, value):
    stack = np.full((32, 32, 7), value, np.uint8)  # no contrast anywhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_out = reference.focus_stack(stack)
    assert (ref_out != value).all()  # NaN weights, cast to garbage
    assert (focus_stack(stack) == value).all()


@pytest.mark.parametrize("value", [0, 255])
def test_flat_or_saturated_patch(reference, value):
    stack = synthetic_stack((64, 64), 9, dtype="uint8", noise=0.02, seed=7).stack.copy()
    stack[20:44, 20:44, :] = value
    fused = focus_stack(stack)
    assert (fused[20:44, 20:44] == value).all()
    # Away from the patch the result is the reference's.
    ref_values = reference_float(reference, stack)
    far = np.ones(stack.shape[:2], bool)
    far[8:56, 8:56] = False
    assert np.array_equal(fused[far], np.round(ref_values[far]).astype(np.uint8))


def test_flat_region_with_varying_brightness_gives_plane_mean():
    stack = np.empty((20, 20, 6), np.uint16)
    stack[:] = np.arange(6, dtype=np.uint16) * 100 + 1000  # every plane flat, different levels
    assert (focus_stack(stack) == 1250).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_input(reference, dtype):
    data = synthetic_stack((48, 40), 9, dtype="uint16", noise=0.02, seed=8)
    with pytest.raises(ValueError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.focus_stack(data.stack.astype(np.float64))  # np.iinfo of a float
    as_float = data.stack.astype(dtype) / dtype(65535)
    fused = focus_stack(as_float)
    assert fused.dtype == dtype
    # Floats are used unscaled and S is scale-free: the same fusion up to rounding
    # (the focus measure is held in float32: ~1e-7 of full scale).
    unrounded = reference_float(reference, data.stack) / 65535
    assert np.allclose(fused, unrounded, atol=2e-6, rtol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_input_is_refused(bad):
    stack = synthetic_stack((16, 16), 5, dtype="float32", seed=0).stack.copy()
    stack[3, 4, 2] = bad
    with pytest.raises(ValueError, match="im_stack"):
        focus_stack(stack)


@pytest.mark.parametrize("rgb", [False, True])
def test_big_endian_input(rgb):
    stack = synthetic_stack((32, 24), 6, rgb=rgb, dtype="uint16", seed=9).stack
    swapped = stack.astype(stack.dtype.newbyteorder(">"))
    fused = focus_stack(swapped)
    assert fused.dtype == np.dtype("uint16")
    assert np.array_equal(fused, focus_stack(stack))


def test_input_is_not_modified():
    stack = synthetic_stack((32, 32), 7, rgb=True, dtype="uint8", seed=1).stack
    before = stack.copy()
    focus_stack(stack)
    assert np.array_equal(stack, before)


def test_signed_and_wide_integers_match_unsigned():
    data = synthetic_stack((40, 40), 7, dtype="uint16", noise=0.02, seed=2)
    as_u16 = focus_stack(data.stack)
    as_i32 = focus_stack(data.stack.astype(np.int32))  # float path: same numbers up to rounding
    assert as_i32.dtype == np.int32
    assert np.abs(as_i32.astype(np.int64) - as_u16).max() <= 1


GOOD = synthetic_stack((12, 12), 6, dtype="uint8", seed=0).stack


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"im_stack": GOOD[:, :, 0]}, ValueError, "im_stack"),
        ({"im_stack": GOOD[..., None, None]}, ValueError, "im_stack"),
        ({"im_stack": np.stack([GOOD, GOOD], -1)}, ValueError, "im_stack"),
        ({"im_stack": GOOD[:, :0]}, ValueError, "im_stack"),
        ({"im_stack": GOOD[:, :, :0]}, ValueError, "im_stack"),
        ({"im_stack": GOOD.astype(bool)}, TypeError, "im_stack"),
        ({"im_stack": GOOD.astype(complex)}, TypeError, "im_stack"),
        ({"im_stack": GOOD.astype(object)}, TypeError, "im_stack"),
        ({"im_stack": GOOD.astype(str)}, TypeError, "im_stack"),
        ({"nhsize": 0}, ValueError, "nhsize"),
        ({"nhsize": -3}, ValueError, "nhsize"),
        ({"nhsize": 2.5}, TypeError, "nhsize"),
        ({"nhsize": 9.0}, TypeError, "nhsize"),
        ({"nhsize": True}, TypeError, "nhsize"),
        ({"nhsize": "9"}, TypeError, "nhsize"),
        ({"alpha": 0}, ValueError, "alpha"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": "0.2"}, TypeError, "alpha"),
        # numbers beyond float64 raised OverflowError, naming nothing (an adversarial run)
        ({"alpha": 10**400}, ValueError, "alpha"),
        ({"sth": 10**400}, ValueError, "sth"),
        ({"nhsize": 10**400}, ValueError, "nhsize"),
        ({"nhsize": 4096}, ValueError, "nhsize must be an integer from 1 to 4095"),
        ({"sth": float("inf")}, ValueError, "sth"),
        ({"sth": None}, TypeError, "sth"),
        ({"focus": np.arange(5)}, ValueError, "focus"),
        ({"focus": np.arange(12).reshape(2, 6)}, ValueError, "focus"),
        ({"focus": [0, 1, 2, np.nan, 4, 5]}, ValueError, "focus"),
        ({"focus": [0, 1, 2, 2, 4, 5]}, ValueError, "focus"),
        ({"focus": [0, 2, 1, 3, 4, 5]}, ValueError, "focus"),
        ({"focus": ["a"] * 6}, TypeError, "focus"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, exc, name):
    args = {"im_stack": GOOD, **kwargs}
    with pytest.raises(exc, match=name):
        focus_stack(**args)


def test_alpha_one_is_allowed():
    assert focus_stack(GOOD, alpha=1.0).shape == (12, 12)


@pytest.mark.parametrize("alpha", [1e-16, 1e-300, 5e-324])
def test_an_alpha_whose_weights_round_away_is_refused(alpha):
    """From about 1e-17 every plane's weight rounds to 0 and the fusion gave NaN (float
    input) or silently 0 (integers), exit 0 (an adversarial run). The smallest alpha
    accepted still fuses to finite values."""
    stack = (np.random.default_rng(0).random((64, 64, 5)) * 60000).astype(np.float32)
    with pytest.raises(ValueError, match=r"alpha must be in \[1e-06, 1\]"):
        focus_stack(stack, alpha=alpha)
    assert np.isfinite(focus_stack(stack, alpha=1e-6)).all()


def test_compiled_code_is_not_cached_inside_the_package():
    # numba files beside the module outlive `pip uninstall` and shadow a later install.
    import pathlib

    import fstack_dask
    from fstack_dask._algorithm.block import fuse_block

    fuse_block(np.zeros((5, 16, 16), np.uint16))
    package = pathlib.Path(fstack_dask.__file__).parent
    assert not [*package.rglob("*.nbi"), *package.rglob("*.nbc")]


@pytest.mark.parametrize(
    ("focus", "warned"),
    [
        (np.arange(6) * 0.2e-6, True),  # metres: steps of 2e-7 beside the fit's + 1
        (1e8 + np.arange(6), True),  # a large offset
        (np.arange(6) * 0.2, False),  # micrometres
    ],
)
def test_focus_steps_the_fit_cannot_resolve_are_warned_of(focus, warned):
    """Focus in metres left the reference's fit (positions + 1) a few digits: 1 % of pixels
    identical to the reference, engines 1657 levels apart, silently (an adversarial run)."""
    import warnings

    from fstack_dask._errors import FstackDaskWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        focus_stack(GOOD, focus=focus)
    said = [
        w
        for w in caught
        if issubclass(w.category, FstackDaskWarning) and "ill-cond" in str(w.message)
    ]
    assert bool(said) == warned


def test_bands_hold_at_most_the_memory_per_task_each(monkeypatch):
    """One band per thread held the kernel's working set for the whole image: 2.4 GiB beside
    a 672 MiB stack (an adversarial run). Bands are now cut until each fits the default
    memory per task (here lowered to 6 MiB), and give the same bits."""
    import tracemalloc

    import fstack_dask._params as params

    stack = (synthetic_stack((600, 512), 11, seed=4).stack * 4000).astype(np.uint16)
    expected = focus_stack(stack, workers=1)
    monkeypatch.setattr(params, "DEFAULT_MEMORY_PER_TASK", 6 * 2**20)
    tracemalloc.start()
    try:
        got = focus_stack(stack, workers=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert peak < 2 * 6 * 2**20 * 1.3 + 2 * got.nbytes, peak / 2**20  # before: 27 MiB
