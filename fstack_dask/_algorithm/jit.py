"""numba set-up shared by the compiled modules: one decorator, one cache folder.

Compiled code is cached in the user's cache folder (``$XDG_CACHE_HOME/fstack_dask/numba``,
else ``~/.cache/fstack_dask/numba``; ``NUMBA_CACHE_DIR`` overrides), not beside the
package: numba's files in an installed package's ``__pycache__`` outlive ``pip uninstall``
and turn the left-over folder into an empty namespace package that shadows a later
(editable) install. The CUDA kernels are cached in a subfolder of it named after their
sources (:func:`cuda_cache_dir`).

``jit`` is None when numba is not installed; callers then keep their NumPy code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the fallback is tested
    numba = None

__all__ = ["cuda_cache_dir", "cuda_cache_folder", "jit"]


def _user_cache_dir() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "fstack_dask", "numba")
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return None  # not writable: numba's own choice
    return path


@contextlib.contextmanager
def _cache_dir_for_our_functions():
    """numba picks a function's cache folder when it is decorated: set it for ours only."""
    saved = numba.config.CACHE_DIR
    chosen = saved or _user_cache_dir()
    if chosen:
        numba.config.CACHE_DIR = chosen
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
    base = os.environ.get("NUMBA_CACHE_DIR", "").strip() or _user_cache_dir()
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
            return numba.njit(cache=True, nogil=True, error_model="numpy")(func)

else:  # pragma: no cover
    jit = None
