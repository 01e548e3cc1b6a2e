"""The same bits on every worker: a thread left flushing subnormals (FTZ/DAZ, as a library
built with -ffast-math leaves it) or rounding otherwise fuses as every other thread does, and
a lazy graph names its engine where it is built (an adversarial run on mixed nodes,
2026-12-05)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import subprocess
import sys

import dask
import numpy as np
import pytest
import zarr

from fstack_dask import fuse, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._algorithm import block as _kernel
from fstack_dask._fp_env import in_ieee_arithmetic
from fstack_dask._outputs.pyramid import downsample

X86_GLIBC = platform.machine() in ("x86_64", "AMD64") and sys.platform.startswith("linux")
FTZ, DAZ = 0x8000, 0x0040
ROUND_BITS, TOWARD_ZERO, UPWARD = 0x6000, 0x6000, 0x4000
_MXCSR_AT = 28  # its offset in glibc's x86-64 fenv_t


def _libm():
    return ctypes.CDLL(ctypes.util.find_library("m"))


def _mxcsr() -> int:
    buf = ctypes.create_string_buffer(64)
    assert _libm().fegetenv(buf) == 0
    return int.from_bytes(buf.raw[_MXCSR_AT : _MXCSR_AT + 4], "little")


def _set_mxcsr(value: int) -> None:
    libm = _libm()
    buf = ctypes.create_string_buffer(64)
    assert libm.fegetenv(buf) == 0
    ctypes.memmove(ctypes.addressof(buf) + _MXCSR_AT, value.to_bytes(4, "little"), 4)
    assert libm.fesetenv(buf) == 0


@contextlib.contextmanager
def _thread_env(set_bits: int, clear: int = 0):
    """This thread's MXCSR with ``set_bits`` (and ``clear`` cleared), restored after."""
    saved = _mxcsr()
    _set_mxcsr((saved & ~clear) | set_bits)
    try:
        assert not in_ieee_arithmetic()
        yield
    finally:
        _set_mxcsr(saved)
    assert in_ieee_arithmetic()


def _subnormal_stack() -> np.ndarray:
    """float32 (z, y, x) whose left half holds only subnormal samples, as background-subtracted
    or deconvolved float data can."""
    s = synthetic_stack((64, 64), 9, dtype="float32", noise=0.02, seed=3).stack
    s = np.ascontiguousarray(s.transpose(2, 0, 1))
    s[:, :, :32] *= np.float32(1e-39)
    assert not (np.abs(s[:, :, :32]).view(np.uint32) & 0x7F800000).any()
    return s


def _bits(arrays) -> list[bytes]:
    return [np.ascontiguousarray(a).tobytes() for a in arrays]


pytestmark = pytest.mark.skipif(not X86_GLIBC, reason="sets x86's MXCSR through glibc")

ENVIRONMENTS = {
    "ftz+daz": (FTZ | DAZ, 0),
    "daz": (DAZ, 0),
    "ftz": (FTZ, 0),
    "toward zero": (TOWARD_ZERO, ROUND_BITS),
    "upward": (UPWARD, ROUND_BITS),
}


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_a_thread_left_in_another_floating_point_environment_fuses_the_same_bits(env):
    stack = _subnormal_stack()
    r = fuse(stack, axes="zyx", chunks=32, return_maps=True)
    expected = _bits(dask.compute(r.image, r.depth, r.selectivity, scheduler="sync"))
    assert np.count_nonzero(np.asarray(r.image)[:, :32])  # the subnormal half is not all 0
    bits, clear = ENVIRONMENTS[env]
    before = None
    with _thread_env(bits, clear):
        before = _mxcsr()
        got = _bits(dask.compute(r.image, r.depth, r.selectivity, scheduler="sync"))
        assert _mxcsr() == before  # the thread is given back as it was found
    assert got == expected


def test_fuse_zarr_and_its_pyramid_in_a_thread_that_flushes_subnormals(tmp_path):
    stack = _subnormal_stack()
    src = tmp_path / "src.zarr"
    write_stack(src, stack, axes="zyx", chunks=(9, 32, 32))
    kw = {"chunks": 32, "levels": 1, "depth_map": True, "selectivity_map": True}
    fuse_zarr(src, tmp_path / "a.ome.zarr", scheduler="synchronous", **kw)
    with _thread_env(FTZ | DAZ):
        fuse_zarr(src, tmp_path / "b.ome.zarr", scheduler="synchronous", **kw)
    a, b = (zarr.open_group(tmp_path / n, mode="r") for n in ("a.ome.zarr", "b.ome.zarr"))
    names = ["0", "1", "labels/depth/0", "labels/selectivity/0"]
    found = [n for n in names if n in a]
    assert "1" in found
    for name in found:
        assert a[name][...].tobytes() == b[name][...].tobytes(), name


