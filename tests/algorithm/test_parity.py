"""Parity with the reference itself (coppafish 0.1.6 extract/fstack.py).

Bar (issue 2): wherever the reference's output is finite, at least 99.5 % of
pixels identical and none off by more than 2 intensity levels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import reference_float

from fstack_dask import focus_stack, synthetic_stack
from fstack_dask._samples import sample_stack


def assert_parity(ours, ref_values):
    finite = np.isfinite(ref_values)
    assert finite.mean() > 0.9, "test data should keep the reference mostly defined"
    expected = np.round(ref_values[finite])
    diff = np.abs(ours[finite].astype(np.float64) - expected)
    identical = float(np.mean(diff == 0))
    assert identical >= 0.995, f"only {identical:.4%} of pixels identical"
    assert diff.max() <= 2, f"max difference {diff.max()}"
    return identical


def _grey(dtype, shape=(61, 47), planes=9, seed=0):
    return synthetic_stack(shape, planes, dtype=dtype, noise=0.02, seed=seed).stack


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("nhsize", [3, 5, 9, 10, 15])
def test_grey_matches_reference(reference, dtype, nhsize):
    stack = _grey(dtype, seed=nhsize)
    ours = focus_stack(stack, nhsize)
    assert ours.dtype == np.dtype(dtype)
    ref_values = reference_float(reference, stack, nhsize)
    assert_parity(ours, ref_values)
    # The recomposed float image is exactly what the reference's own entry point casts.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_out = reference.focus_stack(stack, nhsize)
    finite = np.isfinite(ref_values)
    assert np.array_equal(ref_out[finite], np.round(ref_values[finite]).astype(np.int64))


@pytest.mark.parametrize("nhsize", [5, 9])
def test_rgb_matches_reference_rounded(reference, nhsize):
    stack = synthetic_stack((50, 70), 7, rgb=True, dtype="uint8", noise=0.02, seed=4).stack
    ours = focus_stack(stack, nhsize)
    assert ours.shape == (50, 70, 3) and ours.dtype == np.uint8
    ref_values = reference_float(reference, stack, nhsize)
    assert_parity(ours, ref_values)
    # The reference floors colour values; that is the only difference.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        floored = reference.focus_stack(stack, nhsize)
    assert np.array_equal(floored, np.floor(ref_values).astype(np.uint8))


@pytest.mark.parametrize(("alpha", "sth"), [(0.5, 8.0), (1.0, 20.0), (0.05, 13.0)])
def test_non_default_alpha_sth(reference, alpha, sth):
    stack = _grey("uint16", seed=11)
    ours = focus_stack(stack, 9, None, alpha, sth)
    assert_parity(ours, reference_float(reference, stack, 9, None, alpha, sth))


@pytest.mark.parametrize(
    "focus",
    [
        [0.0, 1.0, 2.5, 3.0, 5.0, 8.0, 9.0, 11.0, 12.5],
        [-4, -3, -1, 0, 2, 3, 5, 6, 9],
        [10.0, 9.0, 7.5, 7.0, 4.0, 3.0, 1.0, 0.5, 0.0],
    ],
)
def test_non_uniform_focus(reference, focus):
    stack = _grey("uint8", seed=21)
    ours = focus_stack(stack, 9, np.asarray(focus))
    assert_parity(ours, reference_float(reference, stack, 9, np.asarray(focus)))


@pytest.mark.parametrize(("shape", "nhsize"), [((7, 5), 15), ((3, 11), 9), ((1, 30), 5)])
def test_images_smaller_than_window(reference, shape, nhsize):
    stack = synthetic_stack(shape, 6, dtype="uint16", noise=0.05, seed=2).stack
    ours = focus_stack(stack, nhsize)
    assert_parity(ours, reference_float(reference, stack, nhsize))


@pytest.mark.parametrize("planes", [5, 6, 21])
def test_plane_counts(reference, planes):
    stack = _grey("uint16", shape=(40, 33), planes=planes, seed=planes)
    assert_parity(focus_stack(stack), reference_float(reference, stack))


def test_real_fluorescence_stack(reference):
    zyx = sample_stack("mitochondria_lightsheet")
    stack = np.ascontiguousarray(np.moveaxis(zyx, 0, -1))
    ours = focus_stack(stack)
    assert_parity(ours, reference_float(reference, stack))


def test_real_rgb_photographs(reference):
    zyxc = sample_stack("pcb")
    stack = np.ascontiguousarray(np.moveaxis(zyxc, 0, 2))
    assert_parity(focus_stack(stack), reference_float(reference, stack))


@pytest.mark.parametrize("where", ["first plane", "last plane", "a region of every plane"])
def test_undefined_selectivity_is_filled_with_the_images_smallest(reference, where):
    """Where the Gaussian fit fails (a blank plane among the fit's three: a dark or shutter
    frame; the neighbours of a region without contrast: a mosaic's zero padding), ``S`` is
    undefined and the reference fills it with the whole image's smallest ``S``. A local
    rule (``S = -inf``: the plane mean) missed the bar by far: 90.6 % identical, 69 levels
    off, 7.5 dB worse against the truth for a blank first plane (an adversarial run)."""
    stack = synthetic_stack((128, 128), 7, dtype="uint8", noise=0.01, seed=2).stack.copy()
    if where == "first plane":
        stack[..., 0] = 0
    elif where == "last plane":
        stack[..., -1] = 0
    else:
        stack[40:70, 50:80, :] = 0
    ours = focus_stack(stack)
    ref_values = reference_float(reference, stack)
    assert assert_parity(ours, ref_values) == 1.0
