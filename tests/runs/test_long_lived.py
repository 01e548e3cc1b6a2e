"""A Jupyter kernel or a service that calls the library many times, fails and is interrupted:
what each call leaves behind (a helper's run as that user, 2026-12-05)."""

from __future__ import annotations

import gc
import sys
import weakref

import numpy as np
import pytest
import zarr

from fstack_dask import SourceValueError, focus_stack, fuse_zarr, synthetic_stack, write_stack


def _stack(seed: int = 0, dtype: str = "uint16") -> np.ndarray:
    data = synthetic_stack((512, 512), 7, dtype=dtype, seed=seed).stack
    return np.ascontiguousarray(data.transpose(2, 0, 1))


def _runs_kept() -> int:

    module = sys.modules.get("fstack_dask._runs.blocks")
    return len(module._opened_by_token) if module is not None else 0


@pytest.mark.parametrize("kind", ["processes", "cluster"])
def test_a_run_forgets_its_source_in_the_calling_process(tmp_path, local_cluster, kind):
    """With worker processes or a cluster the calling process kept every run's opened source
    (an in-memory stack: all of it), output arrays and unit cache: a kernel grew by one stack
    per call."""
    from distributed import Client

    with Client(local_cluster) if kind == "cluster" else _nothing() as client:
        scheduler = client if kind == "cluster" else "processes"
        alive = []
        for k in range(2):
            stack = _stack(k)
            alive.append(weakref.ref(stack))
            fuse_zarr(stack, tmp_path / f"o{k}.zarr", axes="zyx", chunks=128, levels=0,
                      progress=False, scheduler=scheduler)  # fmt: skip
            del stack
        gc.collect()
        assert [ref() for ref in alive] == [None, None]
        assert _runs_kept() == 0


def test_a_failed_run_is_forgotten_on_the_cluster_s_workers(tmp_path, local_cluster):
    """A run that failed (or was interrupted) asked the workers to forget it without waiting,
    which distributed refuses for a plain function: each worker kept every failed run's
    source (a retried run grew them to 850 MiB)."""
    from distributed import Client

    stack = _stack(dtype="float32")
    stack[3, 250, 260] = np.nan  # one block fails, the run raises
    with Client(local_cluster) as client:
        before = client.run(_runs_kept)
        for k in range(2):
            with pytest.raises(SourceValueError):
                fuse_zarr(stack, tmp_path / f"o{k}.zarr", axes="zyx", chunks=128, levels=0,
                          progress=False, scheduler=client)  # fmt: skip
        client.run(lambda: None)  # the forgetting was sent before this: it has run
        assert client.run(_runs_kept) == before


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_zarr_arrays_and_hdf5_datasets_go_to_every_array_api(tmp_path):
    """``fuse``, ``focus_stack`` and ``write_stack`` on a ``zarr.Array`` (v2, v3) or an h5py
    dataset failed with "'int' object is not iterable": their chunks are a tuple of ints, not
    dask's tuple of tuples. The README promises any dask, NumPy or Zarr array."""
    from fstack_dask import fuse, write_stack

    stack = np.ascontiguousarray(_stack()[:, :96, :128].transpose(1, 2, 0))  # (y, x, z)
    expected = focus_stack(stack)
    arrays = {}
    for fmt in (2, 3):
        arrays[f"zarr v{fmt}"] = zarr.create_array(
            tmp_path / f"v{fmt}.zarr", shape=stack.shape, dtype=stack.dtype,
            chunks=(48, 64, 7), zarr_format=fmt,
        )  # fmt: skip
        arrays[f"zarr v{fmt}"][...] = stack
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("s", data=stack, chunks=(48, 64, 7))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        arrays["h5py"] = f["s"]
        for name, array in arrays.items():
            np.testing.assert_array_equal(focus_stack(array), expected, err_msg=name)
            lazy = fuse(array, axes="yxz", chunks=48)
            np.testing.assert_array_equal(lazy.compute(), expected, err_msg=name)
            path = tmp_path / f"w-{name}.ome.zarr"
            write_stack(path, array, axes="yxz")
            np.testing.assert_array_equal(zarr.open_group(path)["0"][...], stack, err_msg=name)


@pytest.mark.parametrize("stderr", ["none", "closed"])
@pytest.mark.parametrize("progress", [True, False])
def test_a_process_without_a_usable_stderr_still_runs(tmp_path, monkeypatch, stderr, progress):
    """pythonw and some service wrappers have no sys.stderr, and a closed one happens: every
    run failed ("'NoneType' object has no attribute 'isatty'", "I/O operation on closed
    file"), with progress=False too, though a display must never fail a run."""
    import io

    if stderr == "none":
        monkeypatch.setattr(sys, "stderr", None)
    else:
        closed = io.StringIO()
        closed.close()
        monkeypatch.setattr(sys, "stderr", closed)
    monkeypatch.setattr("fstack_dask._runs.progress.SHOW_AFTER", 0.0)
    stack = _stack()[:, :96, :128]
    out = fuse_zarr(stack, tmp_path / "o.zarr", axes="zyx", chunks=48, progress=progress,
                    scheduler="threads")  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))