def test_the_pyramid_s_mean_keeps_subnormal_values():
    values = np.full((4, 4), 1e-39, np.float32)
    expected = downsample(values, dtype=np.dtype(np.float32), nan_aware=False)
    assert expected.min() > 0
    with _thread_env(FTZ | DAZ):
        got = downsample(values, dtype=np.dtype(np.float32), nan_aware=False)
    assert got.tobytes() == expected.tobytes()


def test_a_lazy_graph_keeps_the_engine_it_was_built_with(monkeypatch):
    """The engine is named in the graph: computed where another engine is the default (a
    worker without numba, or with FSTACK_DASK_ENGINE set), its blocks are still fused by the
    engine the graph was built with."""
    if _kernel.blend_compiled is None:
        pytest.skip("needs numba")
    s = synthetic_stack((96, 96), 9, dtype="float32", noise=0.02, seed=1).stack
    stack = np.ascontiguousarray(s.transpose(2, 0, 1), dtype=np.float64)

    def built_with(engine):
        monkeypatch.setattr(_kernel, "ENGINE", engine)
        return fuse(stack, axes="zyx", chunks=48, return_maps=True)

    numpy_graph, compiled_graph = built_with("numpy"), built_with("compiled")
    results = {}
    for engine_now in ("numpy", "compiled"):
        monkeypatch.setattr(_kernel, "ENGINE", engine_now)
        for name, graph in (("numpy", numpy_graph), ("compiled", compiled_graph)):
            out = dask.compute(graph.image, graph.selectivity, scheduler="sync")
            results[name, engine_now] = _bits(out)
    assert results["numpy", "numpy"] == results["numpy", "compiled"]
    assert results["compiled", "numpy"] == results["compiled", "compiled"]
    # the engines do differ in the last bits here, so the test can tell them apart
    assert results["numpy", "numpy"] != results["compiled", "compiled"]


def test_where_the_environment_cannot_be_set_back_the_block_is_refused(monkeypatch):
    from fstack_dask import _fp_env

    monkeypatch.setattr(_fp_env, "_fenv_functions", lambda: None)
    stack = _subnormal_stack()
    with _thread_env(FTZ | DAZ):
        with pytest.raises(_fp_env.FloatingPointEnvironmentError, match="-ffast-math"):
            _kernel.fuse_block(stack)
    assert _kernel.fuse_block(stack).image.shape == (64, 64)  # IEEE: no library needed


_TRAPPED = r"""
import ctypes, ctypes.util, pathlib, sys
import dask, numpy as np
from fstack_dask import fuse, fuse_zarr
tmp = pathlib.Path(sys.argv[1])
libm = ctypes.CDLL(ctypes.util.find_library("m"))
traps = 0x01 | 0x04 | 0x08  # FE_INVALID | FE_DIVBYZERO | FE_OVERFLOW on x86
assert libm.feenableexcept(traps) != -1
r = fuse(np.load(tmp / "stack.npy"), axes="zyx", chunks=32, return_maps=True)
np.savez(tmp / "lazy.npz", *dask.compute(r.image, r.depth, r.selectivity, scheduler="threads"))
fuse_zarr(tmp / "src.zarr", tmp / "b.ome.zarr", chunks=32, levels=1, depth_map=True)
assert libm.fegetexcept() == traps  # the host's traps are given back
"""


def test_floating_point_traps_a_host_unmasked_neither_kill_the_run_nor_change_its_bits(tmp_path):
    """A host library's ``feenableexcept(FE_INVALID | ...)``: a flat patch's 0/0 in the kernels,
    or Python's ``nan < x`` in the run's own loop, killed the process with SIGFPE."""
    stack = _subnormal_stack()
    stack[:, :20, :20] = 0  # flat: its selectivity is 0/0
    np.save(tmp_path / "stack.npy", stack)
    write_stack(tmp_path / "src.zarr", stack, axes="zyx", chunks=(9, 32, 32))
    child = subprocess.run([sys.executable, "-c", _TRAPPED, str(tmp_path)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    r = fuse(stack, axes="zyx", chunks=32, return_maps=True)
    expected = dask.compute(r.image, r.depth, r.selectivity, scheduler="sync")
    got = np.load(tmp_path / "lazy.npz")
    assert _bits(expected) == _bits(got[f"arr_{i}"] for i in range(3))
    fuse_zarr(tmp_path / "src.zarr", tmp_path / "a.ome.zarr", chunks=32, levels=1, depth_map=True)
    a, b = (zarr.open_group(tmp_path / n, mode="r") for n in ("a.ome.zarr", "b.ome.zarr"))
    for name in ("0", "1", "depth/0"):
        assert a[name][...].tobytes() == b[name][...].tobytes(), name
