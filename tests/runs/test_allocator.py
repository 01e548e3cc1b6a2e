"""The C allocator of a worker process during a run (:mod:`fstack_dask._runs.allocator`).

distributed's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes every
array from 128 KiB up a fresh mmap, faulted page by page: a cluster worker paid about a
third more CPU than a thread for the same blocks. These tests use real worker processes and
count the page faults the kernel reports (``ru_minflt``): a run's tasks give their worker
glibc's adaptive limits, and the run's end gives it its own setting back. Halo exchange's
kept cores are each given a mapping of their own, off the arenas the blocks' temporaries use.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
import sys

import numpy as np
import pytest
from distributed import Client, LocalCluster

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._runs import allocator, halo

pytestmark = pytest.mark.skipif(
    allocator._libc() is None, reason="glibc's allocator only (Linux with glibc)"
)


def _faults(nbytes: int = 2**20, times: int = 30) -> int:
    """Page faults of ``times`` arrays of ``nbytes`` allocated, touched and freed in turn."""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(times):
        a = np.ones(nbytes // 8)
        del a
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


def _probe(token: str) -> dict:
    """On a worker, in a task's thread: faults as the nanny left the allocator, while a run
    holds it, and after the run released it."""
    found = {"environ": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "plain": _faults()}
    allocator.hold(token)
    found["held"], found["holding"] = _faults(), allocator.held()
    allocator.release(token)
    found["released"], found["after"] = _faults(), allocator.held()
    return found


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as c:  # fmt: skip
        yield c


def test_a_run_gives_a_nanny_worker_heap_arrays_and_gives_back_its_setting(client):
    found = client.submit(_probe, "run-1", pure=False).result()
    assert found["environ"] == "65536"  # what the nanny sets (distributed's default config)
    # 30 arrays of 256 pages each (under numpy's huge-page size): every one faulted anew,
    # but held only the first
    assert found["plain"] > 20 * 256
    assert found["held"] < 4 * 256
    assert found["holding"] == {"run-1"}
    assert found["released"] > 20 * 256  # the worker's own setting is back
    assert found["after"] == set()


def _recording_libc(calls: list):
    """A stand-in for ``allocator._libc`` that records each call in ``calls`` and still
    makes it."""
    real = ctypes.CDLL(None)

    class Recorder:
        def mallopt(self, param, value):
            calls.append((param, value))
            return real.mallopt(param, value)

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return real.malloc_trim(pad)

    return Recorder


def _record_mallopt() -> None:
    """On a worker: record the allocator calls (still made) for the test to read."""
    allocator.calls = []
    allocator._libc = _recording_libc(allocator.calls)


def _recorded() -> list:
    return list(allocator.calls)


@pytest.mark.parametrize("exchange", ["1", "0"])
def test_a_cluster_run_holds_its_workers_allocator_and_gives_it_back(
    tmp_path, monkeypatch, exchange
):
    """Both paths (halo exchange, and blocks reading their halo through the cache) set the
    workers' allocator at their first task and restore it when the run ends. The process that
    plans the run chooses the path: the switch is set here, not only in the workers (where it
    chose nothing, both cases running halo exchange; found by g47)."""
    monkeypatch.setenv("FSTACK_DASK_HALO_EXCHANGE", exchange)
    data = synthetic_stack((96, 96), 5, seed=3).stack.transpose(2, 0, 1)
    src = tmp_path / "in.zarr"
    write_stack(src, data, axes="zyx", chunks=(5, 32, 32))
    env = {"FSTACK_DASK_HALO_EXCHANGE": exchange}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env=env) as cluster, Client(cluster) as c:  # fmt: skip
        c.run(_record_mallopt)
        fuse_zarr(src, tmp_path / "out.zarr", chunks=32, scheduler=c, progress=False)
        calls = [found for found in c.run(_recorded).values() if found]
        assert all(not held for held in c.run(allocator.held).values())
    assert calls, "no worker's allocator was set"
    for found in calls:  # each worker: held once for the run, then its own setting back
        assert found == [(-3, 32 * 2**20), (-1, 64 * 2**20), (-3, 128 * 2**10), (-1, 65536),
                         ("trim", 0)]  # fmt: skip


def test_a_process_left_adaptive_is_left_alone(monkeypatch):
    """Without either variable glibc adapts by itself: nothing is set."""
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(allocator, "_libc", lambda: calls.append("libc") or ctypes.CDLL(None))
    allocator.hold("run-2")
    assert allocator.held() == set() and calls == []
    allocator.release("run-2")


@pytest.mark.skipif(sys.platform != "linux", reason="Linux")
def test_the_threads_scheduler_in_a_process_with_the_variable_is_helped_too(tmp_path, monkeypatch):
    """A driver started with the variable (a notebook inside a dask worker's environment):
    the threads scheduler's run holds this process's allocator and gives it back."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    calls = []
    monkeypatch.setattr(allocator, "_libc", _recording_libc(calls))
    data = synthetic_stack((64, 64), 5, seed=4).stack.transpose(2, 0, 1)
    src = tmp_path / "in.zarr"
    write_stack(src, data, axes="zyx", chunks=(5, 32, 32))
    fuse_zarr(src, tmp_path / "out.zarr", chunks=32, scheduler="threads", progress=False)
    assert calls == [(-3, 32 * 2**20), (-1, 64 * 2**20), (-3, 128 * 2**10), (-1, 65536),
                     ("trim", 0)]  # fmt: skip
    assert allocator.held() == set()


def _mapping_of(array: np.ndarray):
    """The mmap an array's memory lies in, or None (the heap)."""
    base = array
    while isinstance(base, np.ndarray | memoryview):
        base = base.obj if isinstance(base, memoryview) else base.base
    return base if isinstance(base, mmap.mmap) else None


def test_an_array_held_across_tasks_has_a_mapping_of_its_own_used_again():
    """From 128 KiB: a writable mapping of its own, which the run's next array of at most its
    size gets once every view of the first is gone (not before); one too small for the next
    is unmapped; the run's end drops the free ones. Smaller arrays come from the heap."""
    big = allocator.outside_heap((4, 256, 128), np.dtype("uint16"), "run-3")
    assert big.shape == (4, 256, 128) and big.dtype == np.uint16 and big.flags.c_contiguous
    first = _mapping_of(big)
    assert first is not None and len(first) == big.nbytes
    view = big[1:, 5:]
    big[...] = 7
    del big
    other = allocator.outside_heap((4, 256, 128), "uint16", "run-3")
    second = _mapping_of(other)
    assert second is not first  # a view still reads the first
    assert int(view.sum()) == 7 * view.size
    del view, other  # both free now, the second last
    smaller = allocator.outside_heap((3, 256, 128), "uint16", "run-3")
    assert _mapping_of(smaller) is second and smaller.shape == (3, 256, 128)
    del smaller
    larger = allocator.outside_heap((5, 256, 128), "uint16", "run-3")
    assert len(_mapping_of(larger)) == larger.nbytes  # none free was large enough
    assert all(len(m) >= larger.nbytes for m in allocator._free["run-3"])  # smaller unmapped
    allocator.forget("run-3")
    assert "run-3" not in allocator._free
    small = allocator.outside_heap((2, 127, 256), "uint16", "run-3")  # 1 KiB short of 128 KiB
    assert _mapping_of(small) is None and small.shape == (2, 127, 256)
    assert "run-3" not in allocator._free


def test_halo_exchange_keeps_its_cores_outside_the_heap(tmp_path, monkeypatch):
    """A real run on threads: every core kept for a later fuse is in a mapping of its own
        (the bands handed over are copies, not counted), and the output is the same bits; the
    run's end drops the mappings left free."""
    monkeypatch.setenv("FSTACK_DASK_HALO_EXCHANGE", "1")
    kept = []
    keep = halo._keep

    def recording(token, block, held):
        if held.core is not None:
            kept.append(_mapping_of(held.core) is not None)
        keep(token, block, held)

    monkeypatch.setattr(halo, "_keep", recording)
    data = synthetic_stack((256, 384), 5, seed=5).stack.transpose(2, 0, 1)
    src = tmp_path / "in.zarr"
    write_stack(src, data, axes="zyx", chunks=(5, 128, 128))  # cores of 160 KiB
    out = fuse_zarr(src, tmp_path / "out.zarr", chunks=128, scheduler="threads", levels=0,
                    progress=False)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))
    assert len(kept) == 6 and all(kept), kept
    assert allocator._free == {}