def test_an_interrupt_while_the_lock_is_taken_does_not_lock_out_the_process(tmp_path, monkeypatch):
    """A Ctrl-C landing in the lock's acquisition after the lock file was made (while its
    heartbeat thread started) left it held by the kernel itself: every later run into dst,
    with resume or overwrite, was refused as "being written by" its own pid until a restart."""
    import threading
    import types

    from fstack_dask._outputs import lock as _lock

    class InterruptedStart(threading.Thread):
        def start(self):
            if self.name == "fstack-dask-lock":
                raise KeyboardInterrupt
            super().start()

    stack = _stack()[:, :96, :128]
    dst = tmp_path / "o.zarr"
    fake = types.SimpleNamespace(Thread=InterruptedStart, Event=threading.Event)
    with monkeypatch.context() as patch:
        patch.setattr(_lock, "threading", fake)
        with pytest.raises(KeyboardInterrupt):
            fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False)
    out = fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False, overwrite=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))


def test_a_ctrl_c_as_the_lock_is_published_does_not_lock_out_the_process(tmp_path, monkeypatch):
    """A real Ctrl-C (SIGINT to this process) landing as the lock, published, dropped the name
    it was written under, before the run noted its descriptor: the flock stayed held by the
    kernel, and every later run into dst was refused as "being written by" its own pid until a
    restart."""
    import os
    import signal

    stack = _stack()[:, :96, :128]
    dst = tmp_path / "o.zarr"
    real, fired = os.unlink, []

    def unlink(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if ".fstack_dask" in str(path) and str(path).endswith(".tmp") and not fired:
            fired.append(path)
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(os, "unlink", unlink)
        with pytest.raises(KeyboardInterrupt):
            fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False)
    assert fired
    out = fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False, overwrite=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))


def test_a_run_called_while_its_host_handles_a_ctrl_c_takes_no_failure_for_it(
    tmp_path, monkeypatch
):
    """A script that goes on after a Ctrl-C, calling the library in its ``except
    KeyboardInterrupt:`` (a retry, a resume): a failure of that run is chained by Python to the
    old Ctrl-C, which was taken for a new one. A complete run whose lock could not be removed
    (EIO) raised the host's KeyboardInterrupt where it warns and returns the output."""
    import errno

    from fstack_dask._outputs.lock import DestinationLock

    def eio(self):
        raise OSError(errno.EIO, "Input/output error", self.lock.path)

    monkeypatch.setattr(DestinationLock, "_remove", eio)
    stack = _stack()[:, :96, :128]
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        try:
            out = fuse_zarr(stack, tmp_path / "o.zarr", axes="zyx", chunks=48, progress=False)
        except KeyboardInterrupt as exc:  # (not up to pytest: it would end the session)
            pytest.fail(f"the host's old Ctrl-C was raised again: {exc}")
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))


@pytest.mark.parametrize(("step", "wrapped"),
                         [("mine", False), ("mine", True), ("stop_heartbeat", False)])  # fmt: skip
def test_a_second_ctrl_c_inside_a_lock_s_release_releases_every_lock(
    tmp_path, monkeypatch, step, wrapped
):
    """An overwrite holds two locks (dst's, its staging folder's). A second Ctrl-C (or one a
        library wrapped) landing while an interrupted run released the first left the other held
        by the kernel: every later run into dst was refused as "being written by" its own pid
    . Every lock goes; the interruption is raised as one."""
    import sys as _sys

    from fstack_dask._outputs import lifecycle
    from fstack_dask._outputs.lock import DestinationLock

    stack = _stack()[:, :96, :128]
    dst = tmp_path / "o.zarr"
    fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False)
    real, fired = getattr(DestinationLock, step), []

    def interrupted(self):
        if not fired and _sys._getframe(1).f_code.co_name in ("release", "_remove"):
            fired.append(self.lock.path)
            if not wrapped:
                raise KeyboardInterrupt
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                raise RuntimeError("Error calling __set_name__") from exc
        return real(self)

    def first_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(DestinationLock, step, interrupted)
        patch.setattr(lifecycle, "finish", first_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False, overwrite=True)
    assert len(fired) == 1, fired
    out = fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False, resume=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_a_ctrl_c_inside_the_compiled_kernel_is_an_interrupt(tmp_path, monkeypatch):
    """Interrupted inside numba's dispatcher, Python raises SystemError ("... returned a result
    with an exception set") caused by the KeyboardInterrupt: 4 of 12 interrupts of a
    synchronous run in a kernel were reported as a failed run. It is an interrupt: raised as
    one, the finished blocks kept for resume."""
    from fstack_dask._runs.blocks import FuseJob

    real, calls = FuseJob.fuse_and_write, [0]

    def run_block(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                raise SystemError("CPUDispatcher(<function _focus_int>) returned a result with "
                                  "an exception set") from exc  # fmt: skip
        return real(self, *args, **kwargs)

    stack = _stack()[:, :96, :128]
    dst = tmp_path / "o.zarr"
    monkeypatch.setattr(FuseJob, "fuse_and_write", run_block)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False, scheduler="synchronous")
    monkeypatch.setattr(FuseJob, "fuse_and_write", real)
    out = fuse_zarr(stack, dst, axes="zyx", chunks=48, progress=False, resume=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))


