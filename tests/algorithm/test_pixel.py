"""Per-pixel scalar mathematics (`_pixel`): accuracy, special values, one source for all targets."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fstack_dask._algorithm import pixel as _pixel

needs_numba = pytest.mark.skipif(
    not hasattr(_pixel.exp, "py_func"), reason="numba is not installed"
)


def ulps(got, x, ref_func):
    """Error of ``got`` against ``ref_func`` evaluated in long double, in float64 ulps."""
    ref = ref_func(np.asarray(x, np.longdouble))
    spacing = np.spacing(np.abs(ref.astype(np.float64)))
    return np.abs(np.asarray(got, np.longdouble) - ref) / spacing


def vectorised(name):
    func = getattr(_pixel, name)
    return np.vectorize(func, otypes=[np.float64])


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60, reason="needs x87 long double")
@pytest.mark.parametrize(
    ("name", "ref", "lo", "hi", "bound"),
    [
        ("exp", np.exp, -745.0, 709.0, 1.0),
        ("exp", np.exp, -1.0, 1.0, 1.0),
        ("log", np.log, 1e-300, 1e300, 1.0),
        ("log", np.log, 0.5, 2.0, 1.0),
        ("tanh", np.tanh, -25.0, 25.0, 3.0),
        ("tanh", np.tanh, -1e-3, 1e-3, 3.0),
    ],
)
def test_accuracy_in_ulps(rng, name, ref, lo, hi, bound):
    x = rng.uniform(lo, hi, 20_000)
    if name == "log" and hi > 1e10:
        x = np.exp(rng.uniform(np.log(lo), np.log(hi), 20_000))
    got = vectorised(name)(x)
    err = ulps(got, x, ref)
    # exp's subnormal results have fewer bits: measure those in absolute ulps of the smallest.
    normal = np.abs(got) >= np.finfo(np.float64).tiny
    assert err[normal].max() <= bound, err[normal].max()


def test_special_values():
    with np.errstate(all="ignore"):
        specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e-310, -1.0, 710.0])
        for name, ref in [("exp", np.exp), ("log", np.log), ("tanh", np.tanh)]:
            got = vectorised(name)(specials)
            want = ref(specials)
            close = np.isclose(got, want, rtol=1e-15, atol=0, equal_nan=True)
            assert close.all(), (name, specials[~close], got[~close], want[~close])
        assert _pixel.exp(-746.0) == 0.0 and _pixel.exp(709.8) == np.inf
        assert _pixel.exp(-745.0) > 0  # subnormal, not flushed
        assert _pixel.tanh(0.0) == 0.0  # so that a single plane gets weight exactly 1/2
        assert _pixel.weight(3.0, 1.0) == 0.5


def test_round_half_even_is_numpys(rng):
    x = np.concatenate(
        [
            np.arange(-10, 10, 0.5),
            rng.uniform(-1e6, 1e6, 1000),
            [2.0**52 + 1, -(2.0**52) - 1, 2.0**63, 0.49999999999999994, -0.5],
        ]
    )
    got = vectorised("round_half_even")(x)
    assert np.array_equal(got, np.round(x))


def test_median9_exchange_network():
    # 0-1 principle: a comparator network sorting position 4 of every 0/1 input is a median.
    for bits in itertools.product([0.0, 1.0], repeat=9):
        assert _pixel.median9(*bits) == np.median(bits)
    data = np.random.default_rng(1).normal(size=(500, 9))
    assert all(_pixel.median9(*row) == np.median(row) for row in data)


@needs_numba
def test_plain_python_source_gives_the_compiled_bits(rng):
    # The same source, run on NumPy scalars without numba (as the CUDA simulator runs it).
    plain = _pixel.compile_for(lambda f: f)
    x = np.concatenate([rng.uniform(-40, 40, 300), [0.0, np.inf, -np.inf, np.nan, 1e-310]])
    with np.errstate(all="ignore"):
        for name in ("exp", "tanh", "log", "log10", "round_half_even"):
            compiled = [getattr(_pixel, name)(v) for v in x]
            python = [plain[name](np.float64(v)) for v in x]
            assert np.array_equal(compiled, python, equal_nan=True), name
        fit_c = _pixel.gauss_fit(0.0, 2.0, 4.0, np.log(3.0), np.log(5.0))
        fit_p = plain["gauss_fit"](*map(np.float64, (0.0, 2.0, 4.0, np.log(3.0), np.log(5.0))))
        assert fit_c == fit_p


SIMULATED = textwrap.dedent(
    """
    import numpy as np
    from numba import cuda
    from fstack_dask._algorithm import pixel as _pixel

    dev = _pixel.compile_for(cuda.jit(device=True))
    exp_d, tanh_d, log_d, weight_d = dev["exp"], dev["tanh"], dev["log"], dev["weight"]
    median_d, phi_d = dev["median9"], dev["phi_from_s"]

    @cuda.jit
    def kernel(x, out):
        i = cuda.grid(1)
        if i < x.size:
            out[0, i] = exp_d(x[i])
            out[1, i] = tanh_d(x[i])
            out[2, i] = log_d(x[i])
            out[3, i] = weight_d(2.0, x[i])
            out[4, i] = median_d(x[i], 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
            out[5, i] = phi_d(x[i], 0.2, 13.0, 11.5)

    x = np.random.default_rng(0).uniform(-30, 30, 100)
    x[:4] = [0.0, np.inf, -np.inf, np.nan]
    out = np.zeros((6, x.size))
    with np.errstate(all="ignore"):
        kernel[4, 32](x, out)
        cpu = np.array([[f(v) for v in x] for f in (
            _pixel.exp, _pixel.tanh, _pixel.log, lambda v: _pixel.weight(2.0, v),
            lambda v: _pixel.median9(v, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0),
            lambda v: _pixel.phi_from_s(v, 0.2, 13.0, 11.5),
        )])
    print("same bits" if np.array_equal(out, cpu, equal_nan=True) else "DIFFERENT")
    """
)


@needs_numba
def test_same_source_compiles_as_cuda_device_functions_in_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SIMULATED], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "same bits"


def test_misfit_recurrence_matches_the_direct_sum():
    """The recurrence over evenly spaced planes (2 products a plane) against the reference's
    direct sum (one exp a plane): equal to a few parts in 1e14, whatever the fit: centred
    inside or outside the planes, narrow, wide, inverted (s^2 < 0), not finite."""
    rng = np.random.default_rng(4)
    n = 51
    fm = (rng.random((n, 1, 1)) * 1e-3).astype(np.float32)
    for focus in (np.arange(n, dtype=float), 2.0 + 0.5 * np.arange(n), -0.25 * np.arange(n)):
        step = focus[1] - focus[0]
        for u, s2, amp in [
            (20.0, 4.0, 1e-3), (0.3, 0.2, 2e-3), (80.0, 30.0, 5e-4), (-40.0, 1.0, 1e-3),
            (10.0, -3.0, 1e-9), (25.5, 1e-3, 1e-3), (np.nan, 1.0, 1.0), (3.0, np.inf, 1.0),
        ]:  # fmt: skip
            direct = sum(
                abs(float(fm[p, 0, 0]) - _pixel.model(focus[p], u, s2, amp)) for p in range(n)
            )
            fast = _pixel.misfit(fm, 0, 0, focus, step, u, s2, amp)
            if np.isfinite(direct):
                assert fast == pytest.approx(direct, rel=1e-12, abs=1e-300), (u, s2, amp)
            else:
                assert (
                    np.isnan(fast) == np.isnan(direct)
                    and fast == direct
                    or (np.isnan(fast) and np.isnan(direct))
                )
    # uneven spacing: the direct formula itself, bit for bit
    uneven = np.array([0.0, 0.5, 1.5, 2.0, 3.5, 4.0])
    small = fm[:6]
    direct = 0.0
    for p in range(6):
        direct += abs(np.float64(small[p, 0, 0]) - _pixel.model(uneven[p], 1.7, 0.9, 1e-3))
    assert _pixel.misfit(small, 0, 0, uneven, 0.0, 1.7, 0.9, 1e-3) == direct
