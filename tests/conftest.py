"""Shared fixtures: the reference oracle and small stacks."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import warnings

import numpy as np
import pytest


def pytest_configure(config):
    """Send every temporary folder of the run (the doctests' ``tempfile.mkdtemp()``, scripts run
    in subprocesses, dask's scratch space) into one folder that is removed at the end, so a run
    of the suite leaves nothing in the system's temporary folder. ``tmp_path`` is pytest's own
    and kept as pytest keeps it."""
    config._fstack_saved = tempfile.tempdir, os.environ.get("TMPDIR")
    # pytest's own tmp_path root stays where it was (it keeps the last runs for debugging).
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    config._fstack_tmp = tempfile.mkdtemp(prefix="fstack-dask-tests-")
    tempfile.tempdir = os.environ["TMPDIR"] = config._fstack_tmp
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a shell without job control (a script's '&'), or
        # under nohup: the ignored Ctrl-C is inherited by every CLI the suite starts, and the
        # tests that interrupt one saw it finish instead (exit 0: its Ctrl-C was ignored, as
        # it should be there). Python's handler here leaves the children the default.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if "PYTEST_XDIST_WORKER" not in os.environ:  # once, before the workers start
        _compile_the_package()


def _compile_the_package() -> None:
    """Byte-compile fstack_dask's modules into their ``__pycache__``, as an interpreter does on
    import unless ``PYTHONDONTWRITEBYTECODE`` is set (as on CI images and this project's
    machines): then none is ever cached, and each of the suite's thousands of subprocesses
    (the command line, LocalCluster workers, batch jobs) compiled the package's sources again,
    about 0.3 s of CPU each (measured: a small fuse and a refusal, 3.2 s of CPU without,
    2.65 s with). Python checks each cached file against its source's time and size."""
    import compileall

    spec = importlib.util.find_spec("fstack_dask")
    for folder in spec.submodule_search_locations or ():
        compileall.compile_dir(folder, quiet=2)


def pytest_unconfigure(config):
    folder = getattr(config, "_fstack_tmp", None)
    if folder is None:
        return
    tempfile.tempdir, saved = config._fstack_saved
    if saved is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _ctrl_c_handler_kept():
    """Fail a test that leaves the process's Ctrl-C handler changed: every later test in its
    worker process then met another one (dask-jobqueue's import sets ``sys.exit()``, and a
    test of the pool's shutdown through a Ctrl-C got SystemExit, now and then, by the order
    xdist ran the tests in). Import dask_jobqueue through ``fstack_dask``, which keeps it."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left the process's Ctrl-C handler changed to {after!r}")


def _load_reference():
    spec = importlib.util.find_spec("coppafish")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "extract" / "fstack.py"
    mod_spec = importlib.util.spec_from_file_location("_coppafish_fstack", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference():
    """coppafish 0.1.6 ``extract/fstack.py``, loaded by file path (its __init__ is heavy)."""
    module = _load_reference()
    if module is None:
        msg = "the oracle is missing: pip install --no-deps coppafish==0.1.6 opencv-python-headless"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return module


def reference_float(reference, stack, nhsize=9, focus=None, alpha=0.2, sth=13):
    """The reference's fused values before its final cast (NaN where it breaks down)."""
    focus = np.arange(stack.shape[2]) if focus is None else np.asarray(focus)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fm = reference.get_fmeasure(stack, nhsize)
        s, fmn = reference.get_smeasure(fm, nhsize, focus)
        w = reference.get_weights(s, fmn, alpha, sth)
        den = np.sum(w, 2)
        if stack.ndim == 4:
            channels = [np.sum(stack[..., c].astype(float) * w, 2) / den for c in range(3)]
            return np.stack(channels, -1)
        return np.sum(stack.astype(float) * w, 2) / den


@pytest.fixture(scope="module")
def local_cluster():
    """A real dask-distributed cluster with two worker processes."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster


def hangup_at_its_default() -> None:
    """A ``preexec_fn``: SIGHUP at its default in the child, as a terminal's processes have
    it. A test runner started under ``nohup`` passes SIGHUP ignored on, and the program (which
    keeps an ignored SIGHUP ignored) then rightly went on through the hang-up a test sent: 5
    tests failed."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def synthetic_store(path, yx, planes, *, chunk, seed):
    """A synthetic uint16 stack saved at ``path`` as OME-Zarr (z, y, x), in chunks of
    ``chunk`` px with every plane."""
    import numpy as np

    from fstack_dask import synthetic_stack, write_stack

    data = synthetic_stack(yx, planes, dtype="uint16", seed=seed).stack.transpose(2, 0, 1)
    write_stack(path, np.ascontiguousarray(data), axes="zyx", chunks=(planes, chunk, chunk))
    return path


def tree_digest(root) -> dict[str, str]:
    """sha256 of every file and the name of every folder below root (to prove nothing changed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirs:
            out[os.path.join(rel, d) + "/"] = "dir"
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _gpu_skip_reason() -> str | None:
    """Why the ``gpu`` tests cannot run here, or None where a CUDA GPU is usable."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: the gpu tests need a real GPU"
    from fstack_dask._algorithm.device import cuda_problem

    problem = cuda_problem()
    return None if problem is None else f"no CUDA GPU: device='cuda' {problem}"


def pytest_collection_modifyitems(config, items):
    """Skip the ``gpu`` tests, with the reason, where no GPU is usable."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_skip_reason()  # imports numba's CUDA target only when gpu tests are collected
    if reason is not None:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture()
def exfat(tmp_path):
    """A case-insensitive filesystem through FUSE (exFAT, exfat-fuse, as older Linux systems
    mount USB drives and SD cards), which gives each spelling of a name its own inode."""
    tools = [shutil.which(t) for t in ("mkfs.exfat", "mount.exfat-fuse", "losetup")]
    if os.geteuid() != 0 or None in tools or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root, /dev/fuse, losetup, mkfs.exfat and exfat-fuse")
    image, mount = tmp_path / "exfat.img", tmp_path / "mnt"
    with open(image, "wb") as fh:
        fh.truncate(64 << 20)
    mount.mkdir()
    run = lambda *a: subprocess.run(a, capture_output=True, text=True, check=False)  # noqa: E731
    if run(tools[0], str(image)).returncode != 0:
        pytest.skip("mkfs.exfat failed")
    loop = run(tools[2], "-f", "--show", str(image)).stdout.strip()
    if not loop or run(tools[1], loop, str(mount)).returncode != 0:
        if loop:
            run(tools[2], "-d", loop)
        pytest.skip("cannot mount exFAT through FUSE here")
    try:
        yield mount
    finally:
        run("umount", str(mount))
        run(tools[2], "-d", loop)