def _global_state() -> dict:
    import copy
    import logging
    import os
    import signal
    import warnings

    import dask

    named = {"": logging.getLogger(), "fstack_dask": logging.getLogger("fstack_dask")}
    loggers = {name: (lg.level, list(lg.handlers)) for name, lg in named.items()}
    umask = os.umask(0)
    os.umask(umask)
    return {
        "dask": copy.deepcopy(dask.config.config), "loggers": loggers,
        "warnings": list(warnings.filters), "numpy": np.geterr(),
        "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)],
        "environ": dict(os.environ), "cwd": os.getcwd(), "umask": umask,
    }  # fmt: skip


@pytest.mark.parametrize("ends", ["finished", "failed", "interrupted"])
def test_a_run_leaves_the_process_s_global_state_as_it_found_it(tmp_path, monkeypatch, ends):
    from fstack_dask._runs.blocks import FuseJob

    stack = _stack(dtype="float32")[:, :96, :128]
    if ends == "failed":
        stack[2, 10, 10] = np.nan
    if ends == "interrupted":
        real = FuseJob.fuse_and_write

        def run_block(self, *args, **kwargs):
            if len(list((tmp_path / "o.zarr" / ".fstack_dask" / "done").iterdir())) >= 2:
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(FuseJob, "fuse_and_write", run_block)
    before = _global_state()
    for scheduler in ("threads", "processes"):
        try:
            fuse_zarr(stack, tmp_path / "o.zarr", axes="zyx", chunks=48, progress=True,
                      scheduler=scheduler, overwrite=True)  # fmt: skip
        except (SourceValueError, KeyboardInterrupt):
            assert ends != "finished"
        assert _global_state() == before, scheduler


def test_cleanup_waits_hold_one_ctrl_c_and_respect_the_caller_s_handler():
    """The waits that end a run's tasks hold back one Ctrl-C; a second stops them at once (a
    task hung on a dead mount must not make a run unstoppable), and a caller's own SIGINT
    handler, or SIG_IGN, is left to do what it does (a review of this change, 2026-12-05)."""
    import os
    import signal
    import time

    from fstack_dask._errors import finish_despite_interrupts

    def step(presses: int, reached: list) -> str:
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # delivered here
        reached.append(True)
        return "done"

    reached: list = []
    with pytest.raises(KeyboardInterrupt):  # one press: waited for, then raised
        finish_despite_interrupts(step, 1, reached)
    assert reached == [True]
    reached.clear()
    with pytest.raises(KeyboardInterrupt):  # two: the wait stops at once
        finish_despite_interrupts(step, 2, reached)
    assert reached == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    calls: list = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        assert finish_despite_interrupts(step, 2, reached) == "done"  # theirs, not ours
        assert len(calls) == 2
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert finish_despite_interrupts(step, 1, reached) == "done"
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_store_of_the_same_name_elsewhere_on_an_object_store_is_another_source():
    """Relocation (the same store reached at another path) is judged by the chunk files'
    change times and inodes, which only local files have: two S3 stores of one name written
    in the same second were resumed into one output (a review, 2026-12-05)."""
    from fstack_dask._outputs.fingerprint import identity_differences

    def identity(location):
        return {"location": location, "kind": "ome-zarr", "metadata_sha256": location,
                "metadata_content_sha256": "same metadata"}  # fmt: skip

    assert identity_differences(identity("/lustre/p/src.zarr"), identity("/data/p/src.zarr")) == []
    for a, b in [("s3://bkt/a/src.zarr", "s3://bkt/b/src.zarr"),
                 ("/lustre/p/src.zarr", "s3://bkt/p/src.zarr"),
                 ("/lustre/p/src.zarr", "/lustre/p/other.zarr")]:  # fmt: skip
        assert "its location was" in " ".join(identity_differences(identity(a), identity(b)))


