"""Where the compiled kernels are cached, on machines where the usual places are not writable.

An HPC run found that a read-only install (an Apptainer image) with a read-only home made every
run fail at import ("cannot cache function ...: no locator available"), and that with HOME
unset (a container run as a uid without a passwd entry) the cache went into a folder named
``~`` in the user's data folder (2026-12-05)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fstack_dask._algorithm import jit

WHERE = textwrap.dedent(
    """
    import sys, tempfile, warnings
    warnings.simplefilter("always")
    if len(sys.argv) > 1:  # a temporary folder Python would not choose itself: not writable
        tempfile.tempdir = sys.argv[1]
    import fstack_dask._algorithm.compiled as compiled
    cache = compiled._copy_tiles._cache  # numba's FunctionCache (NullCache: none)
    print(getattr(cache, "_cache_path", "no cache"))
    """
)


def _where(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    """Import the compiled engine in a new process whose user folders are not writable
    (paths below a plain file cannot be created, even by root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    base.update(HOME=str(blocker / "home"), XDG_CACHE_HOME=str(blocker / "cache"))
    base.update(env)
    return subprocess.run([sys.executable, "-c", WHERE, *args], env=base, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_no_writable_home_caches_in_a_private_temporary_folder(tmp_path):
    temp = tmp_path / "t"
    temp.mkdir()
    run = _where(tmp_path, TMPDIR=str(temp))
    assert run.returncode == 0, run.stderr
    private = temp / f"fstack_dask-numba-{os.getuid()}"
    assert run.stdout.strip().startswith(str(private)), run.stdout  # not the package's folder
    assert oct(private.stat().st_mode & 0o777) == oct(0o700)


@pytest.mark.parametrize("planted", ["group-writable", "a link"])
def test_a_temporary_folder_another_could_write_is_not_used(tmp_path, planted):
    """numba's cache files are pickles: a folder planted by someone else would run their code."""
    temp = tmp_path / "t"
    temp.mkdir()
    private = temp / f"fstack_dask-numba-{os.getuid()}"
    if planted == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        private.symlink_to(tmp_path / "elsewhere")
    else:
        private.mkdir()
        private.chmod(0o777)
    run = _where(tmp_path, TMPDIR=str(temp))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "no cache", run.stdout
    assert "no writable folder for the compiled kernels' cache" in run.stderr
    if planted == "a link":
        assert not list((tmp_path / "elsewhere").iterdir())


def test_nowhere_writable_runs_without_a_cache(tmp_path):
    run = _where(tmp_path, str(tmp_path / "a-file" / "tmp"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "no cache"
    assert "set NUMBA_CACHE_DIR to a writable folder" in run.stderr


def test_a_home_left_as_tilde_is_not_a_folder_in_the_working_folder(tmp_path, monkeypatch):
    """With HOME unset and no passwd entry, ``expanduser("~")`` is ``"~"``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(jit.os.path, "expanduser", lambda path: path)
    monkeypatch.setattr(jit.tempfile, "tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    found = jit._user_cache_dir()
    assert found == str(tmp_path / "t" / f"fstack_dask-numba-{os.getuid()}")
    assert not (tmp_path / "~").exists()


def test_a_relative_or_unwritable_numba_cache_dir_is_passed_over(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("NUMBA_CACHE_DIR", "relative/cache")
    assert jit._cache_dir() == str(tmp_path / "xdg" / "fstack_dask" / "numba")
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "f" / "cache"))
    assert jit._cache_dir() == str(tmp_path / "xdg" / "fstack_dask" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "given"))
    assert jit._cache_dir() == str(tmp_path / "given")


ENDS_AS_THE_KERNEL_LOADS = textwrap.dedent(
    """
    import pathlib, sys, time, numpy as np
    from fstack_dask._algorithm import block
    def compiling(*args, **kwargs):  # numba's first compilation, seconds long
        time.sleep(1)
        pathlib.Path(sys.argv[1]).write_text("compiled")
    block.fuse_block = compiling
    block.warm_up(np.dtype("uint16"), n_planes=7, n_channels=1, kernel={"engine": "compiled"})
    sys.exit(3)  # a run refused or failed right after its dst was accepted
    """
)


def test_a_program_ending_while_the_kernel_compiles_waits_for_it(tmp_path):
    """A run that ended within the seconds of a first compilation ended the process with
    the warm-up thread inside LLVM, which then died in LLVM's teardown (exit 134, an
    assertion in ScalarEvolution, seen on a loaded machine) after the run's own error line.
    The process now waits for the warm-up to end, and keeps its own exit status."""
    marker = tmp_path / "compiled"
    run = subprocess.run([sys.executable, "-c", ENDS_AS_THE_KERNEL_LOADS, str(marker)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 3, run.stderr
    assert marker.exists(), "the program ended before its warm-up did"
