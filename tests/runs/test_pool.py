"""``scheduler="processes"``: the worker processes a run leaves for the next one.

Real spawned processes, real Zarr stores. A run in the main thread that ends cleanly keeps
its pool (``_runs/pool.py``); the next run takes it only where nothing the processes
inherited changed, finds nothing of the last run in them, and gives the same bytes. A failed
run, an idle pool past its time, or ``FSTACK_DASK_PROCESS_POOL_IDLE=0`` ends the processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import zarr

from fstack_dask import SourceValueError, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._runs import pool as pools

PLANES, SIDE, CHUNK = 5, 96, 32


@pytest.fixture(autouse=True)
def no_kept_pool(monkeypatch):
    monkeypatch.delenv(pools.IDLE_ENV, raising=False)
    pools.end_kept()
    yield
    pools.end_kept()


@pytest.fixture()
def zyx():
    return synthetic_stack((SIDE, SIDE), PLANES, seed=3).stack.transpose(2, 0, 1).copy()


def _pids(pool) -> list[int]:
    return sorted(p.pid for ex in pool.executors for p in ex._processes.values())


def _left_in_process() -> dict[str, int]:
    """What runs left in a worker process (all of it is per run)."""
    from fstack_dask._runs import allocator, blocks, halo
    from fstack_dask._sources import share

    return {
        "opened": len(blocks._opened_by_token),
        "held": len(halo._registry) + len(halo._counts),
        "mappings": sum(len(q) for q in allocator._free.values()),
        "shared": len(share._attached),
    }


def _fuse(src, dst, **kwargs):
    return fuse_zarr(src, dst, axes="zyx", chunks=CHUNK, levels=0, scheduler="processes",
                     progress=False, **kwargs)["0"][...]  # fmt: skip


def test_the_next_run_takes_the_processes_and_finds_nothing_of_the_last(zyx, tmp_path):
    """Two runs of an in-memory source (shared with the processes) and one of a store:
    the same processes, the threads scheduler's bytes, and after each run nothing of it
    left in any process (its source, cores, mappings, the shared copy)."""
    expected = fuse_zarr(zyx, tmp_path / "threads.zarr", axes="zyx", chunks=CHUNK, levels=0,
                         scheduler="threads", progress=False)["0"][...]  # fmt: skip
    write_stack(tmp_path / "in.zarr", zyx, axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
    outputs, pids = [], None
    for k, src in enumerate((zyx, zyx, tmp_path / "in.zarr")):
        outputs.append(_fuse(src, tmp_path / f"p{k}.zarr"))
        pool = pools.kept()
        assert pool is not None
        assert pids is None or _pids(pool) == pids  # the same processes
        pids = _pids(pool)
        for slot in pool.slots:
            assert pool.submit_to(slot, _left_in_process).result() == {
                "opened": 0, "held": 0, "mappings": 0, "shared": 0}  # fmt: skip
    for out in outputs:
        np.testing.assert_array_equal(out, expected)


_COLLECTIONS: list[int] = []  # in a worker process: full collections since _count_collections


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start" and info["generation"] == 2:
        _COLLECTIONS.append(1)


def _count_collections(start: bool) -> int:
    import gc

    if start:
        gc.disable()  # only the ones asked for are counted
        _COLLECTIONS.clear()
        gc.callbacks.append(_on_gc)
        return 0
    gc.callbacks.remove(_on_gc)
    gc.enable()
    return len(_COLLECTIONS)


def test_the_end_of_a_store_s_run_collects_nothing_in_the_processes(zyx, tmp_path):
    """A run's end in each worker process unmaps the in-memory source's shared copy, after a
    full collection (arrays in cycles hold it); a store's run attached none, and its end ran
    that collection all the same (20-40 ms of each worker's CPU at each run's end, waited
    for: 2026-12-06). An in-memory source's run still collects."""
    write_stack(tmp_path / "in.zarr", zyx, axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
    _fuse(tmp_path / "in.zarr", tmp_path / "warm.zarr")  # the processes started and kept
    for src, collects in ((tmp_path / "in.zarr", False), (zyx, True)):
        pool = pools.kept()
        for slot in pool.slots:
            pool.submit_to(slot, _count_collections, True).result()
        _fuse(src, tmp_path / f"{collects}.zarr")
        pool = pools.kept()
        counts = [pool.submit_to(slot, _count_collections, False).result() for slot in pool.slots]
        assert any(counts) == collects, counts  # (a process that read nothing attached nothing)


def test_a_processes_run_runs_no_kernel_in_its_own_process(zyx, tmp_path, monkeypatch):
    """With ``scheduler="processes"`` the workers fuse: the run's own process loaded the
    compiled kernel all the same, in a warm-up that nothing used (0.3 s of CPU, numba's
    cache and SciPy: 2026-12-06). The threads scheduler's run still loads it, and the bytes
    are the same."""
    from fstack_dask._algorithm import block

    calls, real = [], block._fuse_compiled
    monkeypatch.setattr(block, "_fuse_compiled", lambda *a, **k: calls.append(1) or real(*a, **k))
    write_stack(tmp_path / "in.zarr", zyx, axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
    out = _fuse(tmp_path / "in.zarr", tmp_path / "p.zarr")
    assert calls == []
    expected = fuse_zarr(tmp_path / "in.zarr", tmp_path / "t.zarr", chunks=CHUNK, levels=0,
                         scheduler="threads", progress=False)["0"][...]  # fmt: skip
    assert calls  # here the blocks (and the warm-up) run in this process
    np.testing.assert_array_equal(out, expected)


def test_processes_whose_inheritance_changed_are_not_taken(zyx, tmp_path, monkeypatch):
    """A variable set in the environment since the processes started: a new pool, and the
    old processes end."""
    _fuse(zyx, tmp_path / "p1.zarr")
    old = _pids(pools.kept())
    monkeypatch.setenv("FSTACK_DASK_TEST_MARK", "1")
    _fuse(zyx, tmp_path / "p2.zarr")
    assert not set(_pids(pools.kept())) & set(old)
    _, alive = psutil.wait_procs([psutil.Process(p) for p in old if psutil.pid_exists(p)],
                                 timeout=30)  # fmt: skip
    assert not alive


def test_a_failed_run_ends_its_processes(tmp_path):
    """A source with NaN fails the run: its processes end, none is kept."""
    bad = np.full((PLANES, SIDE, SIDE), np.nan, np.float32)
    with pytest.raises(SourceValueError):
        _fuse(bad, tmp_path / "bad.zarr")
    assert pools.kept() is None


def test_idle_processes_end_after_their_time_or_with_the_run(zyx, tmp_path, monkeypatch):
    """``FSTACK_DASK_PROCESS_POOL_IDLE``: 1 s keeps the pool that long; 0 keeps none; a
    value that is not a number is refused before anything is written."""
    monkeypatch.setenv(pools.IDLE_ENV, "1")
    _fuse(zyx, tmp_path / "p1.zarr")
    pool = pools.kept()
    pids = _pids(pool)
    deadline = time.monotonic() + 30
    while pools.kept() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pools.kept() is None
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)],
                                 timeout=30)  # fmt: skip
    assert not alive
    monkeypatch.setenv(pools.IDLE_ENV, "0")
    _fuse(zyx, tmp_path / "p2.zarr")
    assert pools.kept() is None
    monkeypatch.setenv(pools.IDLE_ENV, "soon")
    with pytest.raises(ValueError, match=pools.IDLE_ENV):
        _fuse(zyx, tmp_path / "p3.zarr")
    assert not (tmp_path / "p3.zarr").exists()


