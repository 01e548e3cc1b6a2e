"""Samples at the edges of their dtype: fused to float64 precision or refused; never wrapped, NaN.

The fusion is scale-free (the focus measure enters only through ratios at one
pixel), so a pattern shifted and scaled into any corner of a dtype's range must
fuse to the same pattern, shifted and scaled, up to the dtype's (or float64's)
resolution there.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from fstack_dask import focus_stack, synthetic_stack
from fstack_dask._algorithm.block import float64_limit

ENGINES = ["compiled", "numpy"]


@pytest.fixture(scope="module")
def pattern():
    """A uint16 stack (values 0 .. 65535) and its fusion."""
    stack = synthetic_stack((48, 40), 7, dtype="uint16", noise=0.02, seed=4).stack
    return stack, focus_stack(stack)


def fused(stack, engine):
    from fstack_dask._algorithm.block import fuse_block

    planes = np.moveaxis(stack, 2, 0)
    return fuse_block(planes, engine=engine).image


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("dtype", "offset", "step"),
    [
        ("uint32", 2**32 - 65536, 1),  # top of the range, exact in float64
        ("int32", -(2**31), 1),  # bottom
        ("int32", 2**31 - 65536, 1),
        ("uint64", 2**64 - 65536 * 2048, 2048),  # float64 spacing there: 2048
        ("int64", 2**63 - 65536 * 1024, 1024),
        ("int64", -(2**63), 1024),
    ],
)
def test_wide_integers_near_their_limits(pattern, engine, dtype, offset, step):
    base, expected = pattern
    info = np.iinfo(dtype)
    values = np.array(offset, dtype=object) + base.astype(object) * step  # exact integers
    assert values.max() <= info.max and values.min() >= info.min
    stack = values.astype(dtype)
    out = fused(stack, engine)
    assert out.dtype == np.dtype(dtype)
    # Back in pattern units: equal to the uint16 fusion up to its rounding (one level) for
    # 32-bit data, exact in float64. 64-bit samples are blended in float64: near the ends
    # of the range one level here is one float64 ulp of the magnitude, and the weighted
    # sum of 7 planes is good to a few ulps (measured: at most 6, 60 % within one).
    back = (out.astype(object) - offset) / step
    diff = np.abs(back.astype(np.float64) - expected)
    if step == 1:
        assert diff.max() <= 1.0
        assert np.mean(diff == 0) > 0.9
    else:
        assert diff.max() <= 8.0
        assert np.mean(diff <= 2) > 0.8


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", ["uint64", "int64", "uint32", "int32", "int16", "uint8"])
def test_flat_stack_at_the_maximum_is_not_wrapped(engine, dtype):
    info = np.iinfo(dtype)
    for value in (info.max, info.min, info.max - 1, info.min + 1):
        stack = np.full((12, 10, 6), value, dtype)
        out = fused(stack, engine)
        if info.bits < 64 or value in (info.max, info.min):
            assert (out == value).all(), (value, out[0, 0])
        else:  # float64 precision: max - 1 is no float64 (it rounds to 2**63 or 2**64)
            gap = np.abs(out.astype(object) - int(value))
            assert (gap <= 2 ** (info.bits - 53)).all(), (value, out[0, 0])


@pytest.mark.parametrize("engine", ENGINES)
def test_saturated_and_empty_planes_mixed_at_64_bit(engine):
    # Plane mean of max and min: must be in range, not wrapped.
    stack = np.empty((8, 8, 6), np.int64)
    stack[..., :3] = np.iinfo(np.int64).max
    stack[..., 3:] = np.iinfo(np.int64).min
    out = fused(stack, engine)
    assert (np.abs(out.astype(np.float64)) <= 2048).all()  # mean 0 to float64 precision
    ustack = np.full((8, 8, 6), np.iinfo(np.uint64).max, np.uint64)
    ustack[..., 0] = 0
    uout = fused(ustack, engine)
    want = np.round(np.float64(np.iinfo(np.uint64).max) * 5 / 6)
    assert np.allclose(uout.astype(np.float64), want, rtol=1e-15)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        ("float32", 2.0**110),  # values up to ~8e37, squares far beyond float32
        ("float32", 2.0**-120),  # values ~1e-32, squares far below float32
        ("float64", 2.0**490),  # ~3e147
        ("float64", 2.0**-500),
        ("float16", 1.0),  # 0 .. 1 in float16, and near its top:
        ("float16", 2.0**15 / 65535),
    ],
)
def test_floats_near_their_range(pattern, engine, dtype, scale):
    base, _ = pattern
    unit = base.astype(np.float64) / 65535
    stack = (unit * (scale if dtype != "float16" else 65535 * scale)).astype(dtype)
    out = fused(stack, engine)
    assert out.dtype == np.dtype(dtype) and np.isfinite(out).all()
    # The same fusion as the same samples at unit scale (power-of-two scales are exact).
    ref = fused((stack.astype(np.float64) / (scale if dtype != "float16" else 1.0)), engine)
    got = out.astype(np.float64) / (scale if dtype != "float16" else 1.0)
    rtol = {"float16": 2e-3, "float32": 2e-6, "float64": 1e-12}[dtype]
    assert np.allclose(got, ref, rtol=rtol, atol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_float64_beyond_the_limit_is_refused(pattern, engine):
    base, _ = pattern
    stack = base.astype(np.float64) * (2.0 * float64_limit(9) / 65535)
    with pytest.raises(ValueError, match="im_stack"):
        fused(stack, engine)
    with pytest.raises(ValueError, match="im_stack"):
        focus_stack(-stack)
    # Just under the limit is fused, finite.
    under = base.astype(np.float64) * (0.5 * float64_limit(9) / 65535)
    assert np.isfinite(fused(under, engine)).all()


@pytest.mark.parametrize("exponent", [505, 510, 520, 540, 700, 1000])
def test_float64_too_small_for_its_variance_is_flat_not_nan(pattern, exponent):
    """Samples of about 1e-154 and below (normal float64 numbers) have a local variance
    below float64's smallest normal: as a subnormal, ``1 / fmax`` overflowed and the fusion
    gave NaN pixels, or the plane mean (an adversarial run). A variance that small is
    flushed to 0 (no contrast there) by every engine alike (to float64's last bits, where
    their exp and tanh differ): finite, never NaN; ``nhsize="auto"`` no longer divides by 0."""
    base, _ = pattern
    stack = base.astype(np.float64) / 65535 * 2.0**-exponent
    outs = [fused(stack, engine) for engine in ENGINES]
    assert all(np.isfinite(out).all() for out in outs)
    assert np.allclose(outs[0], outs[1], rtol=1e-12, atol=0)
    assert np.isfinite(focus_stack(stack, "auto", sth="auto")).all()


@pytest.mark.parametrize("dtype", ["uint64", "int64"])
def test_pyramid_levels_of_a_saturated_64_bit_image_are_not_wrapped(tmp_path, dtype):
    """Level 0 was clipped without wrapping, the levels above were not: their 2 x 2 means
    were clipped to the dtype's maximum in float64, where it rounds up to 2**64 or 2**63, and
    the cast wrapped a saturated region to 0 or to the minimum (an adversarial run)."""
    import zarr

    from fstack_dask import fuse_zarr

    info = np.iinfo(dtype)
    stack = np.full((6, 64, 64), info.max, dtype)
    stack[:, :, :32] = np.random.default_rng(0).integers(0, 1000, (6, 64, 32))
    fuse_zarr(stack, tmp_path / "out.zarr", axes="zyx", chunks=32, levels=2, progress=False)
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    for level, right in (("0", 40), ("1", 20), ("2", 10)):
        assert out[level][0, right] == info.max, level


LONG_DOUBLE = pytest.mark.skipif(
    np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 on this platform"
)


@pytest.mark.parametrize(
    "dtype", ["datetime64[s]", "timedelta64[ms]", pytest.param(np.longdouble, marks=LONG_DOUBLE)]
)
def test_dates_and_long_doubles_are_refused_in_one_line_naming_the_array(tmp_path, dtype):
    """A datetime64 or timedelta64 stack failed with NumPy's "cannot include dtype 'M' in a
    buffer", naming nothing (the check for a masked array read the ndarray's ``.data``); a
    long double (float128) passed every check and failed in numba's typing, a page of
    errors, or at the output, "No Zarr data type found". Now each entry point refuses
    it naming its parameter, and writes nothing."""
    from fstack_dask import fuse, fuse_zarr, write_stack

    stack = synthetic_stack((12, 10), 5, dtype="uint16", seed=0).stack.astype(dtype)
    with pytest.raises(TypeError, match=r"^im_stack .*dtype"):
        focus_stack(stack)
    zyx = np.moveaxis(stack, 2, 0)
    with pytest.raises(TypeError, match=r"^stack .*dtype"):
        fuse(zyx, axes="zyx")
    with pytest.raises(TypeError, match=r"^stack .*dtype"):
        write_stack(tmp_path / "in.zarr", zyx, axes="zyx")
    with pytest.raises(TypeError, match=r"^src .*dtype"):
        fuse_zarr(zyx, tmp_path / "out.zarr", axes="zyx", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@LONG_DOUBLE
def test_a_long_double_hdf5_dataset_is_refused_by_the_cli(tmp_path):
    """An HDF5 dataset of long doubles (h5py stores them) reached the output, where the
    command line said only "No Zarr data type found that matches dtype 'dtype('float128')'"."""
    import subprocess
    import sys

    h5py = pytest.importorskip("h5py")
    stack = synthetic_stack((12, 10), 5, dtype="uint16", seed=0).stack
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["s"] = np.moveaxis(stack, 2, 0).astype(np.longdouble)
    for dst in ("out.ome.zarr", "out.ome.tif"):
        argv = ["fuse", str(tmp_path / "in.h5/s"), str(tmp_path / dst), "--axes", "zyx"]
        run = subprocess.run(
            [sys.executable, "-m", "fstack_dask", *argv], capture_output=True, text=True
        )
        assert run.returncode == 2, run.stderr
        (line,) = run.stderr.strip().splitlines()
        assert re.search(r"error: src '.*in\.h5/s' has dtype float128 .*float64", line), line
        assert not (tmp_path / dst).exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_first_pass_for_s_casts_no_uninitialised_image(monkeypatch, engine):
    """The lazy ``fuse()`` of a stack whose ``S`` is undefined somewhere (a dark frame) takes
    a first pass that computes ``S`` alone; the compiled engine then cast its image array,
    never written, to the samples' dtype: from float16 whatever the memory held gave "overflow
    encountered in cast" (13 of 20 float16 stacks, g57's run). Uninitialised memory holds
    anything; here, every ``np.empty`` is filled with bytes 0x7F (float64: 1.4e306)."""
    from fstack_dask import fuse
    from fstack_dask._algorithm.block import fuse_block

    stack = (synthetic_stack((13, 11), 6, dtype="uint16", seed=1).stack / 65535).astype("f2")
    stack[..., 2] = 0
    want = focus_stack(stack)
    real_empty = np.empty

    def garbage(shape, dtype=float, *args, **kwargs):
        out = real_empty(shape, dtype, *args, **kwargs)
        if out.dtype.kind == "f":
            out.reshape(-1).view(np.uint8).fill(0x7F)  # float64: 1.4e306
        return out

    monkeypatch.setenv("FSTACK_DASK_ENGINE", engine)
    monkeypatch.setattr(np, "empty", garbage)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        planes = np.moveaxis(stack, 2, 0)
        assert not fuse_block(planes, selectivity_only=True, engine=engine).image.any()
        out = fuse(stack, axes="yxz", chunks=(7, 5)).compute(scheduler="sync")
    assert np.array_equal(out, want)


@pytest.mark.parametrize("order", [">", "<"])
def test_auto_nhsize_of_float64_of_either_byte_order_says_it_chose_it(order):
    """As below, for a big-endian float64 stack (FITS, a '>f8' Zarr v2 store): the sample's
    magnitude was not looked at, and the fusion refused it naming nhsize=31."""
    base = synthetic_stack((128, 128), 9, dtype="float64", noise=0.1, seed=1).stack
    stack = (base / np.abs(base).max() * (0.99 * float64_limit(9))).astype(f"{order}f8")
    with pytest.raises(ValueError, match=r"^nhsize='auto' chose nhsize=31 .* pass nhsize=9 "):
        focus_stack(stack, nhsize="auto")


def test_auto_nhsize_beyond_the_float64_limit_says_it_chose_it(tmp_path, capsys):
    """float64 just under the limit of the default nhsize=9, noisy enough that "auto" picks
    31: it was refused at the first block naming nhsize=31, a value the user never gave.
    Now refused before anything is fused, saying "auto" chose it and which nhsize holds it."""
    import zarr

    from fstack_dask import fuse_zarr
    from fstack_dask._cli.main import main

    base = synthetic_stack((128, 128), 9, dtype="float64", noise=0.1, seed=1).stack
    stack = base / np.abs(base).max() * (0.99 * float64_limit(9))
    assert np.isfinite(focus_stack(stack)).all()  # the default window holds it
    told = r"^nhsize='auto' chose nhsize=31 .*magnitude 3.69e\+152.* pass nhsize=9 "
    with pytest.raises(ValueError, match=told):
        focus_stack(stack, nhsize="auto")
    with pytest.raises(ValueError, match=told):
        fuse_zarr(stack, tmp_path / "out.zarr", axes="yxz", nhsize="auto", progress=False)
    assert not (tmp_path / "out.zarr").exists()
    zarr.create_array(str(tmp_path / "in.zarr"), data=np.moveaxis(stack, 2, 0),
                      dimension_names=list("zyx"))  # fmt: skip
    code = main(["fuse", str(tmp_path / "in.zarr"), str(tmp_path / "cli.zarr"), "--nhsize", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "--nhsize auto chose nhsize=31" in err and "pass --nhsize 9 " in err
