"""One writer at a time across PID namespaces and hosts (issue 22): the lock is a lease.

Real processes: runs in their own PID namespaces (``unshare``, where we may), runs really
stopped with SIGSTOP and continued with SIGCONT, and two "hosts" played by two values of
``FSTACK_DASK_LOCK_MACHINE`` (what identifies a machine's kernel for the lock) with a short
``FSTACK_DASK_LOCK_STALE_AFTER``, so that a lease runs out in seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr
from conftest import tree_digest
from safety_util import (
    CACHE,
    CHUNK,
    cli,
    one_line_error,
    popen_cli,
    small_stack,
    unshare_works,
    write_src,
)

from fstack_dask import DestinationLockedError, focus_stack, fuse_zarr
from fstack_dask._errors import LeaseLostError
from fstack_dask._locations import resolve
from fstack_dask._outputs.destination import Destination
from fstack_dask._outputs.lock import Lease
from fstack_dask._outputs.ownership import STATE_DIR

FUSE = ("--chunks", CHUNK, "--no-progress")
STALE = 2.0  # seconds: the lease of these tests' runs

# A CLI run that stops itself (a real SIGSTOP) before its block number N + 1, at a point
# where it has checked nothing yet: what a run does when its host freezes between blocks.
STOPS_ITSELF = textwrap.dedent(
    """
    import os, signal, sys
    from fstack_dask._runs.blocks import FuseJob
    from fstack_dask._cli.main import main

    n = int(sys.argv[1])
    real, calls = FuseJob.fuse_and_write, [0]

    def run_block(self, block, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n + 1:
            os.kill(os.getpid(), signal.SIGSTOP)
        return real(self, block, *args, **kwargs)

    FuseJob.fuse_and_write = run_block
    sys.exit(main(sys.argv[2:]))
    """
)


def _stops_itself(n: int, *args, env) -> subprocess.Popen:
    cmd = [sys.executable, "-c", STOPS_ITSELF, str(n), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "XDG_CACHE_HOME": CACHE, **env})  # fmt: skip


# Generous: a loaded machine (load 20) took 88 s to reach the stop; only a failure waits it out
def _wait_stopped(proc, timeout=300.0) -> psutil.Process:
    target = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.status() == psutil.STATUS_STOPPED:
            return target
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run never stopped")


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=180)
    return proc.returncode, err


def _expected(seed: int) -> np.ndarray:
    return focus_stack(small_stack(seed).transpose(1, 2, 0))


def test_a_run_stopped_past_its_lease_on_another_host_loses_it_and_writes_nothing_more(
    tmp_path,
):
    """Host A's run is suspended longer than its lease; host B's `--overwrite` takes the lock
    over and completes. When A continues, it stops at its next block with a one-line error
    (the old code went on, marked the output complete with B's provenance, and left pixels
    from neither source)."""
    a_src = write_src(tmp_path / "a.zarr", seed=0)
    b_src = write_src(tmp_path / "b.zarr", seed=5)
    dst = tmp_path / "out.zarr"
    lease = {"FSTACK_DASK_LOCK_STALE_AFTER": str(STALE)}
    host_a = _stops_itself(2, "fuse", a_src, dst, *FUSE, "--scheduler", "synchronous",
                           env={**lease, "FSTACK_DASK_LOCK_MACHINE": "host-a"})  # fmt: skip
    _wait_stopped(host_a)
    assert len(os.listdir(dst / STATE_DIR / "done")) == 2
    time.sleep(STALE + 0.5)  # no heartbeat from A for longer than its lease
    host_b = cli("fuse", b_src, dst, "--overwrite", *FUSE,
                 env={**lease, "FSTACK_DASK_LOCK_MACHINE": "host-b"})  # fmt: skip
    assert host_b.returncode == 0, host_b.stderr
    assert "taking over the stale lock" in host_b.stderr
    finished_by_b = tree_digest(dst)
    os.kill(host_a.pid, signal.SIGCONT)
    code, err = _finish(host_a)
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("fstack-dask: error: ") and "taken over" in line
    assert "stopped writing" in line
    assert tree_digest(dst) == finished_by_b  # not one byte from A after it lost the lock
    out = zarr.open_group(str(dst), mode="r")
    assert out.attrs["fstack_dask"]["src"] == str(b_src)
    np.testing.assert_array_equal(out["0"][...], _expected(5))


def test_a_stopped_run_on_this_machine_keeps_its_lock_however_old_its_heartbeat(tmp_path):
    """On one machine the kernel tells a live holder (its flock), stopped or not: a second
    run is refused even after the heartbeat ran out, and the first finishes normally."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    lease = {"FSTACK_DASK_LOCK_STALE_AFTER": str(STALE)}
    first = _stops_itself(2, "fuse", src, dst, *FUSE, "--scheduler", "synchronous", env=lease)
    _wait_stopped(first)
    time.sleep(STALE + 0.5)
    before = tree_digest(tmp_path)
    for flag in ("--overwrite", "--resume"):
        proc = cli("fuse", src, dst, flag, *FUSE, env=lease)
        assert proc.returncode == 1, proc.stderr
        assert "is being written by pid" in one_line_error(proc)
    assert tree_digest(tmp_path) == before
    os.kill(first.pid, signal.SIGCONT)
    code, err = _finish(first)
    assert code == 0, err
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], _expected(0))