@pytest.mark.parametrize("text", ["inf", "1e308", "nan"])
def test_an_idle_time_no_timer_can_wait_is_refused(monkeypatch, text):
    """The values "inf" and 1e308 were taken: the pool's idle timer died at its start with a
    traceback ("OverflowError: timestamp out of range") after the run; "nan" meant 0 (an
    adversarial run on names, 2026-12-06)."""
    monkeypatch.setenv(pools.IDLE_ENV, text)
    with pytest.raises(ValueError, match=rf"{pools.IDLE_ENV} must be a number of seconds from 0"):
        pools.idle_seconds()
    monkeypatch.setenv(pools.IDLE_ENV, "-5")  # as before: keeps none, as 0
    assert pools.idle_seconds() == 0.0


def test_a_run_in_another_thread_keeps_no_processes(zyx, tmp_path):
    """Processes die with the thread that started them: a run in another thread neither
    takes nor keeps a pool."""
    _fuse(zyx, tmp_path / "main.zarr")
    kept = pools.kept()
    out = {}
    thread = threading.Thread(target=lambda: out.update(a=_fuse(zyx, tmp_path / "t.zarr")))
    thread.start()
    thread.join()
    assert pools.kept() is kept  # the main thread's, untouched
    np.testing.assert_array_equal(out["a"], zarr.open_group(str(tmp_path / "main.zarr"))["0"][...])


def _fuse_in_fork(zyx, dst, expected, results) -> None:
    try:
        out = _fuse(zyx, dst)
        results.put(bool(np.array_equal(out, expected)))
    except BaseException as exc:  # reported to the parent, which asserts
        results.put(f"{type(exc).__name__}: {exc}")


