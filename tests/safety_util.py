"""Helpers of the data-safety tests: small real stores, the real CLI, one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fstack_dask import synthetic_stack, write_stack

SHAPE, PLANES, CHUNK = (96, 80), 7, 32
CACHE = os.path.join(os.path.expanduser("~"), ".cache")  # numba's cache, outside HOME=tmp


def small_stack(seed: int = 0, dtype: str = "uint16"):
    """A (z, y, x) synthetic focus stack of 7 planes of 96 x 80."""
    return synthetic_stack(SHAPE, PLANES, dtype=dtype, seed=seed).stack.transpose(2, 0, 1)


def write_src(path: Path, seed: int = 0, **kw) -> Path:
    write_stack(path, small_stack(seed), axes="zyx", chunks=(PLANES, CHUNK, CHUNK), **kw)
    return path


def cli_whose_chunk_writes_fail(error: str, at: int) -> str:
    """A ``python -c`` program: the CLI (its arguments after it), each chunk file it writes from
    the ``at``-th on failing with ``errno.<error>`` (ENOSPC: a full disk; EDQUOT: a user's
    quota reached), as zarr's local store raises it."""
    return textwrap.dedent(f"""
        import errno, os, sys
        from zarr.storage import _local
        put, n = _local._put, [0]
        def put_or_fail(path, value, exclusive=False):
            if "/c/" in str(path):
                n[0] += 1
                if n[0] >= {at}:
                    raise OSError(errno.{error}, os.strerror(errno.{error}), str(path))
            return put(path, value, exclusive)
        _local._put = put_or_fail
        from fstack_dask._cli.main import main
        sys.exit(main(sys.argv[1:]))
    """)


def cli(*args, cwd=None, env=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
        env={**os.environ, "XDG_CACHE_HOME": CACHE, **(env or {})},
    )  # fmt: skip


def popen_cli(*args, env=None, prefix=()) -> subprocess.Popen:
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "fstack_dask", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XDG_CACHE_HOME": CACHE, **(env or {})},
    )  # fmt: skip


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: "), proc.stderr
    return lines[0]


def digest_of(root: Path, names) -> dict:
    """sha256 of every file under each of ``names`` inside ``root`` (a file's own; None for
    one that is gone: a file's digest was {} whether it was there or not, and the checks of
    a user's files kept held whatever became of them)."""
    import hashlib

    from conftest import tree_digest

    def digest(path: Path) -> Any:
        if path.is_dir():
            return tree_digest(path)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    return {name: digest(root / name) for name in names}


# A CLI run, SIGKILLed once it has deleted the first file whose path matches argv[1] (a
# removal cut short); the CLI's arguments follow.
KILLED_WHILE_REMOVING = textwrap.dedent(
    """
    import os, re, signal, sys, types
    from fstack_dask._locations import remove

    pattern = re.compile(sys.argv[1])

    def unlink_then_die(path):
        os.unlink(path)
        if pattern.search(path):
            os.kill(os.getpid(), signal.SIGKILL)

    remove.os = types.SimpleNamespace(**{**vars(os), "unlink": unlink_then_die})
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[2:]))
    """
)


def bind_or_skip(folder: Path, at: Path) -> None:
    """``mount --bind folder at`` (root only: elsewhere the test is skipped)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root")
    proc = subprocess.run(["mount", "--bind", str(folder), str(at)], capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip()}")


def unshare_works(*probe: str) -> bool:
    """Whether ``unshare *probe`` runs here (root, with the namespaces it asks for)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", *probe], capture_output=True, check=False).returncode == 0


def unmount_all_under(folder: Path) -> None:
    """Lazily (a file a failed run opened there may wait for the collector), wherever a swap
    took them."""
    from fstack_dask._locations import mounts_within

    for point in reversed(mounts_within(os.path.realpath(folder))):
        subprocess.run(["umount", "--lazy", point], check=False)


def count_decodes(monkeypatch, while_: list) -> tuple[list[int], set[str]]:
    """Patch the source's decoder to count the bytes it decodes and the threads decoding,
    while ``while_`` is not empty: the counts of a source's check after or before a run."""
    import threading

    import fstack_dask._sources.fetch as fetch

    real, decoded, names = fetch._decode, [], set()

    def decode(source, sel):
        data = real(source, sel)
        if while_:
            decoded.append(data.nbytes)
            names.add(threading.current_thread().name)
        return data

    monkeypatch.setattr(fetch, "_decode", decode)
    return decoded, names


# The CLI with statx refused (EPERM), as an older container runtime's seccomp profile refuses
# it, and name_to_handle_at too where REFUSED says so: a seccomp filter (x86_64's syscall
# numbers, 332 and 303) installed before fstack_dask starts.
NO_STATX_CLI = textwrap.dedent("""
    import ctypes, os, runpy, sys
    class F(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
    class P(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
    refused = [int(n) for n in os.environ.pop("REFUSED", "332").split(",")]
    n = len(refused)  # load nr; nr == each: EPERM; else allow
    rules = (F * (n + 3))(F(0x20, 0, 0, 0), *(F(0x15, n - i, 0, nr) for i, nr in
                          enumerate(refused)), F(0x06, 0, 0, 0x7FFF0000), F(0x06, 0, 0, 0x50001))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(P(n + 3, rules)), 0, 0):
        sys.exit("seccomp refused")  # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP
    sys.argv[0] = "fstack-dask"
    runpy.run_module("fstack_dask", run_name="__main__")
""")


def masked_cli(*args: str, no_statx: bool = False,
               no_mount_id: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """The CLI where /proc/self/mountinfo is masked (a hardened container's: /dev/null bound
    over it, in a mount namespace of its own), and statx refused too where ``no_statx``, and
    name_to_handle_at (the mount id) where ``no_mount_id``."""
    import shlex

    run = ["-c", NO_STATX_CLI] if no_statx else ["-m", "fstack_dask"]
    command = shlex.join([sys.executable, *run, *map(str, args)])
    script = f"mount --bind /dev/null /proc/$$/mountinfo && exec {command}"
    env = {**os.environ, "XDG_CACHE_HOME": CACHE, "REFUSED": "332,303" if no_mount_id else "332"}
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, check=False, env=env)  # fmt: skip