@pytest.mark.skipif(
    not unshare_works("--pid", "--fork", "--mount-proc", "true"),
    reason="needs root and unshare for PID namespaces",
)
def test_runs_in_two_pid_namespaces_do_not_take_each_others_lock(tmp_path):
    """Two containers on one host: each run is "pid 1" of its own PID namespace, on the same
    host name. The old code took the live run's lock for a stale one (its pid 1 was alive,
    with another start time) and deleted its output."""
    src = write_src(tmp_path / "src.zarr")
    other = write_src(tmp_path / "other.zarr", seed=7)
    dst = tmp_path / "out.zarr"
    # A shell is each namespace's init (pid 1: the kernel shields it from its own SIGSTOP),
    # and the run its pid 2, in both namespaces.
    namespace = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", '"$@"; exit $?', "sh"]
    first = subprocess.Popen(
        [*namespace, sys.executable, "-c", STOPS_ITSELF, "2", "fuse", str(src), str(dst),
         *map(str, FUSE), "--scheduler", "synchronous"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XDG_CACHE_HOME": CACHE},
    )  # fmt: skip
    python = _wait_child(first)
    _wait_stopped_process(python)
    lock = json.loads((dst / STATE_DIR / "lock").read_text())
    assert lock["pid"] == 2  # as the run sees itself in its namespace
    before = tree_digest(tmp_path)
    for flag in ("--overwrite", "--resume"):
        second = popen_cli("fuse", other, dst, flag, *FUSE, prefix=namespace)
        code, err = _finish(second)
        assert code == 1, err
        assert "is being written by pid 2" in err
    assert tree_digest(tmp_path) == before
    os.kill(python.pid, signal.SIGCONT)
    code, err = _finish(first)
    assert code == 0, err
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], _expected(0))


def _wait_child(proc, timeout=60.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "python" in p.name()]  # fmt: skip
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(proc.communicate())