def test_a_forked_child_starts_processes_of_its_own(zyx, tmp_path):
    """A process forked while a pool is kept sees the pool, whose processes are its
    parent's: it starts its own (it failed with "can only test a child process"), and the
    parent's pool is still there for the parent's next run."""
    import multiprocessing

    expected = _fuse(zyx, tmp_path / "parent.zarr")
    kept = pools.kept()
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    child = context.Process(target=_fuse_in_fork,
                            args=(zyx, tmp_path / "child.zarr", expected, results))  # fmt: skip
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0 and results.get() is True
    assert pools.kept() is kept
    np.testing.assert_array_equal(_fuse(zyx, tmp_path / "again.zarr"), expected)
    assert pools.kept() is kept


def _fuse_in_a_pool_worker(zyx, dst) -> str:
    try:
        fuse_zarr(zyx, dst, axes="zyx", scheduler="processes", progress=False)
    except ValueError as exc:
        return str(exc)
    return "fused"


def test_processes_in_a_daemonic_process_is_a_one_line_error(zyx, tmp_path):
    """fuse_zarr(scheduler="processes") inside a multiprocessing.Pool worker (daemonic: it
    may have no children) failed with an AssertionError from multiprocessing; now a
    ValueError naming the scheduler, before anything is written."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as workers:
        said = workers.apply(_fuse_in_a_pool_worker, (zyx, tmp_path / "out.zarr"))
    assert said.startswith("scheduler='processes' cannot start worker processes here"), said
    assert not (tmp_path / "out.zarr").exists()


_SCRIPT = """
import sys
import numpy as np
import fstack_dask

