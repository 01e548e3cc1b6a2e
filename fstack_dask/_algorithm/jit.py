"""numba set-up shared by the compiled modules: one decorator, one cache folder.

Compiled code is cached in the user's cache folder (``$XDG_CACHE_HOME/fstack_dask/numba``,
else ``~/.cache/fstack_dask/numba``; ``NUMBA_CACHE_DIR`` overrides), not beside the
package: numba's files in an installed package's ``__pycache__`` outlive ``pip uninstall``
and turn the left-over folder into an empty namespace package that shadows a later
(editable) install.

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

__all__ = ["jit"]


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
