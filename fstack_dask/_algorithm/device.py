"""Where the per-block kernel runs: ``device="cpu"`` (default) or ``device="cuda"``.

Checks only; the CUDA kernel is in :mod:`.cuda`. Asking for ``"cuda"`` where it
cannot run is a one-line ``ValueError`` naming ``device``, never a silent fall back to the
CPU: without numba's CUDA target (``pip install "fstack_dask[gpu]"``), where it cannot
compile (numba-cuda 0.30 with NumPy 2.5, no NVVM), or without a usable GPU (no driver, no
device, a driver too old for the compiled code). numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) counts as a GPU, so that the CUDA code path can be tested on a
CPU.

Nothing here imports numba's CUDA target unless ``"cuda"`` is asked for (it takes seconds).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

import numpy as np

from .._env import CUDA_PINNED, check, switch

__all__ = [
    "DEVICES", "check_device", "cuda_problem", "engine_for", "gpu_problem", "require_here",
]  # fmt: skip

DEVICES = ("cpu", "cuda")
INSTALL_HINT = 'pip install "fstack_dask[gpu]"'
#: The first NumPy that numba-cuda 0.30 cannot compile with: it removed ``np.row_stack``,
#: which numba-cuda overloads when its CUDA target first initialises (numba-cuda issue 907,
#: closed without a fix: numba-cuda is in maintenance mode). The ``gpu`` extras bound it.
NUMPY_BELOW = (2, 5)
_SMOKE_CC = (7, 5)  # no GPU to ask: numba-cuda's default (CUDA 13's NVVM takes nothing older)
_smoke_lock = threading.Lock()
_smoke: dict[str, str | None] = {}  # the smoke test's steps, once per process


def check_device(device: Any, name: str = "device") -> str:
    """``device`` as ``"cpu"`` or ``"cuda"``, or a one-line error naming ``name``."""
    if not isinstance(device, str):
        raise TypeError(f"{name} must be 'cpu' or 'cuda', got {device!r} ({type(device).__name__})")
    value = device.strip().lower()
    if value not in DEVICES:
        raise ValueError(f"{name} must be 'cpu' or 'cuda', got {device!r}")
    return value


def engine_for(device: str) -> str | None:
    """The :func:`.block.fuse_block` engine of a device (None: the CPU default, which
    ``FSTACK_DASK_ENGINE`` chooses: a value it does not know is refused here, where every
    run picks its engine, before anything is written)."""
    if device == "cuda":
        return "cuda"
    # a typo ran the default in silence, then with a warning; refused now, as every
    # variable of ours: the engine is chosen here, for every task (workers' values unread)
    check()
    return None


def simulated() -> bool:
    """Whether numba's CUDA simulator stands in for a GPU in this process."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def cuda_problem() -> str | None:
    """Why ``device="cuda"`` cannot run in this process (one line), or None if it can.

    Beyond finding a GPU, a tiny kernel is compiled (before looking for a GPU: compiling
    needs none, so a broken toolchain is reported the same with or without one), then
    launched on the GPU and its result copied back: the failures that would otherwise
    come with the first block, after the run has begun writing (numba-cuda 0.30 with
    NumPy 2.5, no NVVM, a driver too old for the compiled code). Both steps run once per
    process; most of their cost is initialising numba's CUDA target, which the first block
    would pay anyway. Picklable by reference, so that a cluster can run it on each worker.
    """
    try:  # asked of every worker before anything is written (see .cuda.pinned)
        switch(CUDA_PINNED, True)
    except ValueError as exc:
        return f"cannot run with this environment: {exc}"
    return gpu_problem()


def gpu_problem() -> str | None:
    """:func:`cuda_problem` but for the environment: what a block's task asks of a worker
    that joined after the run's check, which warns of a bad ``FSTACK_DASK_CUDA_PINNED`` and
    pins (.cuda.pinned; refusing it there stopped the run)."""
    if importlib.util.find_spec("numba") is None:
        return f"needs numba and its CUDA target, which are not installed: {INSTALL_HINT}"
    try:
        from numba import cuda
    except ImportError as exc:  # numba without its CUDA target
        return f"needs numba's CUDA target (numba-cuda), which cannot be imported ({exc}): " + (
            INSTALL_HINT
        )
    if simulated():
        return _smoke_step("simulator", cuda)
    problem = _smoke_step("compile", cuda)
    if problem is not None:
        return problem
    try:
        if not (cuda.is_available() and len(cuda.gpus) > 0):
            return f"found no usable CUDA GPU ({_driver_reason(cuda)}); use device='cpu'"
    except Exception as exc:  # a broken driver installation raises instead of saying False
        return f"found no usable CUDA GPU ({_one_line(exc)}); use device='cpu'"
    return _smoke_step("run", cuda)


def _tiny_kernel(out, x):  # the smoke test's kernel: one product, one sum, one store
    out[0] = x * 2.0 + 1.0


def _smoke_step(step: str, cuda: Any) -> str | None:
    """One step of the smoke test (``"compile"``, ``"run"`` or ``"simulator"``), cached."""
    with _smoke_lock:
        if step not in _smoke:
            try:
                if step == "compile":
                    sig = "void(float64[::1], float64)"
                    cuda.compile_ptx(_tiny_kernel, sig, cc=_SMOKE_CC)
                else:  # launched (and, on a GPU, compiled for it), its result copied back
                    out = cuda.to_device(np.zeros(1))
                    cuda.jit(_tiny_kernel)[1, 1](out, 20.0)
                    got = float(out.copy_to_host()[0])
                    if got != 41.0:
                        raise RuntimeError(f"a kernel computing 41.0 gave {got!r}")
                _smoke[step] = None
            except Exception as exc:  # whatever numba-cuda or the driver raise, said once
                _smoke[step] = _cannot(step, exc)
        return _smoke[step]


def _cannot(step: str, exc: BaseException) -> str:
    """The smoke test's failure in one line, naming numba-cuda's and NumPy's versions."""
    what = "compile for the GPU" if step == "compile" else "run a kernel on the GPU"
    cause = _one_line(f"{type(exc).__name__}: {exc}")
    if len(cause) > 300:  # NVVM's and the driver's logs can run to pages
        cause = cause[:297] + "..."
    target = _cuda_target_version()
    if _numpy_version() >= NUMPY_BELOW:
        below = ".".join(map(str, NUMPY_BELOW))
        advice = f"use NumPy < {below} with {target}, or device='cpu'"
    else:
        advice = f"check the install ({INSTALL_HINT}), or use device='cpu'"
    return f"cannot {what} here: {target} with NumPy {np.__version__} ({cause}); {advice}"


def _cuda_target_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"numba-cuda {version('numba-cuda')}"
    except PackageNotFoundError:  # numba's own CUDA target (numba < 0.61)
        return f"numba {version('numba')}'s CUDA target"


def _numpy_version() -> tuple[int, ...]:
    parts = []
    for part in np.__version__.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


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
