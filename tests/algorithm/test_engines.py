"""The compiled engine (numba) against the NumPy engine, its specification.

The two compute the same operations in the same order and differ only in the
last bits of exp/tanh/log, so they are compared by their rounded output: at
least 99.9 % of pixels identical and none more than one level apart.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fstack_dask import focus_stack, synthetic_stack
from fstack_dask._algorithm import block as _kernel
from fstack_dask._algorithm.block import fuse_block
from fstack_dask._algorithm.focus_stack import _fuse_in_bands, band_bounds
from fstack_dask._samples import sample_stack

pytestmark = pytest.mark.skipif(
    _kernel.blend_compiled is None, reason="numba is not installed: one engine only"
)


def assert_same_rounded(a: np.ndarray, b: np.ndarray) -> float:
    """>= 99.9 % identical, none more than one level (integers) or 1e-6 relative (float32).

    float64 output keeps every bit of the weights, so there the bar is closeness.
    """
    assert a.dtype == b.dtype and a.shape == b.shape
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if a.dtype == np.float64:
        assert np.allclose(a64, b64, rtol=1e-12, atol=0)
        return float(np.mean(a64 == b64))
    identical = float(np.mean(a64 == b64))
    assert identical >= 0.999, f"only {identical:.4%} identical"
    if a.dtype.kind in "iu":
        assert np.abs(a64 - b64).max() <= 1
    else:
        assert np.allclose(a64, b64, rtol=1e-6, atol=0)
    return identical


def both(block, **kwargs):
    kwargs = {"with_depth": True, "with_selectivity": True, **kwargs}
    return (
        fuse_block(block, engine="compiled", **kwargs),
        fuse_block(block, engine="numpy", **kwargs),
    )


def check_block(block, **kwargs):
    compiled, spec = both(block, **kwargs)
    assert_same_rounded(compiled.image, spec.image)
    # The arg-max plane comes from the same focus measure: the depth maps are identical.
    assert np.array_equal(compiled.depth, spec.depth, equal_nan=True)
    sc, ss = compiled.selectivity, spec.selectivity
    assert np.array_equal(np.isnan(sc), np.isnan(ss))
    assert np.allclose(sc, ss, rtol=1e-5, atol=1e-4, equal_nan=True)
    return compiled, spec


def plane_first(stack):
    return np.ascontiguousarray(
        np.moveaxis(stack, (3, 2), (0, 1)) if stack.ndim == 4 else np.moveaxis(stack, 2, 0)
    )


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "int16", "float64"])
@pytest.mark.parametrize("nhsize", [1, 3, 4, 9, 10])
def test_grey(dtype, nhsize):
    stack = synthetic_stack((67, 58), 9, dtype=dtype, noise=0.03, seed=nhsize).stack
    check_block(plane_first(stack), nhsize=nhsize)


@pytest.mark.parametrize("nhsize", [3, 9])
def test_rgb(nhsize):
    stack = synthetic_stack((61, 73), 7, rgb=True, dtype="uint8", noise=0.03, seed=5).stack
    check_block(plane_first(stack), nhsize=nhsize, rgb=True)


@pytest.mark.parametrize("planes", [1, 2, 3, 4, 5, 6])
def test_few_planes(planes):
    stack = synthetic_stack((40, 36), planes, dtype="uint16", noise=0.03, seed=planes).stack
    compiled, _ = check_block(plane_first(stack))
    if planes == 1:
        assert np.array_equal(compiled.image, stack[:, :, 0])
    if planes < 5:
        assert np.all(compiled.selectivity == np.inf)


@pytest.mark.parametrize("value", [0, 255])
def test_flat_and_saturated_regions(value):
    stack = synthetic_stack((64, 64), 9, dtype="uint8", noise=0.02, seed=7).stack.copy()
    stack[20:44, 20:44, :] = value
    stack[:6, :, :] = value  # touching the block's edge too
    compiled, _ = check_block(plane_first(stack))
    assert (compiled.image[22:42, 22:42] == value).all()
    assert np.isnan(compiled.depth[29:35, 29:35]).all()  # no contrast within two windows


def test_non_uniform_focus_and_parameters():
    stack = synthetic_stack((50, 45), 9, dtype="uint16", noise=0.02, seed=3).stack
    focus = np.array([10.0, 9.0, 7.5, 7.0, 4.0, 3.0, 1.0, 0.5, 0.0])
    check_block(plane_first(stack), focus=focus, alpha=0.5, sth=8.0)


@pytest.mark.parametrize("name", ["mitochondria_lightsheet", "pcb"])
def test_shipped_real_stacks(name):
    zyx = sample_stack(name)
    rgb = zyx.ndim == 4
    block = np.ascontiguousarray(np.moveaxis(zyx, 3, 0)) if rgb else zyx
    check_block(block, rgb=rgb)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "uint32"])
@pytest.mark.parametrize("nhsize", [1, 4, 9])
def test_focus_measures_are_bit_identical(dtype, nhsize):
    stack = synthetic_stack((37, 53), 6, dtype=dtype, noise=0.05, seed=nhsize).stack
    grey = np.ascontiguousarray(np.moveaxis(stack, 2, 0))
    compiled = _kernel.focus_measure(grey, nhsize, compiled=True)
    numpy_path = _kernel.focus_measure(grey, nhsize, compiled=False)
    for a, b in zip(compiled, numpy_path, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)


def test_transposed_input_is_read_as_is():
    stack = synthetic_stack((45, 38), 7, rgb=True, dtype="uint8", seed=2).stack
    view = np.moveaxis(stack, (3, 2), (0, 1))  # pixel-major memory, as focus_stack passes it
    assert not view.flags.c_contiguous
    a = fuse_block(view, rgb=True, engine="compiled")
    b = fuse_block(np.ascontiguousarray(view), rgb=True, engine="compiled")
    assert np.array_equal(a.image, b.image)


def test_engine_argument_and_switch():
    block = plane_first(synthetic_stack((20, 20), 6, dtype="uint8", seed=0).stack)
    with pytest.raises(ValueError, match="engine"):
        fuse_block(block, engine="opencl")
    code = "from fstack_dask._algorithm import block; print(block.ENGINE)"
    env = {**os.environ, "FSTACK_DASK_ENGINE": "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "numpy", out.stderr
    env["FSTACK_DASK_ENGINE"] = ""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "compiled" and not out.stderr, out.stderr
    # a typo ran the default in silence (a documentation run), then with a warning: now a run
    # refuses it, in Python and on the command line (tests/cli/test_environment.py)
    env["FSTACK_DASK_ENGINE"] = "nump"
    fuse = "import numpy as np, fstack_dask; fstack_dask.focus_stack(np.zeros((9, 9, 5)))"
    out = subprocess.run([sys.executable, "-c", fuse], env=env, capture_output=True, text=True)
    assert out.stderr.splitlines()[-1] == (
        "ValueError: FSTACK_DASK_ENGINE must be 'numpy' or 'compiled' (or unset), got 'nump'"
    )
    res = subprocess.run([sys.executable, "-m", "fstack_dask", "demo", "--help"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0 and "FSTACK_DASK_ENGINE" not in res.stderr  # no run, no word


# ------------------------------------------------------------ bands on threads


def test_band_bounds_cover_the_image():
    bounds = band_bounds(101, 4, 13)
    assert bounds[0][0] == 0 and bounds[-1][1] == 101
    for (_, end, _, _), (start, _, _, _) in zip(bounds, bounds[1:], strict=False):
        assert end == start
    for y0, y1, h0, h1 in bounds:
        assert h0 == max(0, y0 - 13) and h1 == min(101, y1 + 13)


@pytest.mark.parametrize(("rgb", "dtype", "nhsize"), [(False, "uint16", 9), (True, "uint8", 4)])
@pytest.mark.parametrize("engine", ["compiled", "numpy"])
def test_bands_are_bit_identical_to_one_call(rgb, dtype, nhsize, engine):
    stack = synthetic_stack((230, 61), 7, rgb=rgb, dtype=dtype, noise=0.03, seed=9).stack
    planes = plane_first(stack)
    whole = fuse_block(planes, nhsize=nhsize, rgb=rgb, engine=engine).image
    kw = {"nhsize": nhsize, "focus": np.arange(7.0), "alpha": 0.2, "sth": 13.0, "rgb": rgb}
    for workers in (2, 3, 5):
        banded = _fuse_in_bands(planes, workers=workers, engine=engine, **kw)
        assert np.array_equal(banded, whole), workers
    # focus_stack itself, any number of threads
    assert np.array_equal(focus_stack(stack, nhsize, workers=1), focus_stack(stack, nhsize))


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_workers(workers):
    stack = synthetic_stack((12, 12), 6, dtype="uint8", seed=0).stack
    with pytest.raises((TypeError, ValueError), match="workers"):
        focus_stack(stack, workers=workers)


def test_without_numba_the_numpy_engine_runs_alone(tmp_path):
    code = (
        "import sys; sys.modules['numba'] = None\n"  # as if numba were not installed
        "import numpy as np\n"
        "from fstack_dask import focus_stack, synthetic_stack\n"
        "from fstack_dask._algorithm import block as _kernel\n"
        "s = synthetic_stack((40, 30), 6, dtype='uint16', seed=3).stack\n"
        "np.save(sys.argv[1], focus_stack(s))\n"
        "print(_kernel.ENGINE)\n"
    )
    path = tmp_path / "out.npy"
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "numpy"
    without = np.load(path)
    stack = synthetic_stack((40, 30), 6, dtype="uint16", seed=3).stack
    assert_same_rounded(without, focus_stack(stack))


def test_every_engine_flushes_the_same_tiny_variances():
    """The NumPy engine holds its own copy of the compiled engine's TINY, so that importing it
    imports no numba (the planner imports it: a refused command paid numba's 1-2 s)."""
    from fstack_dask._algorithm import compiled, numpy_engine

    assert numpy_engine.TINY == compiled.TINY == np.finfo(np.float64).tiny


def _broken_numba(tmp_path) -> dict[str, str]:
    """An environment whose numba is found but fails to import, as one older than this NumPy
    does ('Numba needs NumPy 2.3 or less')."""
    fake = tmp_path / "site" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('Numba needs NumPy 0.1 or less')\n")
    path = os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "FSTACK_DASK_ENGINE": ""}


