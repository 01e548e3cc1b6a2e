"""Tests for the synthetic focus-stack generator."""

from __future__ import annotations

import numpy as np
import pytest

from fstack_dask import _synthetic
from fstack_dask._synthetic import SyntheticStack, synthetic_stack

DTYPES = ["uint8", "uint16", "float32", "float64"]


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_dtypes_and_ranges(rgb, dtype):
    out = synthetic_stack((24, 40), 5, rgb=rgb, dtype=dtype, seed=3)
    assert isinstance(out, SyntheticStack)
    tail = (3,) if rgb else ()
    assert out.stack.shape == (24, 40, 5, *tail)
    assert out.all_in_focus.shape == (24, 40, *tail)
    assert out.depth.shape == (24, 40)
    assert out.stack.dtype == np.dtype(dtype) == out.all_in_focus.dtype
    assert out.depth.dtype == np.float64
    assert out.stack.flags.c_contiguous and out.all_in_focus.flags.c_contiguous
    full = 1.0 if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
    assert out.stack.min() >= 0 and out.stack.max() <= full
    # The noise-free texture keeps a margin from both ends of the range.
    gt = out.all_in_focus.astype(np.float64) / full
    assert gt.min() >= 0.04 and gt.max() <= 0.96
    assert gt.std() > 0.05  # not a flat image


def test_signed_and_wide_integer_dtypes():
    for dtype in ("int16", "uint32"):
        out = synthetic_stack((16, 16), 4, dtype=dtype, seed=0)
        assert out.stack.dtype == np.dtype(dtype)
        assert out.stack.min() >= 0
        assert out.all_in_focus.max() <= 0.96 * np.iinfo(dtype).max


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = synthetic_stack((32, 32), 6, seed=7)
    b = synthetic_stack((32, 32), 6, seed=7)
    c = synthetic_stack((32, 32), 6, seed=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.stack, c.stack)
    assert not np.array_equal(a.all_in_focus, c.all_in_focus)
    assert not np.array_equal(a.depth, c.depth)


def test_noise_level_does_not_change_texture_or_depth():
    a = synthetic_stack((32, 32), 6, noise=0.0, seed=1)
    b = synthetic_stack((32, 32), 6, noise=0.05, seed=1)
    np.testing.assert_array_equal(a.all_in_focus, b.all_in_focus)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.array_equal(a.stack, b.stack)


def test_result_does_not_depend_on_block_size(monkeypatch):
    ref = synthetic_stack((20, 24), 7, rgb=True, seed=2)
    monkeypatch.setattr(_synthetic, "_BLOCK_ELEMENTS", 1)  # one row per block
    out = synthetic_stack((20, 24), 7, rgb=True, seed=2)
    np.testing.assert_array_equal(ref.stack, out.stack)


def test_generator_seed():
    a = synthetic_stack((16, 16), 4, seed=np.random.default_rng(5))
    b = synthetic_stack((16, 16), 4, seed=np.random.default_rng(5))
    np.testing.assert_array_equal(a.stack, b.stack)


@pytest.mark.parametrize("n_planes", [1, 2, 3, 4, 11])
def test_depth_within_planes(n_planes):
    depth = synthetic_stack((32, 24), n_planes, seed=4).depth
    lo, hi = (1.0, n_planes - 2.0) if n_planes >= 4 else (0.0, n_planes - 1.0)
    assert depth.min() >= lo and depth.max() <= hi
    if n_planes >= 4:  # the surface spans its range, so it is not flat
        assert depth.min() == pytest.approx(lo) and depth.max() == pytest.approx(hi)
    # Smooth: neighbouring pixels differ by a small fraction of the stack depth.
    assert np.abs(np.diff(depth, axis=0)).max() <= 0.2 * max(n_planes - 1, 1)


@pytest.mark.parametrize("rgb", [False, True])
def test_in_focus_plane_is_closest_to_ground_truth(rgb):
    p = 15
    out = synthetic_stack((64, 64), p, rgb=rgb, dtype="float32", noise=0.005, seed=11)
    gt = out.all_in_focus.astype(np.float64)
    nearest = np.rint(out.depth).astype(int)
    err = np.abs(out.stack.astype(np.float64) - gt[:, :, None])
    if rgb:
        err = err.mean(axis=-1)
    dist = np.abs(np.arange(p) - out.depth[:, :, None])
    in_focus = np.take_along_axis(err, nearest[:, :, None], axis=2).mean()
    far = err[dist >= p / 3].mean()
    mid = err[(dist >= 2) & (dist < p / 3)].mean()
    assert in_focus < mid < far
    assert in_focus < 0.25 * far