def _wait_stopped_process(process: psutil.Process, timeout=300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.status() == psutil.STATUS_STOPPED:
            return
        time.sleep(0.02)
    raise AssertionError("the run never stopped")


def test_a_lease_taken_over_is_refused_to_its_old_holder(tmp_path):
    """In one process: the token in the lock decides, whatever else the lock says."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    destination = Destination(resolve(dst, name="dst"))
    target = destination.take("complete")
    try:
        lease = target.lease
        lease.check()  # ours
        body = json.loads((dst / STATE_DIR / "lock").read_text())
        stolen = {**body, "token": "another run's", "pid": 4242, "host": "node-7"}
        (dst / STATE_DIR / "lock").write_text(json.dumps(stolen))
        with pytest.raises(LeaseLostError, match="taken over by pid 4242 on node-7"):
            lease.check()
        with pytest.raises(DestinationLockedError):  # a LeaseLostError is one
            Lease(lease.lock, lease.token, lease.what).check()
        (dst / STATE_DIR / "lock").unlink()
        with pytest.raises(LeaseLostError, match="taken over and is gone"):
            lease.check()
    finally:
        Destination.release(target)
    assert not Path(dst / STATE_DIR).exists()


def test_a_dst_moved_away_while_it_is_written_says_so(tmp_path, monkeypatch):
    """Another program moves dst away (``mv``) after the run's third block: the run stops
    writing and says that dst is gone, not that another run judged its lock stale (what it
    said: an adversarial run, 2026-12-06); nothing is written at the old path again."""
    from fstack_dask._outputs.state import OutputState

    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    real, done = OutputState.mark_done, []

    def mark_done(self, name, *args, **kwargs):
        real(self, name, *args, **kwargs)
        done.append(name)
        if len(done) == 3:
            dst.rename(tmp_path / "moved.zarr")

    monkeypatch.setattr(OutputState, "mark_done", mark_done)
    with pytest.raises(LeaseLostError, match=r"out.zarr', is gone \(moved or removed by anoth"):
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False)
    assert not dst.exists() and len(done) == 3


def test_a_stalled_run_never_rewrites_an_object_store_lock(monkeypatch):
    """On an object store the heartbeat reads the lock (still ours?) and then rewrites it: not
    one step. A run stalled in between past the stale age, whose lock another run took over
    meanwhile, wrote its own back over it, and the run that took over lost (a seventh
    adversarial run). After such a stall it rewrites nothing and counts the lock lost. (The
    interleaving is made by hand: the ownership check passed, then the takeover.)"""
    import uuid

    from fstack_dask._outputs import lock as _lock
    from fstack_dask._outputs import staleness as _staleness

    monkeypatch.setattr(_staleness, "HEARTBEAT_EVERY", 0.05)
    where = resolve(f"memory://lease-{uuid.uuid4().hex}/out.zarr/.fstack_dask/lock", name="dst")
    held = _lock.DestinationLock(where, "dst 'out.zarr'")
    held.acquire()
    try:
        taker = _lock.DestinationLock(where, "dst 'out.zarr'")
        held._beaten = time.monotonic() - 2 * _staleness.LOCK_STALE_AFTER  # suspended that long
        where.fs.pipe_file(where.path, taker.body)  # the other run took it over
        monkeypatch.setattr(held, "_still_mine", lambda: True)  # as checked before the takeover
        time.sleep(0.5)
        assert json.loads(where.read_bytes())["token"] == taker.token
        assert held.lost
    finally:
        held.stop_heartbeat()


def test_a_lock_that_cannot_be_read_once_keeps_beating(monkeypatch):
    """One failed read of the lock (a network error on an object store) stopped the heartbeat
    for good, and the live run's lock went stale (found reviewing the heartbeat). A read
    that fails says nothing; the next beat asks again."""
    import uuid

    from fstack_dask._outputs import lock as _lock
    from fstack_dask._outputs import staleness as _staleness

    monkeypatch.setattr(_staleness, "HEARTBEAT_EVERY", 0.05)
    where = resolve(f"memory://lease-{uuid.uuid4().hex}/out.zarr/.fstack_dask/lock", name="dst")
    held = _lock.DestinationLock(where, "dst 'out.zarr'")
    held.acquire()
    try:
        from fstack_dask._locations import Location

        real, failures = Location.read_bytes, {"n": 0}

        def flaky(self):
            if self == where and failures["n"] < 3:
                failures["n"] += 1
                raise ConnectionError("the store did not answer")
            return real(self)

        monkeypatch.setattr(Location, "read_bytes", flaky)
        beaten = held._beaten
        time.sleep(0.6)
        assert failures["n"] == 3 and not held.lost and held._beaten > beaten
    finally:
        held.release()


# A live run on "another host": it holds the lock of dst (with its heartbeat) until killed.
HOLDS_THE_LOCK = textwrap.dedent(
    """
    import sys, time
    from fstack_dask._locations import resolve
    from fstack_dask._outputs.lock import DestinationLock

    held = DestinationLock(resolve(sys.argv[1], name="dst"), "dst")
    held.acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


class _SkewedClock:
    """This process's wall clock ``skew`` seconds off (the lock module's ``time``)."""

    def __init__(self, skew: float):
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew

    def __getattr__(self, name):
        return getattr(time, name)


def _skewed_lease(monkeypatch, skew: float, stale: float) -> None:
    """This process's lock rules with a lease of ``stale`` seconds and a clock ``skew`` off."""
    from fstack_dask._outputs import lock as _lock
    from fstack_dask._outputs import staleness as _staleness

    monkeypatch.setattr(_staleness, "LOCK_STALE_AFTER", stale)
    monkeypatch.setattr(_staleness, "HEARTBEAT_EVERY", stale / 6)
    monkeypatch.setattr(_lock, "time", _SkewedClock(skew))
    monkeypatch.setattr(_staleness, "time", _SkewedClock(skew))


@contextlib.contextmanager
def _holder_on_another_host(lock: Path, stale: float):
    """A live run on "host-a" holding ``lock`` with its heartbeat, killed at the end."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FSTACK_DASK_LOCK_STALE_AFTER": str(stale),
           "FSTACK_DASK_LOCK_MACHINE": "host-a"}  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", HOLDS_THE_LOCK, str(lock)], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("skew", [120.0, -1800.0])
def test_clocks_that_disagree_neither_take_a_live_lock_nor_keep_a_dead_one(
    tmp_path, monkeypatch, caplog, skew
):
    """The heartbeat is the file's mtime, stamped by the file server's or the writer's clock.
    An HPC run found that a node whose clock was 120 s ahead took over a live run's lock
    (killing that run), and that a dead run's lock dated 30 min ahead kept its output locked
    for 31 min. A lock that looks stale, or is dated ahead, is now watched for the stale age:
    the live one is refused, the dead one taken over once watched (once per process)."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _skewed_lease(monkeypatch, skew, STALE)
    caplog.set_level(logging.INFO, logger="fstack_dask")
    with _holder_on_another_host(dst / STATE_DIR / "lock", STALE):
        for flag in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(DestinationLockedError, match="being written by pid"):
                fuse_zarr(src, dst, chunks=CHUNK, progress=False, **flag)
        assert "watching it for" in caplog.text
    # The holder is dead now; its lock stays, dated by its clock, with no heartbeat.
    caplog.clear()
    start = time.monotonic()
    out = fuse_zarr(src, dst, chunks=CHUNK, progress=False, resume=True)
    assert time.monotonic() - start < 30
    assert caplog.text.count("watching it for") == 1  # watched once, not by every step
    assert "taking over the stale lock" in caplog.text
    np.testing.assert_array_equal(out["0"][...], _expected(0))


def test_a_filesystem_without_flock_still_takes_the_lock(tmp_path, monkeypatch):
    """Lustre mounted with -o noflock answers flock with ENOSYS: every run failed with a bare
    "[Errno 38] Function not implemented" (an HPC run). The exclusive create decides."""
    import errno

    from fstack_dask._outputs import lock as _lock

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(_lock.fcntl, "flock", no_flock)
    src = write_src(tmp_path / "src.zarr")
    out = fuse_zarr(src, tmp_path / "out.zarr", chunks=CHUNK, progress=False)
    np.testing.assert_array_equal(out["0"][...], _expected(0))


def test_a_lock_dated_ahead_keeps_the_stale_age_as_its_grace(tmp_path, monkeypatch):
    """Watching a lock dated ahead for two heartbeats only gave its holder a third of the
    stale age: a holder paused for 3 s of its 6 lost its lock (a review, 2026-12-05). It is
    watched for the whole stale age now."""
    from fstack_dask._outputs import staleness as _staleness

    lock = tmp_path / "out.zarr" / STATE_DIR / "lock"
    _skewed_lease(monkeypatch, -1800.0, 3.0)  # its clock 30 min ahead
    with _holder_on_another_host(lock, 3.0) as holder:
        os.kill(holder.pid, signal.SIGSTOP)  # a pause of 2 s: less than the stale age
        wake = threading.Timer(2.0, os.kill, (holder.pid, signal.SIGCONT))
        wake.start()
        assert _staleness.live_lock(resolve(str(lock), name="dst")) is not None
        wake.join()


@pytest.mark.parametrize("lacks", ["hard links", "hard links and renameat2's flags"])
def test_a_filesystem_without_hard_links_still_takes_the_lock_once(tmp_path, monkeypatch, lacks):
    """FAT and exFAT (the USB drives and SD cards of microscopes) have no hard links: every
    run there failed at its lock with "[Errno 1] Operation not permitted" (an adversarial
    run, 2026-12-06). A rename that does not replace names the lock instead, or, where the
    filesystem lacks that too, an exclusive create: either still admits one run."""
    import errno

    from fstack_dask._outputs import lock as _lock

    def no_link(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted", src)

    src = write_src(tmp_path / "src.zarr")
    # in the lock's module only: zarr's own exclusive writes link too (zarr's to mend)
    no_links = types.SimpleNamespace(**{**vars(os), "link": no_link})
    monkeypatch.setattr(_lock, "os", no_links)
    if lacks != "hard links":
        monkeypatch.setattr(_lock, "renameat2", lambda *args: False)
    dst = tmp_path / "out.zarr"
    out = fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    np.testing.assert_array_equal(out["0"][...], _expected(0))
    target = Destination(resolve(dst, name="dst")).take("complete")
    try:
        assert json.loads((dst / STATE_DIR / "lock").read_text())["token"] == target.lease.token
        with pytest.raises(DestinationLockedError):
            fuse_zarr(src, dst, chunks=CHUNK, overwrite=True, progress=False)
        assert os.listdir(dst / STATE_DIR) == ["lock"]  # nothing aside left behind
    finally:
        Destination.release(target)
    assert not (dst / STATE_DIR).exists()


def test_an_io_error_removing_the_locks_temporary_name_does_not_fail_the_run(tmp_path, monkeypatch):
    """The lock is written under a temporary name, linked to 'lock', and the temporary name
    removed; an I/O error on that last unlink (a flaky NFS, strace's inject=unlink:error=EIO)
    failed the run that held the lock ('[Errno 5] Input/output error: '.../lock.HEX.tmp'',
    exit 1, nothing said of dst) and left the lock file and its second name in dst. The lock
    is ours: the run goes on, and the name left goes with the state folder."""
    import errno

    from fstack_dask._outputs import lock as _lock

    def unlink(path, *args, **kwargs):
        if str(path).endswith(".tmp") and "/lock." in str(path):
            raise OSError(errno.EIO, "Input/output error", path)
        return os.unlink(path, *args, **kwargs)

    src = write_src(tmp_path / "src.zarr")
    monkeypatch.setattr(_lock, "os", types.SimpleNamespace(**{**vars(os), "unlink": unlink}))
    dst = tmp_path / "out.zarr"
    out = fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    np.testing.assert_array_equal(out["0"][...], _expected(0))
    assert out.attrs["fstack_dask"]["complete"] is True and not (dst / STATE_DIR).exists()
    out = fuse_zarr(src, dst, chunks=CHUNK, nhsize=5, overwrite=True, progress=False)
    assert out.attrs["fstack_dask"]["nhsize"] == 5 and not (dst / STATE_DIR).exists()
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]


def test_a_lock_nested_too_deeply_to_parse_reads_as_unreadable(tmp_path, monkeypatch):
    """An unfinished output whose lock holds JSON nested 100000 deep (damaged, or not ours)
    stopped ``--resume``, ``--overwrite`` and ``info`` with 'maximum recursion depth exceeded
    while decoding a JSON array', exit 1 (a review, 2026-12-06; its zarr.json and run record
    were mended on the day). It reads as no lock of ours (g101: taken over once stale, and
    removed, till then): refused in one line saying what to do, the file kept."""
    from fstack_dask._runs.blocks import FuseJob

    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    real, calls = FuseJob.fuse_and_write, []

    def stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", stop)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False)
    monkeypatch.undo()
    lock = dst / STATE_DIR / "lock"
    lock.write_text("[" * 100000)
    os.utime(lock, (1, 1))
    env = {"FSTACK_DASK_LOCK_STALE_AFTER": str(STALE)}
    res = cli("fuse", src, dst, "--resume", *FUSE, env=env)
    assert res.returncode == 1, res.stderr
    assert "that fstack_dask did not write" in one_line_error(res), res.stderr
    assert lock.read_text() == "[" * 100000


@pytest.mark.parametrize("body", [b"my notes on this run\n", b"\xff\xfe\x00", b"[1, 2]"])
def test_a_users_file_named_lock_in_the_state_folder_is_never_taken_over(tmp_path, body):
    """A user's file at ``out.zarr/.fstack_dask/lock`` (no lock of ours): every run was
    refused "being written by another run (unreadable lock) ... wait for it to finish", a run
    that no one ran; once its age passed the stale age, a --resume or --overwrite took it over
    as a stale lock, and the user's file was gone. Each run is refused at once, one
    line saying what the file is and what to do, and nothing changes."""
    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    lock = dst / STATE_DIR / "lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_bytes(body)
    os.utime(lock, (1, 1))  # older than any stale age
    before = tree_digest(tmp_path)
    for extra in ((), ("--resume",), ("--overwrite", "--nhsize", "5")):
        res = cli("fuse", src, dst, *FUSE, *extra, env={"FSTACK_DASK_LOCK_STALE_AFTER": "1"})
        assert res.returncode == 1, res.stderr
        line = one_line_error(res)
        assert f"{str(lock)!r} that fstack_dask did not write" in line, line
        assert "move it out of the output's state folder" in line, line
        assert tree_digest(tmp_path) == before


def test_a_torn_lock_says_it_is_taken_over_once_stale(tmp_path):
    """An empty lock (a run of an older version killed while it wrote it): refused while
    young with "wait for it to finish", of a run that may not be; it says what a rerun does
    then; old, it is taken over."""
    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    lock = dst / STATE_DIR / "lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_bytes(b"")
    res = cli("fuse", src, dst, *FUSE, "--resume", env={"FSTACK_DASK_LOCK_STALE_AFTER": "600"})
    assert res.returncode == 1, res.stderr
    line = one_line_error(res)
    assert "empty or cut short" in line and "taken over then by a rerun" in line, line
    os.utime(lock, (1, 1))
    res = cli("fuse", src, dst, *FUSE, "--overwrite", "--nhsize", "5",
              env={"FSTACK_DASK_LOCK_STALE_AFTER": "1"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["nhsize"] == 5


def test_info_judges_a_lock_from_another_node_at_a_glance(tmp_path):
    """`fstack-dask info` of an unfinished output whose lock a job on another node left (dead,
    or its clock off) watched the lock for the whole stale age, 60 s, silently, and then
    called the output plainly resumable. It answers at once now, saying what the heartbeat's
    age is by this machine's clock."""
    src = write_src(tmp_path / "src.zarr")
    chunk = src / "0" / "c" / "0" / "2" / "2"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd" * 8)  # the blocks that read it fail; the others are written
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE, "--scheduler", "synchronous").returncode == 1
    chunk.write_bytes(good)
    lock = dst / STATE_DIR / "lock"
    body = {"host": "node-7", "machine": "node-7-boot", "pid": 4242, "token": "f" * 32}
    lease = {"FSTACK_DASK_LOCK_STALE_AFTER": "120"}  # what a watch would take at least
    for offset, said in (
        (-600, r"was last renewed (60\d) s ago"),
        (1800, r"was dated (1[78]\d\d) s ahead"),
    ):
        lock.write_text(json.dumps(body))
        os.utime(lock, (time.time() + offset,) * 2)
        start = time.monotonic()
        res = cli("info", dst, env=lease)
        assert res.returncode == 0, res.stderr
        (state,) = [line for line in res.stdout.splitlines() if line.startswith("state:")]
        assert re.search(f"its lock, from pid 4242 on node-7, {said} by this machine's", state)
        assert "takes the lock over once it sees no heartbeat for 120 s" in state
        assert time.monotonic() - start < 60, "info watched the lock"
    os.utime(lock)  # renewed just now: its run is live
    (state,) = [x for x in cli("info", dst).stdout.splitlines() if x.startswith("state:")]
    assert "being written now by pid 4242 on node-7" in state
    lock.write_text('{"host": "node-7", "pi')  # torn: whose it is cannot be read
    os.utime(lock, (time.time() - 600,) * 2)
    (state,) = [x for x in cli("info", dst).stdout.splitlines() if x.startswith("state:")]
    assert "its lock, from pid ? on ?, was last renewed" in state, state


def test_a_lease_that_never_runs_out_keeps_its_heartbeat_quiet(tmp_path):
    """FSTACK_DASK_LOCK_STALE_AFTER=inf (a lock from another host is never judged stale)
    printed the heartbeat thread's traceback (an OverflowError of its wait) in every run."""
    src = write_src(tmp_path / "src.zarr")
    res = cli("fuse", src, tmp_path / "out.zarr", *FUSE,
              env={"FSTACK_DASK_LOCK_STALE_AFTER": "inf"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "Exception in thread" not in res.stderr, res.stderr


def test_a_finished_run_drops_its_state_under_its_lock(tmp_path, monkeypatch):
    """A finished run released dst's lock, then removed its state folder (the run record, a
    done-marker per block: minutes on S3). An --overwrite started in between took dst's lock,
    which that removal deleted: the second run, its output computed, failed "this run's lock
    was taken over and is gone". The state goes first, under the lock, then the lock: the
    second run is refused as for any output being written, and never loses its lock."""
    from fstack_dask._outputs import lifecycle

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    lock = dst / STATE_DIR / "lock"
    real, seconds = lifecycle.remove_state, []

    def holder():
        with contextlib.suppress(OSError, ValueError):
            return json.loads(lock.read_text()).get("pid")
        return None

    def remove_state(location, *args, **kwargs):
        if f"/{STATE_DIR}" in location.path and not seconds:  # the finished run's state
            seconds.append(popen_cli("fuse", src, dst, *FUSE, "--overwrite", "--nhsize", "7"))
            deadline = time.monotonic() + 120
            while seconds[0].poll() is None and holder() in (None, os.getpid()):
                assert time.monotonic() < deadline  # it holds dst's lock, or was refused
                time.sleep(0.05)
        return real(location, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "remove_state", remove_state)
    fuse_zarr(src, dst, chunks=CHUNK, progress=False)
    monkeypatch.setattr(lifecycle, "remove_state", real)
    [second] = seconds
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1 and "is being written by pid" in err, err
    assert not (dst / STATE_DIR).exists()