def test_a_cluster_s_workers_close_a_file_source_at_the_run_s_end(tmp_path, local_cluster):
    """A worker that opened a TIFF source kept the file open after the run, until its garbage
    collector happened to run (a kept worker process said 'unclosed file' per run under
    -W error::ResourceWarning; on NFS, deleting the input left .nfs files)."""
    import os

    from distributed import Client

    tifffile = pytest.importorskip("tifffile")
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts open files in /proc")
    src = os.path.realpath(tmp_path / "s.tif")
    tifffile.imwrite(src, _stack()[:, :128, :128], metadata={"axes": "ZYX"})
    with Client(local_cluster) as client:
        fuse_zarr(src, tmp_path / "o.zarr", chunks=64, levels=0, progress=False,
                  scheduler=client)  # fmt: skip
        left = client.run(_descriptors_to, src)
    assert sum(left.values()) == 0, left


def _descriptors_to(path: str) -> int:
    import os

    fds = os.listdir("/proc/self/fd")
    return sum(os.path.realpath(f"/proc/self/fd/{fd}") == path for fd in fds)


_CTRL_C_IN_NUMBA_S_IMPORT = r"""
import os, signal, sys, tempfile
import numpy as np
class Press:  # Ctrl-C half-way through numba's import, as a Jupyter user's first cell gets it
    def find_spec(self, name, path=None, target=None):
        if name == "numba.core.decorators":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, Press())
def fuse():  # numba is imported by the package or, since the modules were split, by a first run
    from fstack_dask import fuse_zarr, synthetic_stack
    stack = synthetic_stack((64, 64), 5, dtype="uint16").stack.transpose(2, 0, 1).copy()
    fuse_zarr(stack, tempfile.mkdtemp() + "/o.zarr", axes="zyx", progress=False,
              scheduler="synchronous")
try:
    fuse()
except KeyboardInterrupt:
    print("interrupted")
fuse()
print("fused")
"""