def test_a_numba_that_fails_to_import_leaves_the_numpy_engine_with_a_warning(tmp_path):
    code = (
        "import sys, warnings\n"
        "import numpy as np\n"
        "from fstack_dask import focus_stack, synthetic_stack\n"
        "s = synthetic_stack((40, 30), 6, dtype='uint16', seed=3).stack\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    np.save(sys.argv[1], focus_stack(s, workers=2))\n"
        "print(len([w for w in seen if 'numba' in str(w.message)]))\n"
    )
    path = tmp_path / "out.npy"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=300, env=_broken_numba(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1", done.stdout  # warned once, not once a band
    stack = synthetic_stack((40, 30), 6, dtype="uint16", seed=3).stack
    assert_same_rounded(np.load(path), focus_stack(stack))


def test_a_run_whose_numba_fails_to_import_is_refused_before_writing(tmp_path):
    from fstack_dask import write_stack

    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    write_stack(src, synthetic_stack((40, 30), 6, dtype="uint16", seed=3).stack, axes="zyx")
    env = _broken_numba(tmp_path)
    done = subprocess.run([sys.executable, "-m", "fstack_dask", "fuse", str(src), str(dst),
                           "--no-progress"], capture_output=True, text=True, timeout=300,
                          env=env)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "numba" in lines[0] and "FSTACK_DASK_ENGINE=numpy" in lines[0], lines[0]
    assert not dst.exists()
    done = subprocess.run([sys.executable, "-m", "fstack_dask", "fuse", str(src), str(dst),
                           "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**env, "FSTACK_DASK_ENGINE": "numpy"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_worker_processes_whose_numba_fails_to_import_refuse_the_run_before_writing(tmp_path):
    """``--scheduler processes``: this process fuses nothing and never imports numba, so the
    workers are asked before dst is created (it was created, its blocks handed out, and the
    run failed at its first block; 2026-12-06)."""
    from fstack_dask import write_stack

    src, out = tmp_path / "in.zarr", tmp_path / "out"
    write_stack(src, synthetic_stack((40, 30), 6, dtype="uint16", seed=3).stack, axes="zyx")
    env = {**_broken_numba(tmp_path), "FSTACK_DASK_PROCESS_POOL_IDLE": "0"}
    out.mkdir()
    before = out.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-m", "fstack_dask", "fuse", str(src),
                           str(out / "fused.zarr"), "--no-progress", "--scheduler", "processes"],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert out.stat().st_mtime_ns == before and not any(out.iterdir())  # never created
    assert "numba" in lines[0] and lines[0].endswith("(on a worker process)"), lines[0]