def test_no_blur_and_no_noise_gives_copies_of_the_ground_truth():
    out = synthetic_stack((16, 20), 5, noise=0, max_sigma=0, seed=0)
    np.testing.assert_array_equal(out.stack, np.repeat(out.all_in_focus[:, :, None], 5, axis=2))


def test_tiny_and_non_square_images():
    out = synthetic_stack((1, 1), 1)
    assert out.stack.shape == (1, 1, 1) and out.depth[0, 0] == 0.0
    out = synthetic_stack((3, 50), 2, rgb=True, dtype="uint8")
    assert out.stack.shape == (3, 50, 2, 3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_planes": 0}, ValueError, r"n_planes must be an integer >= 1, got 0"),
        ({"n_planes": 2.0}, TypeError, "n_planes"),
        ({"n_planes": True}, TypeError, "n_planes"),
        ({"shape": (0, 5)}, ValueError, r"shape\[0\]"),
        ({"shape": (5, -1)}, ValueError, r"shape\[1\]"),
        ({"shape": (5, 5, 5)}, TypeError, "shape"),
        ({"shape": 5}, TypeError, "shape"),
        ({"shape": (5.0, 5)}, TypeError, r"shape\[0\]"),
        ({"rgb": 1}, TypeError, "rgb"),
        ({"dtype": "complex64"}, TypeError, "dtype"),
        ({"dtype": bool}, TypeError, "dtype"),
        ({"dtype": "not-a-dtype"}, TypeError, "dtype"),
        ({"noise": -0.1}, ValueError, "noise"),
        ({"noise": float("nan")}, ValueError, "noise"),
        ({"noise": "0.1"}, TypeError, "noise"),
        ({"max_sigma": -1}, ValueError, "max_sigma"),
        ({"max_sigma": float("inf")}, ValueError, "max_sigma"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        # (an OverflowError naming nothing)
        ({"noise": 10**400}, ValueError, "noise must be a finite real number >= 0"),
        ({"max_sigma": 10**400}, ValueError, "max_sigma must be a finite real number >= 0"),
    ],
)
def test_argument_errors_name_the_parameter(kwargs, exc, match):
    args = {"shape": (8, 8), "n_planes": 3, **kwargs}
    with pytest.raises(exc, match=match):
        synthetic_stack(**args)


@pytest.mark.parametrize(
    ("kwargs", "exc", "says"),
    [
        ({"shape": (10**6, 10**6)}, ValueError, r"shape \(1000000, 1000000\) x n_planes 21 is"),
        ({"n_planes": 10**30}, ValueError, r"x n_planes 1000000000000000000000000000000 is"),
        ({"max_sigma": 1e300}, ValueError, "max_sigma must be at most 10000 px, got 1e"),
        ({"max_sigma": 1e5}, ValueError, "max_sigma must be at most 10000 px"),
        ({"dtype": None}, TypeError, "dtype must be an integer or floating dtype, got None"),
        ({"dtype": np.int64(9)}, TypeError, "floating dtype, got the value np.int64.9."),
        ({"dtype": np.zeros(2, "u1")}, TypeError, "floating dtype, got the value array"),
    ],
)
def test_a_stack_beyond_memory_a_blur_beyond_any_image_and_no_dtype_are_refused(kwargs, exc, says):
    """numpy's 'Maximum allowed dimension exceeded' (n_planes=10**30), a MemoryError (a
    10^6 x 10^6 shape), 'Maximum allowed size exceeded' (max_sigma=1e300) or a blur running
    for many minutes (1e5), none naming the parameter; dtype=None made float64 silently (a
    sweep of contract 4)."""
    with pytest.raises(exc, match=says) as info:
        synthetic_stack(**{"shape": (32, 32), **kwargs})
    assert "\n" not in str(info.value)
