"""numba set-up shared by the compiled modules: one decorator, one cache folder.

Compiled code is cached in the user's cache folder (``$XDG_CACHE_HOME/fstack_dask/numba``,
else ``~/.cache/fstack_dask/numba``, else a private folder of the user's in the temporary
folder; ``NUMBA_CACHE_DIR`` overrides; where none is writable nothing is cached), not beside the
package: numba's files in an installed package's ``__pycache__`` outlive ``pip uninstall``
and turn the left-over folder into an empty namespace package that shadows a later
(editable) install. The CUDA kernels are cached in a subfolder of it named after their
sources (:func:`cuda_cache_dir`).

``jit`` is None when numba is not installed; callers then keep their NumPy code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile

try:
    import numba
# an OSError too: llvmlite's library that cannot be loaded ('Could not find/load shared object
# file'); raised from a cluster worker's engine check, it was taken for the worker gone and
# the run went on to fail at that worker's first block
except (ImportError, OSError):  # pragma: no cover - numba is a dependency; the fallback is tested
    numba = None

__all__ = ["cuda_cache_dir", "cuda_cache_folder", "jit"]


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _private_temp_cache() -> str | None:
    """A folder of this user's alone in the temporary folder (mode 700, owned by us, not a
    link): numba's cache files are pickles, so a folder that another user could have made or
    could write into would let them run code as us."""
    path = os.path.join(tempfile.gettempdir(), f"fstack_dask-numba-{os.getuid()}")
    with contextlib.suppress(FileExistsError, OSError):
        os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    ours = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    if not ours or st.st_mode & 0o077 or not _writable(path):
        return None
    return path


def _user_cache_dir() -> str | None:
    """The first writable of: ``$XDG_CACHE_HOME/fstack_dask/numba``, ``~/.cache/...``, and a
    private folder in the temporary folder (a read-only home on compute nodes, a container
    run without one). Relative places are skipped (an unset HOME leaves ``~`` as it is: the
    cache would land in the working folder). None: nowhere, and nothing is cached."""
    homes = [os.environ.get("XDG_CACHE_HOME", ""), os.path.join(os.path.expanduser("~"), ".cache")]
    for base in homes:
        path = os.path.join(base, "fstack_dask", "numba")
        if os.path.isabs(base) and _writable(path):
            return path
    return _private_temp_cache()


def _cache_dir() -> str | None:
    """Where our compiled code is cached: ``NUMBA_CACHE_DIR`` where it is writable, else
    :func:`_user_cache_dir`."""
    given = os.environ.get("NUMBA_CACHE_DIR", "").strip()
    if given and os.path.isabs(given) and _writable(given):
        return given
    return _user_cache_dir()


@functools.cache
def _chosen_cache_dir() -> str | None:
    found = _cache_dir()
    if found is None:
        from .._errors import warn

        warn(
            "no writable folder for the compiled kernels' cache (NUMBA_CACHE_DIR, "
            "XDG_CACHE_HOME, ~/.cache and the temporary folder are not writable): every new "
            "process compiles them again (about 10 s); set NUMBA_CACHE_DIR to a writable folder"
        )
    return found


@contextlib.contextmanager
def _cache_dir_for_our_functions():
    """numba picks a function's cache folder when it is decorated: set it for ours only."""
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = _chosen_cache_dir() or saved
    try:
        yield
    finally:
        numba.config.CACHE_DIR = saved


def cuda_cache_dir(digest: str) -> str | None:
    """Folder for numba-cuda's disk cache of the CUDA kernels whose sources hash to ``digest``.

    A subfolder ``cuda-<digest>`` of the CPU engine's folder (``NUMBA_CACHE_DIR`` if set): numba
    keys a cached kernel by its own bytecode and its file's time stamp, not by the device
    functions it calls from other files (:mod:`.pixel`), so a folder per version of all
    those sources keeps a changed :mod:`.pixel` from loading kernels compiled from the old
    one. None where no folder is writable (then nothing is cached).
    """
    base = _chosen_cache_dir()
    if not base:
        return None
    path = os.path.join(base, f"cuda-{digest}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    return path


@contextlib.contextmanager
def cuda_cache_folder(path: str):
    """Kernels decorated with ``cuda.jit(cache=True)`` in this block are cached in ``path``.

    numba-cuda reads its own configuration (``numba.cuda.core.config``), numba's built-in
    CUDA target numba's; the folder is fixed when a kernel is decorated, so both are set
    for that moment only.
    """
    configs = [numba.config]
    try:
        from numba.cuda.core import config as cuda_config
    except ImportError:  # numba's own CUDA target: numba.config is its configuration
        cuda_config = None
    if cuda_config is not None and cuda_config is not numba.config:
        configs.append(cuda_config)
    saved = [c.CACHE_DIR for c in configs]
    for c in configs:
        c.CACHE_DIR = path
    try:
        yield
    finally:
        for c, value in zip(configs, saved, strict=True):
            c.CACHE_DIR = value


if numba is not None:

    def jit(func):
        """``numba.njit`` as every kernel function here is compiled.

        ``nogil`` lets threads run blocks in parallel; ``error_model="numpy"`` makes a
        division by zero give inf/NaN as in NumPy (instead of raising) and lets loops
        vectorise. No ``fastmath``: no reassociation (window sums keep their fixed
        order) and no contraction into fused multiply-adds (the same roundings on
        every CPU).
        """
        with _cache_dir_for_our_functions():
            cache = _chosen_cache_dir() is not None  # else numba raises: no locator
            return numba.njit(cache=cache, nogil=True, error_model="numpy")(func)

else:  # pragma: no cover
    jit = None