stack = np.moveaxis(fstack_dask.synthetic_stack((48, 48), 5, seed=1).stack, -1, 0).copy()
{body}
"""
_RUN = "fstack_dask.fuse_zarr(stack, sys.argv[1], axes='zyx', chunks=32, scheduler='processes', progress=False)"  # noqa: E501


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_is_told_why_its_processes_died(tmp_path, guarded):
    """Spawned processes import the script that started them: one that fuses at its top level
    fuses again in each, which multiprocessing refuses; the run ended in pages of tracebacks
    and a bare broken pool (a documentation run). The last line now says what to do."""
    import os
    import subprocess
    import sys

    body = f"if __name__ == '__main__':\n    {_RUN}" if guarded else _RUN
    script = tmp_path / "fuse_it.py"
    script.write_text(_SCRIPT.format(body=body))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.ome.zarr")], capture_output=True,
        text=True, timeout=300, check=False, env={**os.environ, pools.IDLE_ENV: "0"},
    )  # fmt: skip
    if guarded:
        assert done.returncode == 0, done.stderr
        return
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "BrokenProcessPool" in last, done.stderr[-2000:]
    assert f"importing the script that started them ({str(script)!r})" in last, last
    assert "'if __name__ == \"__main__\":'" in last and not (tmp_path / "out.ome.zarr").exists()


def test_a_second_ctrl_c_while_the_pool_shuts_down_leaves_no_process():
    """An impatient user's second Ctrl-C, landing while the pool's first process was being
    joined, cut the shutdown short: the other processes lived on, idle, for the kernel's
    life (a helper's run, 2026-12-05; five after six interrupted cells). The shutdown now
    ends every process, then the interrupt is raised."""
    import os
    import signal

    import psutil

    from fstack_dask._runs.pool import ProcessPool

    pool = ProcessPool(3)
    for slot in pool.slots:  # each process started
        pool.submit_to(slot, abs, -slot).result(timeout=120)
    children = {p.pid for p in psutil.Process().children()} - {None}
    first = pool.executors[0]
    real = first.shutdown

    def interrupted_shutdown(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the first process is joined
        return real(*args, **kwargs)

    first.shutdown = interrupted_shutdown
    with pytest.raises(KeyboardInterrupt):
        pool.shutdown()
    alive = [p for p in psutil.Process().children() if p.pid in children and p.is_running()
             and p.status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert not [p for p in alive if "resource_tracker" not in " ".join(p.cmdline())]


LEAKS_A_SEMAPHORE = """
import multiprocessing, os
from fstack_dask._runs.pool import _start_resource_tracker

_start_resource_tracker()
semaphore = multiprocessing.get_context("spawn").Semaphore()  # registered with the tracker
os._exit(0)  # never released: as when a hang-up killed the workers holding the pool's
"""


def test_the_resource_tracker_cleans_up_after_a_hangup_without_a_word():
    """After a hang-up of a processes run's group, multiprocessing's resource tracker reported
    the semaphores of the killed workers (which it then removes, its job): four lines of
    UserWarnings after the run's one line (seen in CI). Its warnings are off."""
    proc = subprocess.run([sys.executable, "-c", LEAKS_A_SEMAPHORE], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # (run returns once the tracker, holding stderr too, has ended and said what it says)
    assert "leaked semaphore" not in proc.stderr, proc.stderr


def test_a_stopped_run_waits_for_no_answer_from_a_process_that_just_died(monkeypatch):
    """SIGTERM to a processes run's group, on a loaded node: the run's handler came first and
    cancelled the tasks queued for a worker still alive, the worker then died, and the run
    asked every process for its counts before the executor had noticed the death. CPython
    3.11's manager thread fails on the cancelled tasks queued ahead of that request, which is
    never answered: the run waited for its 60 s grace (likely the CI failure of the
    group-SIGTERM test, 2026-12-06). Here the manager thread runs 1 s late, as on that node."""
    import concurrent.futures.process as cfp
    import os
    import signal

    from fstack_dask._cli.stopping import quiet_broken_pools
    from fstack_dask._runs.runners import runner_for
    from fstack_dask._runs.scheduler_choice import Scheduler

    late = cfp._ExecutorManagerThread.terminate_broken

    def terminate_broken_late(self, cause):
        time.sleep(1.0)
        return late(self, cause)

    monkeypatch.setattr(cfp._ExecutorManagerThread, "terminate_broken", terminate_broken_late)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # (put back after)
    quiet_broken_pools()  # the manager thread's InvalidStateError: CPython's, and expected
    pool = pools.ProcessPool(1)
    try:
        running = {pool.submit_to(0, time.sleep, 30) for _ in range(4)}  # 2 taken, 2 queued
        start = time.monotonic()
        while sum(f.running() for f in running) < 2 and time.monotonic() - start < 120:
            time.sleep(0.05)
        (worker,) = pool.executors[0]._processes.values()
        cancel = pool.cancel

        def cancel_then_the_worker_dies(futures):  # the group's SIGTERM reaches it late
            cancel(futures)
            os.kill(worker.pid, signal.SIGTERM)

        pool.cancel = cancel_then_the_worker_dies
        runner = runner_for(Scheduler("processes", 1, 1, pool), None, None, None, list)
        answers: list = []

        def stop() -> None:  # what a stopped run's halo exchange does: close, then counts
            runner.close(running)
            answers.append(runner.counts("token"))

        stopping = threading.Thread(target=stop, daemon=True)
        stopping.start()
        stopping.join(15)
        assert not stopping.is_alive(), "the stopped run waits for a dead process's answer"
        assert answers == [[]]
    finally:
        pool.shutdown()


def test_told_to_stop_waiting_a_run_waits_for_no_stuck_process():
    """SIGTERM to a processes run whose worker was stuck in a read that never returns (a dead
    mount): the grace period's second signal stopped only the first wait; the decode counts
    asked of the stuck process and the pool's shutdown then waited for it for ever. Told to
    stop waiting (the second signal, noted), they do not, and the process is ended."""
    import psutil

    from fstack_dask._errors import StopWaiting, forget_stop, note_stop
    from fstack_dask._runs.runners import runner_for
    from fstack_dask._runs.scheduler_choice import Scheduler

    pool = pools.ProcessPool(1)
    stuck = {pool.submit_to(0, time.sleep, 3600)}  # a read on a dead mount
    start = time.monotonic()
    while not any(f.running() for f in stuck) and time.monotonic() - start < 120:
        time.sleep(0.05)
    (worker,) = pool.executors[0]._processes.values()
    runner = runner_for(Scheduler("processes", 1, 1, pool), None, None, None, list)
    note_stop(StopWaiting())
    try:
        ended = threading.Event()

        def stop() -> None:  # a stopped run: close, counts, the pool's shutdown
            runner.close(stuck)
            runner.counts("token")
            pool.shutdown()
            ended.set()

        threading.Thread(target=stop, daemon=True).start()
        assert ended.wait(30), "a run told to stop waiting still waits for a stuck process"
        assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).status() == "zombie"
    finally:
        forget_stop()
        if not ended.is_set():
            os.kill(worker.pid, 9)


def test_a_worker_leaving_a_read_pending_on_zarrs_loop_exits_quietly():
    # A read that failed (an HTTP 404 or 403 with --scheduler processes) left its selection's
    # other reads pending on the worker's zarr loop: each was asyncio's "Task was destroyed
    # but it is pending!" and its repr at the worker's exit, under the run's one error line
    # (g90; the program's own loop was quieted by g85). A real process, set up as a worker is
    script = """
import asyncio, os
from fstack_dask._runs.pool import _die_with_parent
_die_with_parent(os.getppid())
import zarr.core.sync as sync
asyncio.run_coroutine_threadsafe(asyncio.sleep(3600), sync._get_loop())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
