"""Where the per-block kernel runs: ``device="cpu"`` (default) or ``device="cuda"``.

Checks only; the CUDA kernel is in :mod:`.cuda`. Asking for ``"cuda"`` where it
cannot run is a one-line ``ValueError`` naming ``device``, never a silent fall back to the
CPU: without numba's CUDA target (``pip install "fstack_dask[gpu]"``), or without a usable
GPU (no driver, no device). numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) counts as a
GPU, so that the CUDA code path can be tested on a CPU.

Nothing here imports numba's CUDA target unless ``"cuda"`` is asked for (it takes seconds).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = ["DEVICES", "check_device", "cuda_problem", "engine_for", "require_here"]

DEVICES = ("cpu", "cuda")
INSTALL_HINT = 'pip install "fstack_dask[gpu]"'


def check_device(device: Any, name: str = "device") -> str:
    """``device`` as ``"cpu"`` or ``"cuda"``, or a one-line error naming ``name``."""
    if not isinstance(device, str):
        raise TypeError(f"{name} must be 'cpu' or 'cuda', got {device!r} ({type(device).__name__})")
    value = device.strip().lower()
    if value not in DEVICES:
        raise ValueError(f"{name} must be 'cpu' or 'cuda', got {device!r}")
    return value


def engine_for(device: str) -> str | None:
    """The :func:`.block.fuse_block` engine of a device (None: the CPU default)."""
    return "cuda" if device == "cuda" else None


def simulated() -> bool:
    """Whether numba's CUDA simulator stands in for a GPU in this process."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def cuda_problem() -> str | None:
    """Why ``device="cuda"`` cannot run in this process (one line), or None if it can.

    Picklable by reference, so that a cluster can run it on each worker.
    """
    if importlib.util.find_spec("numba") is None:
        return f"needs numba and its CUDA target, which are not installed: {INSTALL_HINT}"
    try:
        from numba import cuda
    except ImportError as exc:  # numba without its CUDA target
        return f"needs numba's CUDA target (numba-cuda), which cannot be imported ({exc}): " + (
            INSTALL_HINT
        )
    if simulated():
        return None
    try:
        if cuda.is_available() and len(cuda.gpus) > 0:
            return None
    except Exception as exc:  # a broken driver installation raises instead of saying False
        return f"found no usable CUDA GPU ({_one_line(exc)}); use device='cpu'"
    return f"found no usable CUDA GPU ({_driver_reason(cuda)}); use device='cpu'"


def _driver_reason(cuda: Any) -> str:
    try:
        from numba.cuda.cudadrv.driver import driver

        error = driver.initialization_error
    except Exception:  # pragma: no cover - numba internals moved
        error = None
    return _one_line(error) if error else "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split()) or type(text).__name__


def require_here(device: str) -> None:
    """Refuse ``device="cuda"`` where this process cannot use a GPU (``ValueError`` naming
    ``device``); where blocks run in other processes, see :mod:`fstack_dask._runs.device`."""
    if device != "cuda":
        return
    problem = cuda_problem()
    if problem is not None:
        raise ValueError(f"device='cuda' {problem}")