def test_a_ctrl_c_during_the_first_import_leaves_the_kernel_usable():
    """Interrupted half-way, numba's import (seconds on a cold cache) left it unusable: every
    later fuse_zarr in the kernel failed with "module 'numba' has no attribute 'core'"."""
    import subprocess

    res = subprocess.run([sys.executable, "-c", _CTRL_C_IN_NUMBA_S_IMPORT], capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["interrupted", "fused"]


_INTERRUPTED_ON_A_LOCAL_CLUSTER = r"""
import os, signal, sys, threading, time
import numpy as np
from distributed import Client, LocalCluster
from fstack_dask import focus_stack, fuse_zarr, synthetic_stack
dst = sys.argv[1]
stack = synthetic_stack((384, 384), 7, dtype="uint16", seed=3).stack.transpose(2, 0, 1).copy()
done = dst + "/.fstack_dask/done"
def interrupt():  # as a kernel's interrupt: SIGINT to the whole process group, mid-run
    while not os.path.isdir(done) or not os.listdir(done):
        time.sleep(0.01)
    os.killpg(os.getpgrp(), signal.SIGINT)
cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
client = Client(cluster)
pids = sorted(client.run(os.getpid).values())
threading.Thread(target=interrupt, daemon=True).start()
try:
    fuse_zarr(stack, dst, axes="zyx", chunks=32, levels=0, progress=False, scheduler=client)
except KeyboardInterrupt:
    print("interrupted")
time.sleep(1)  # a dying worker would be gone by now
assert sorted(client.run(os.getpid, wait=True).values()) == pids, "the workers died"
out = fuse_zarr(stack, dst, axes="zyx", chunks=32, levels=0, progress=False, scheduler=client,
                resume=True)
np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))
handlers = client.run(lambda: signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
assert not any(handlers.values()), "the workers' SIGINT was left ignored"
print("resumed")
client.close(); cluster.close()
"""


def test_an_interrupted_kernel_keeps_its_local_cluster_s_workers(tmp_path):
    """A kernel's interrupt is a SIGINT to its process group, where a LocalCluster made in a
    notebook has its worker processes: they died of it (their nannies did not restart them),
    and the next fuse_zarr, resume=True, waited 600 s for workers that never came."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_ON_A_LOCAL_CLUSTER, str(tmp_path / "o.zarr")],
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["interrupted", "resumed"], res.stdout


_A_WORKER_RESTARTED_THEN_INTERRUPTED = r"""
import os, signal, sys, threading, time
import numpy as np
from distributed import Client, LocalCluster
from fstack_dask import focus_stack, fuse_zarr, synthetic_stack, write_stack
dst, src = sys.argv[1] + "/o.zarr", sys.argv[1] + "/src.zarr"
stack = synthetic_stack((256, 256), 7, dtype="uint16", seed=3).stack
write_stack(src, stack, axes="yxz")
done = dst + "/.fstack_dask/done"
state = {}
def restart_then_interrupt():  # a worker killed and restarted mid-run, then a kernel's interrupt
    while not os.path.isdir(done) or not os.listdir(done):
        time.sleep(0.01)
    os.kill(state["pid"], signal.SIGKILL)
    while True:
        with __import__("contextlib").suppress(Exception):
            pids = list(client.run(os.getpid).values())
            if pids and pids[0] != state["pid"]:
                break
        time.sleep(0.05)
    state["new"] = pids[0]
    state["blocks"] = len(os.listdir(done))
    os.killpg(os.getpgrp(), signal.SIGINT)
cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
client = Client(cluster)
state["pid"] = next(iter(client.run(os.getpid).values()))
threading.Thread(target=restart_then_interrupt, daemon=True).start()
t = time.monotonic()
try:
    fuse_zarr(src, dst, chunks=32, levels=0, progress=False, scheduler=client)
    print("finished", time.monotonic() - t)
except KeyboardInterrupt:
    print("interrupted", state.get("blocks"))
time.sleep(1)  # a dying worker would be gone by now
assert list(client.run(os.getpid).values()) == [state["new"]], "the restarted worker died"
out = fuse_zarr(src, dst, chunks=32, levels=0, progress=False, scheduler=client, resume=True)
np.testing.assert_array_equal(out["0"][...], focus_stack(stack))
print("resumed")
client.close(); cluster.close()
"""


def test_a_worker_restarted_during_a_run_is_kept_through_the_kernel_s_interrupt(tmp_path):
    """A worker its nanny restarts mid-run (killed: the OOM killer) was not shielded, only
    those present at the start were: a kernel's interrupt then killed it for good."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", _A_WORKER_RESTARTED_THEN_INTERRUPTED, str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[::2] == ["interrupted", "resumed"], res.stdout


_INTERRUPTED_AS_THE_SHIELD_IS_SET_OR_RESTORED = r"""
import os, signal, sys, time
from distributed import Client, LocalCluster
from fstack_dask import fuse_zarr, synthetic_stack, write_stack
src = sys.argv[1] + "/s.zarr"
write_stack(src, synthetic_stack((64, 64), 5, dtype="uint16").stack, axes="yxz")
# a kernel's interrupt landing while the run sets or puts back its workers' SIGINT handler:
# at the moment the shield's call to the cluster is in flight (Client.sync runs every such call)
SHIELD = {"_ignore_interrupts": "set", "_restore_interrupts": "restore",
          "_register_worker_plugin": "set", "_unregister_worker_plugin": "restore"}
armed = []
real_sync = Client.sync
def sync(self, func, *args, **kwargs):
    name = getattr(args[0] if args and callable(args[0]) else func, "__name__", "")
    step = SHIELD.get(name) or SHIELD.get(getattr(func, "__name__", ""))
    if step is None or step not in armed:
        return real_sync(self, func, *args, **kwargs)
    armed.remove(step)
    if step == "restore":  # before the handler is put back
        os.kill(os.getpid(), signal.SIGINT); time.sleep(0.5)
    result = real_sync(self, func, *args, **kwargs)
    if step == "set":  # once it is set
        os.kill(os.getpid(), signal.SIGINT); time.sleep(0.5)
    return result
Client.sync = sync
cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
client = Client(cluster)
for i, step in enumerate(("set", "restore")):
    armed.append(step)
    try:
        fuse_zarr(src, f"{sys.argv[1]}/o{i}.zarr", chunks=32, levels=0, progress=False,
                  scheduler=client)
        print(step, "not-interrupted")
    except KeyboardInterrupt:
        print(step, "interrupted")
    ignored = client.run(lambda: signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    print(step, "ignored" if any(ignored.values()) else "restored")
client.close(); cluster.close()
"""


def test_an_interrupt_as_the_workers_are_shielded_or_restored_leaves_them_restored(tmp_path):
    """An interrupt that landed while the run set its workers' SIGINT handler, or put it
    back, left them ignoring SIGINT for good: the kernel's next interrupt outside a run
    could no longer stop them. Nor does it say the warning of the waits for running
    tasks beside the run's "interrupted"."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_AS_THE_SHIELD_IS_SET_OR_RESTORED, str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [
        "set", "interrupted", "set", "restored", "restore", "interrupted", "restore", "restored"
    ], res.stdout  # fmt: skip
    # nor said the warning of a wait for running tasks that the shield's few ms are not
    assert "waiting for the running tasks" not in res.stderr, res.stderr[-3000:]


_A_LOCAL_CLUSTER_ENDED_BY_AN_INTERRUPT = r"""
import os, signal, sys, time
from distributed import Client, LocalCluster
from fstack_dask import fuse_zarr, synthetic_stack, write_stack
src, dst = sys.argv[1] + "/s.zarr", sys.argv[1] + "/o.zarr"
write_stack(src, synthetic_stack((64, 64), 5, dtype="uint16").stack.transpose(2, 0, 1), axes="zyx")
cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
client = Client(cluster)
previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # this process's: not the run's
os.killpg(os.getpgrp(), signal.SIGINT)  # the kernel interrupted in a cell of the user's own
while client.scheduler_info()["workers"]:
    time.sleep(0.1)
signal.signal(signal.SIGINT, previous)
axes = None
if sys.argv[2] == "array":  # scattered, not read from a store: the scatter waits for a worker
    src, axes = synthetic_stack((64, 64), 5, dtype="uint16").stack.transpose(2, 0, 1), "zyx"
start = time.monotonic()
try:
    fuse_zarr(src, dst, progress=False, scheduler=client, stall_timeout=60, axes=axes)
except Exception as exc:
    print(f"{time.monotonic() - start:.0f} {type(exc).__name__}: {exc}")
"""


@pytest.mark.parametrize("source", ["store", "array"])
def test_a_local_cluster_whose_workers_an_interrupt_ended_is_said_at_once(tmp_path, source):
    """A kernel's interrupt ends a LocalCluster's worker processes (dask/distributed#1925) and
    their nannies do not restart them: the next fuse_zarr on it waited out the stall timeout
    (600 s), then said to start workers with 'dask worker ADDRESS'. So did a NumPy
    array's, whose scatter waits for a worker."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", _A_LOCAL_CLUSTER_ENDED_BY_AN_INTERRUPT, str(tmp_path), source],
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    seconds, _, said = res.stdout.strip().partition(" ")
    assert said.startswith("StalledError: no block finished for 1"), res.stdout + res.stderr[-2000:]
    assert "worker processes have all ended" in said and "make a new cluster" in said, said
    assert int(seconds) < 30, said


_CLI_INTERRUPTED_IN_THE_SWAP = r"""
import sys
from fstack_dask._cli.main import main
from fstack_dask._outputs import leftovers
def give_back(*args, **kwargs):
    raise KeyboardInterrupt  # Ctrl-C as the swap puts the user's files back
leftovers.give_back = give_back
sys.exit(main(["fuse", *sys.argv[1:], "--overwrite", "--no-progress", "--chunks", "48"]))
"""


def test_an_interrupt_in_an_overwrite_s_swap_names_resume_as_each_caller_spells_it(tmp_path):
    """Interrupted once the swap had put the new output in place, fuse_zarr said "rerun the
    same command with --resume to remove it" to a Python caller (found by g65 in a kernel):
    resume=True from Python, --resume on the command line; the resume removes it."""
    import os
    import subprocess

    from fstack_dask._outputs import leftovers

    stack = _stack()[:, :96, :128]
    src, dst = tmp_path / "s.zarr", tmp_path / "o.zarr"
    write_stack(src, stack, axes="zyx")
    fuse_zarr(src, dst, chunks=48, progress=False, nhsize=5)
    real = leftovers.give_back
    try:
        leftovers.give_back = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt) as info:
            fuse_zarr(src, dst, chunks=48, progress=False, overwrite=True)
    finally:
        leftovers.give_back = real
    said = str(info.value)
    assert "rerun the same command with resume=True to remove it" in said, said
    fuse_zarr(src, dst, chunks=48, progress=False, resume=True)
    assert sorted(os.listdir(tmp_path)) == ["o.zarr", "s.zarr"]

    res = subprocess.run([sys.executable, "-c", _CLI_INTERRUPTED_IN_THE_SWAP, str(src), str(dst)],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert "rerun the same command with --resume to remove it" in res.stderr, res.stderr
    out = fuse_zarr(src, dst, chunks=48, progress=False, resume=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))
    assert sorted(os.listdir(tmp_path)) == ["o.zarr", "s.zarr"]


_CLI_WRAPPED_INTERRUPT_ONCE_COMPLETE = r"""
import sys
from fstack_dask._cli.main import main
from fstack_dask._outputs import leftovers, lifecycle
def wrapped(*args, **kwargs):  # a Ctrl-C that a library wrapped (numcodecs' __set_name__)
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        raise RuntimeError("Error calling __set_name__") from exc
if sys.argv[1] == "swap":
    leftovers.give_back = wrapped  # as the swap puts the user's files back
else:
    lifecycle.remove_state = wrapped  # as the state folder is tidied
sys.exit(main(["fuse", *sys.argv[2:], "--no-progress", "--chunks", "48"]))
"""


@pytest.mark.parametrize("where", ["swap", "finish"])
def test_a_wrapped_interrupt_once_the_output_is_complete_is_not_lost(tmp_path, where):
    """A Ctrl-C reaching the run wrapped (a RuntimeError caused by it) once the output was
    complete, as the swap tidied the previous output or the state folder went, was taken
    for a failure to tidy: a warning, exit 0, the script's Ctrl-C ignored. It is an
    interruption (exit 130) that says dst is complete; the next run tidies what is left."""
    import os
    import subprocess

    stack = _stack()[:, :96, :128]
    src, dst = tmp_path / "s.zarr", tmp_path / "o.zarr"
    write_stack(src, stack, axes="zyx")
    args = [str(src), str(dst)]
    if where == "swap":
        fuse_zarr(src, dst, chunks=48, progress=False)
        args.append("--overwrite")
    code = _CLI_WRAPPED_INTERRUPT_ONCE_COMPLETE
    res = subprocess.run([sys.executable, "-c", code, where, *args], capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 130, res.stderr
    said = res.stderr.strip().splitlines()[-1]
    assert said.startswith("fstack-dask: error: interrupted; "), res.stderr
    assert "complete" in said and "continue" not in said and "warning" not in res.stderr, said
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is True
    out = fuse_zarr(src, dst, chunks=48, progress=False, resume=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack.transpose(1, 2, 0)))
    assert sorted(os.listdir(tmp_path)) == ["o.zarr", "s.zarr"]
    assert ".fstack_dask" not in os.listdir(dst)  # (tidied by the resume)


def test_a_warning_names_the_caller_s_line_not_the_library_s(tmp_path):
    """A notebook showed fuse_zarr's warnings under a line of the library's own,
    ``.../_runs/fusion.py:160: FstackDaskWarning: ... _warn_over_budget(fusion)``: the
    line is the caller's, the cell's."""
    import warnings

    from fstack_dask._errors import FstackDaskWarning

    stack = _stack()[:, :96, :128]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fuse_zarr(stack, tmp_path / "o.zarr", axes="zyx", chunks=96, memory_per_task="1MiB",
                  progress=False, levels=0)  # fmt: skip
    ours = [w for w in caught if issubclass(w.category, FstackDaskWarning)]
    assert ours and all(w.filename == __file__ for w in ours), [w.filename for w in ours]


_A_LOCAL_CLUSTER_WHOSE_WORKER_WAS_RETIRED = r"""
import sys, time
from distributed import Client, LocalCluster
from fstack_dask import fuse_zarr, synthetic_stack, write_stack
src, dst = sys.argv[1] + "/s.zarr", sys.argv[1] + "/o.zarr"
write_stack(src, synthetic_stack((64, 64), 5, dtype="uint16").stack.transpose(2, 0, 1), axes="zyx")
import dask
dask.config.set({"distributed.deploy.lost-worker-timeout": sys.argv[2]})
cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
client = Client(cluster)
(worker,) = client.scheduler_info(n_workers=-1)["workers"]
assert client.retire_workers([worker])  # the user's, idle: not scaled to 0
time.sleep(float(sys.argv[3]))  # (the cluster closes the retired worker after the first)
start = time.monotonic()
try:
    fuse_zarr(src, dst, progress=False, scheduler=client, stall_timeout=60)
except Exception as exc:
    print(f"{time.monotonic() - start:.0f} {type(exc).__name__}: {exc}")
"""


@pytest.mark.parametrize(("lost_after", "then"), [("15s", "0"), ("1s", "3")], ids=["now", "later"])
def test_a_local_cluster_whose_worker_the_user_retired_is_not_said_interrupted(
    tmp_path, lost_after, then
):
    """The only worker of a LocalCluster retired by the user (``client.retire_workers``, not
    a scale to 0): the run's line said "its worker processes have all ended (a LocalCluster's
    end at an interrupt ...)", blaming an interrupt nobody sent. The scheduler's events
    say it was removed on purpose: the line says the cluster has none to start. Also for a
    run that starts after the cluster closed the retired worker (distributed's
    lost-worker-timeout, 15 s; here 1 s), which said it "closed the worker(s) it lost ...
    (each killed again as it came back: a block needing more memory than a worker has?)"
    (the g98 review of ae7007c; a loaded machine's run of the test's first case alike)."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", _A_LOCAL_CLUSTER_WHOSE_WORKER_WAS_RETIRED, str(tmp_path),
         lost_after, then],  # fmt: skip
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    seconds, _, said = res.stdout.strip().partition(" ")
    assert said.startswith("StalledError: no block finished for"), res.stdout + res.stderr[-2000:]
    assert "interrupt" not in said, said
    assert "has none to start (scaled to 0, or its workers retired)" in said, said
    assert int(seconds) < 30, said


_A_RUN_WHOSE_WORKER_IS_RETIRED_AGAIN_AND_AGAIN = r"""
import os, sys, threading, time
from distributed import Client, LocalCluster
from fstack_dask import fuse_zarr, synthetic_stack, write_stack
def main():
    src, dst = sys.argv[1] + "/s.zarr", sys.argv[1] + "/o.zarr"
    write_stack(src, synthetic_stack((256, 256), 5, dtype="uint16").stack.transpose(2, 0, 1),
                axes="zyx", chunks=(5, 32, 32))
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    cluster.adapt(minimum=1, maximum=1)
    client = Client(cluster)
    stop = threading.Event()
    def retire():  # once 2 blocks are done, again and again (the worker holds data no
        done = dst + "/.fstack_dask/done"  # other can take: each retire fails, after a while)
        while not (os.path.isdir(done) and len(os.listdir(done)) >= 2):
            time.sleep(0.05)
        while not stop.is_set():
            client.retire_workers(list(client.scheduler_info(n_workers=-1)["workers"]))
    threading.Thread(target=retire, daemon=True).start()
    try:
        fuse_zarr(src, dst, chunks=32, progress=False, scheduler=client, stall_timeout=15)
        print("finished")
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
    stop.set()
if __name__ == "__main__":
    main()
"""


def test_a_worker_retired_again_and_again_is_not_said_frozen(tmp_path):
    """``client.retire_workers`` called again and again on the only worker of an adaptive
    LocalCluster mid-run: the worker, holding data no other could take, stayed closing
    gracefully (retiring, taking no task) and the run stalled, then said "the workers are
    frozen, overloaded or unreachable; lower memory_per_task", false. The
    line says they were being retired."""
    import subprocess

    script = tmp_path / "retire.py"
    script.write_text(_A_RUN_WHOSE_WORKER_IS_RETIRED_AGAIN_AND_AGAIN)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    said = res.stdout.strip()
    told = "StalledError: no block finished for 15 s: 1 of 1 worker(s) were being retired "
    assert said.startswith(told), said + res.stderr[-2000:]
    assert "frozen" not in said and "memory_per_task" not in said, said


_AN_ADAPTIVE_CLUSTER_WHOSE_WORKERS_DIE_AT_START = r"""
import os, sys, time
from distributed import Client, LocalCluster
from fstack_dask import fuse_zarr, synthetic_stack, write_stack
def main():
    src, dst = sys.argv[1] + "/s.zarr", sys.argv[1] + "/o.zarr"
    write_stack(src, synthetic_stack((64, 64), 5, dtype="uint16").stack.transpose(2, 0, 1),
                axes="zyx")
    cluster = LocalCluster(n_workers=0, threads_per_worker=1, dashboard_address=None,
                           preload=[sys.argv[2]])
    cluster.adapt(minimum=1, maximum=1)
    client = Client(cluster)
    start = time.monotonic()
    try:
        fuse_zarr(src, dst, progress=False, scheduler=client, stall_timeout=120)
    except Exception as exc:
        print(f"{time.monotonic() - start:.0f} {type(exc).__name__}: {exc}")
if __name__ == "__main__":
    main()
"""


def test_an_adaptive_cluster_whose_workers_die_at_start_is_said_so(tmp_path):
    """Every worker of an adaptive LocalCluster dies as it starts (here a preload exits; a
    package the workers cannot import alike): the run stopped in 10 s, one line, but said
    "its worker processes have all ended (a LocalCluster's end at an interrupt ...)",
    blaming an interrupt nobody sent. It says they failed to start."""
    import subprocess

    script, preload = tmp_path / "dies.py", tmp_path / "exits.py"
    script.write_text(_AN_ADAPTIVE_CLUSTER_WHOSE_WORKERS_DIE_AT_START)
    preload.write_text("import os\n\n\ndef dask_setup(worker):\n    os._exit(3)\n")
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(preload)],
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    seconds, _, said = res.stdout.strip().partition(" ")
    assert said.startswith("StalledError: no block finished for 1"), res.stdout + res.stderr[-2000:]
    assert "its workers failed to start" in said and "interrupt" not in said, said
    assert int(seconds) < 60, said


_DIES_ON_A_TASK = """
import os

from distributed import WorkerPlugin


class DiesOnAFuse(WorkerPlugin):
    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith("fstack-dask-fuse"):
            os._exit(3)


async def dask_setup(worker):
    await worker.plugin_add(DiesOnAFuse())
"""


def test_workers_that_die_running_a_task_are_said_in_one_line_with_what_is_left(tmp_path):
    """Every worker of an adaptive LocalCluster dies as it starts a block's task (here a
        plugin exits; out of memory alike): dask fails the task after 4 deaths, KilledWorker,
        whose line named the task's key and, its signature not ours, left out what the run left
    . One line of ours, with "nothing was written"."""
    import subprocess

    script, preload = tmp_path / "dies.py", tmp_path / "dies_on_a_task.py"
    script.write_text(_AN_ADAPTIVE_CLUSTER_WHOSE_WORKERS_DIE_AT_START)
    preload.write_text(_DIES_ON_A_TASK)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(preload)],
        capture_output=True, text=True, timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    _, _, said = res.stdout.strip().partition(" ")
    told = "WorkersDiedError: 4 workers died one after another while they ran the same task "
    assert said.startswith(told), res.stdout + res.stderr[-2000:]
    assert said.endswith("; nothing was written"), said
