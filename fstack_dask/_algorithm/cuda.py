"""The ``"cuda"`` engine: one block fused on a CUDA GPU (numba's CUDA target).

:func:`fuse_cuda` takes the same block as the compiled CPU engine, prepared the same way
(plane-major samples, float16 widened to float32, the 64-bit integers' focus measure from
the shared NumPy code), and gives the same numbers: the kernels
(:mod:`.cuda_kernels`) do the CPU's IEEE operations in the CPU's order, with no
fused multiply-adds, so the rounded output is the CPU's (the tests check bit for bit in
numba's simulator, and on a GPU the contract is >= 99.9 % of pixels identical, none more
than one level apart).

Each thread that fuses blocks (a worker thread of the threaded scheduler, a dask worker's
thread) has its own two CUDA streams (one for the kernels, one for the samples' transfer),
device buffers and pinned (page-locked) host buffers, kept between blocks and grown only
for a larger block. The samples go to the GPU a group of planes at a time (the focus
measure's groups, :func:`plane_groups`): the thread copies a group into the pinned buffer
and queues its transfer, and the focus measure of that group waits for that transfer only,
so the thread's copy of the next group, the transfer of this one and the kernels of the
previous one can run at once, where the whole block used to be copied, then sent, then
fused. In a run (``fuse_zarr``), the pipeline assembles each block's haloed samples in that
pinned buffer itself (:func:`staging_buffer`), and the copy is skipped. The results come
back through pinned buffers; the thread then waits on its own streams only, so one
thread's transfers also overlap the others' kernels. On a dask-distributed cluster, run one
worker per GPU: each worker's tasks use the GPU that ``CUDA_VISIBLE_DEVICES`` shows it as
device 0 (``dask_cuda.LocalCUDACluster`` sets that up). See :func:`device_block_memory` for
what a block holds on the GPU.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numpy as np

from .._env import CUDA_PINNED, switch_or_default
from .device import gpu_problem, simulated
from .fused import even_step

__all__ = ["device_block_memory", "fuse_cuda", "host_block_memory", "pinned", "staging_buffer"]

THREADS_PER_BLOCK = 256
_build_lock = threading.Lock()
_built: dict[str, Any] = {}
# numba-cuda 0.30 loads a kernel's module into the context at its first launch without a
# lock: two host threads launching the same new kernel at once fail with "key already in
# dictionary" and can crash the process (seen on an H200 with 16 threads). Launches are
# queued under one lock; they hold the GIL for most of their few microseconds anyway.
_launch_lock = threading.Lock()
_local = threading.local()


@functools.cache
def pinned() -> bool:
    """Whether to send the samples through a pinned (page-locked) buffer, asynchronously
    (default), or straight from the block's pageable memory (``FSTACK_DASK_CUDA_PINNED=0``;
    the driver then stages the copy itself). Both give the same bits; benchmarks/gpu.py times
    both. Another value than 0 or 1: a run refuses it where it checks its device (every worker
    asked, before writing); a worker that joins later warns and pins. Read at a block's
    first use, not at the import, which the process planning a run does too: its warning,
    "the default (1) is used", came before the error that refused the same value."""
    return switch_or_default(CUDA_PINNED, True)


def _target() -> tuple[Any, dict]:
    """numba.cuda and the compiled kernels (built once per process, on first use)."""
    with _build_lock:
        if not _built:
            # a one-line ValueError naming device, not numba's own; a bad pinned switch is
            # warned of by pinned() (a worker that joined after the run's check: refused, it
            # stopped the run)
            problem = gpu_problem()
            if problem is not None:
                raise ValueError(f"device='cuda' {problem}")
            from numba import cuda

            _built["cuda"] = cuda
            _built["kernels"] = build_kernels(cuda, simulator=simulated())
        return _built["cuda"], _built["kernels"]


def build_kernels(cuda: Any, *, simulator: bool) -> dict:
    """The kernels for ``cuda``; on a GPU with numba-cuda's disk cache in
    :func:`.jit.cuda_cache_dir`, so that a new process loads what an earlier one compiled."""
    from .cuda_kernels import build, source_digest

    cache_dir = None
    if not simulator:
        from .jit import cuda_cache_dir

        cache_dir = cuda_cache_dir(source_digest())
    return build(cuda, simulator=simulator, cache_dir=cache_dir)


def plane_groups(n_planes: int, fm_itemsize: int) -> int:
    """Planes whose focus-measure temporaries (16 bytes a voxel) are held at once.

    As many as keep those temporaries no larger than the focus measure itself, so that the
    GPU holds about twice the focus measure, however many planes.
    """
    return max(1, min(n_planes, math.ceil(n_planes * fm_itemsize / 16)))


def device_block_memory(
    shape_yx: tuple[int, int],
    n_planes: int,
    n_channels: int,
    itemsize: int,
    *,
    float16: bool = False,
) -> int:
    """Bytes of GPU memory one block holds (what :func:`fuse_cuda` allocates for it).

    Per pixel of the block (halo included), with ``P`` planes, ``C`` channels, ``b`` bytes
    per sample (4 for float16, widened to float32), ``f`` bytes per focus-measure value
    (4 for samples of up to 16 bits, else 8), ``G`` = :func:`plane_groups` and ``o`` bytes
    per output sample (8 for float16)::

        C P b  +  P f  +  16 G  +  f + 4 + 8 + 8 + 8 + 8  +  C o
        stack     fm      temps    fmax, arg, q, column sums, phi, S   output

    with ``16 G <= P f + 16``: about ``P (C b + 2 f)`` bytes a pixel. The same buffers of
    the same size are allocated for every block of that size (and kept for the next).
    """
    rows, cols = int(shape_yx[0]), int(shape_yx[1])
    b = 4 if float16 else itemsize
    f = 4 if itemsize <= 2 else 8
    o = 8 if float16 else itemsize
    groups = plane_groups(n_planes, f)
    per_pixel = n_channels * n_planes * b + n_planes * f + 16 * groups + f + 36 + n_channels * o
    return rows * cols * per_pixel + 8 * n_planes + 64  # + the focus positions, odd bytes


def host_block_memory(
    shape_yx: tuple[int, int],
    n_planes: int,
    n_channels: int,
    itemsize: int,
    rgb: bool,
    *,
    float16: bool = False,
) -> int:
    """Bytes of host memory one :func:`fuse_cuda` block holds (cf. ``block.block_memory``).

    The input block and Dask's halo copy (``2 C P s``, ``s`` its bytes per sample), the
    pinned copy sent to the GPU (``C P b``) and the 2-D results (pinned and returned:
    image, fmax, arg-max, ``S`` in float64, depth; and the selectivity map in float32).
    64-bit integers add the host's focus measure
    (``P`` float64, and the luminance for RGB) and its temporaries.
    """
    rows, cols = int(shape_yx[0]), int(shape_yx[1])
    b = 4 if float16 else itemsize
    o = 8 if float16 else itemsize
    per_pixel = n_planes * n_channels * (2 * itemsize + b) + 2 * (n_channels * o + 8 + 4 + 8) + 8
    if itemsize == 8 and not float16:  # 64-bit integers: the NumPy focus measure on the host
        per_pixel += 8 * n_planes + (8 * n_planes if rgb else 0) + 80
    return rows * cols * per_pixel


def gpu_bands(planes: np.ndarray, rgb: bool, halo: int) -> int:
    """Horizontal bands for ``focus_stack`` on the GPU: each within half its free memory."""
    cuda, _ = _target()
    n_ch = planes.shape[0] if rgb else 1
    n_planes, rows, width = planes.shape[-3:]
    try:
        budget = cuda.current_context().get_memory_info()[0] / 2
    except Exception:  # pragma: no cover - a driver that cannot say
        budget = 2 * 2**30
    if not math.isfinite(budget):  # the simulator
        return 1
    float16 = planes.dtype == np.float16
    per_row = device_block_memory((1, width), n_planes, n_ch, planes.dtype.itemsize,
                                  float16=float16)  # fmt: skip
    band_rows = max(halo, int(budget // per_row) - 2 * halo)
    return max(1, min(rows, math.ceil(rows / band_rows)))


class _Workspace:
    """One thread's streams and buffers, kept between blocks (grown, never shrunk)."""

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self.staged_bytes = 0  # samples copied into the pinned buffer before being sent
        self.stream = cuda.stream()  # the kernels, and the results' transfers
        self.copy_stream = cuda.stream()  # the samples' transfers, a group of planes each
        self.events: list[Any] = []
        self.device: dict[str, Any] = {}
        self.pinned: dict[str, np.ndarray] = {}
        self.blocks = 1 if simulated() else _max_blocks(cuda)
        self.threads = 8 if simulated() else THREADS_PER_BLOCK

    def on_device(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        have = self.device.get(name)
        if have is None or have.dtype != dtype or have.size < size:
            self.device.pop(name, None)  # freed before the larger one is allocated
            have = self.device[name] = self.cuda.device_array(max(size, 1), dtype)
        return have[:size].reshape(shape)

    def on_host(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        have = self.pinned.get(name)
        if have is None or have.dtype != dtype or have.size < size:
            self.pinned.pop(name, None)
            have = self.pinned[name] = self.cuda.pinned_array(max(size, 1), dtype)
        return have[:size].reshape(shape)

    def event(self, i: int) -> Any:
        """The ``i``-th event, reused block after block (a wait takes the state it has then)."""
        while len(self.events) <= i:  # untimed: cheaper to record (the simulator has one kind)
            kwargs = {} if simulated() else {"timing": False}
            self.events.append(self.cuda.event(**kwargs))
        return self.events[i]

    def device_bytes(self) -> int:
        return sum(int(a.size) * a.dtype.itemsize for a in self.device.values())

    def launch(self, kernel: Any, work: int, *args: Any) -> None:
        blocks = max(1, min(self.blocks, -(-work // self.threads)))
        with _launch_lock:
            kernel[blocks, self.threads, self.stream](*args)


def _max_blocks(cuda: Any) -> int:
    """Thread blocks per launch: enough to fill every multiprocessor several times over."""
    try:
        return 16 * int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # pragma: no cover - a device without the attribute
        return 2048


def workspace() -> _Workspace:
    """This thread's workspace (created on its first block)."""
    cuda, _ = _target()
    ws = getattr(_local, "workspace", None)
    if ws is None:
        ws = _local.workspace = _Workspace(cuda)
    return ws


def staging_buffer(shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
    """This thread's pinned buffer for a block's samples, ``(P, Y, X)`` or ``(3, P, Y, X)``:
    a block assembled in it (the pipeline's halo and core copies land there) is sent to the
    GPU as it is, without :func:`fuse_cuda`'s staging copy. None where the samples are
    staged otherwise (float16, widened to float32 first; ``FSTACK_DASK_CUDA_PINNED=0``).

    The buffer is the thread's until its next block: fuse the block on the same thread
    before asking for another.
    """
    dtype = np.dtype(dtype)
    if not pinned() or dtype == np.float16 or not dtype.isnative:
        return None
    grey = len(shape) == 3
    held = workspace().on_host("values", ((1,) if grey else ()) + tuple(shape), dtype)
    return held[0] if grey else held


def fuse_cuda(stack, nhsize, focus, alpha, sth, rgb, *, s_fill, with_depth=True):
    """Fuse one block on the GPU: ``(image, fmax, arg, selectivity)`` as the CPU engines.

    ``stack`` is ``(P, Y, X)`` grey or ``(3, P, Y, X)`` RGB in native byte order, checked
    by ``fuse_block``. ``fmax`` and ``arg`` serve only the depth map: without it
    (``with_depth=False``) they stay on the GPU and are returned as None, which spares two
    transfers and two host copies of the block's size (an int64 ``arg`` is 8 bytes a pixel).
    """
    from .numpy_engine import focus_measure, luminance

    ws = workspace()
    native = stack.dtype
    values = stack if rgb else stack[None]
    if native == np.float16:  # as the CPU engine: no float16 arithmetic; float32 holds it
        values = values.astype(np.float32)
    n_planes = values.shape[1]
    d_values = ws.on_device("values", values.shape, values.dtype)
    h_values = ws.on_host("values", values.shape, values.dtype) if pinned() else None
    sent = [0]  # groups of planes sent so far (each with its event)

    def send(p0: int, p1: int) -> None:
        """Planes ``p0:p1`` to the GPU; the kernels' stream waits for them, nothing else."""
        _send_planes(ws, values, h_values, d_values, p0, p1, sent[0])
        sent[0] += 1

    host_fm = None
    if native.kind in "iu" and native.itemsize == 8:  # rare: the shared NumPy code, same bits
        grey = np.stack([luminance(values[:, p]) for p in range(n_planes)]) if rgb else values[0]
        host_fm = np.ascontiguousarray(focus_measure(grey, int(nhsize), compiled=False)[0])
        del grey
        send(0, n_planes)
    d = device_pass(ws, d_values, native, rgb, nhsize, focus, alpha, sth, s_fill=s_fill,
                    host_fm=host_fm, ready=None if host_fm is not None else send)  # fmt: skip
    stream = ws.stream

    n_ch, _, rows, width = values.shape
    h_out = ws.on_host("out", d["out"].shape, d["out"].dtype)
    d["out"].copy_to_host(h_out, stream=stream)
    if with_depth:
        h_fmax = ws.on_host("fmax", (rows, width), d["fmax"].dtype)
        h_arg = ws.on_host("arg", (rows, width), np.int32)
        d["fmax"].copy_to_host(h_fmax, stream=stream)
        d["arg"].copy_to_host(h_arg, stream=stream)
    h_sel = ws.on_host("sel", (rows, width), np.float64)  # S: whether it needs the fill
    d["sel"].copy_to_host(h_sel, stream=stream)
    stream.synchronize()
    # Copies: the pinned buffers are this thread's, and its next block reuses them.
    image = (h_out if rgb else h_out[0]).astype(native)
    sel = h_sel.copy()
    if not with_depth:
        return image, None, None, sel
    return image, h_fmax.copy(), h_arg.astype(np.intp), sel


def _send_planes(ws, values, h_values, d_values, p0, p1, i) -> None:
    """Queue ``values[:, p0:p1]`` to ``d_values`` on the copy stream, through the pinned
    ``h_values`` (None: from pageable memory), and make the kernels' stream wait for it.

    Each channel's slab is contiguous on both sides. The pinned buffer is free to fill: the
    previous block's transfers were all waited for before its results came back.
    """
    src = values[:, p0:p1]
    if h_values is not None and not _same_memory(values, h_values):
        dst = h_values[:, p0:p1]
        ws.staged_bytes += src.nbytes
        if all(src[c].flags.c_contiguous for c in range(src.shape[0])):
            for c in range(src.shape[0]):  # a group of an RGB block: a slab per channel
                np.copyto(dst[c], src[c])
        else:  # the reference's pixel-major layout: one tiled copy, every channel at once
            from .compiled import _copy_tiles

            _copy_tiles(src, dst)
        src = dst
    elif h_values is not None:  # assembled in the pinned buffer (staging_buffer): sent as is
        src = h_values[:, p0:p1]
    copy = ws.copy_stream
    for c in range(values.shape[0]):
        d_values[c, p0:p1].copy_to_device(np.ascontiguousarray(src[c]), stream=copy)
    event = ws.event(i)
    event.record(copy)
    event.wait(ws.stream)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same elements (one buffer, one layout; the stride of
    an axis of length 1 does not matter)."""

    def layout(x: np.ndarray) -> tuple:
        strides = tuple(st for n, st in zip(x.shape, x.strides, strict=True) if n > 1)
        return x.__array_interface__["data"][0], x.shape, strides, x.dtype

    return layout(a) == layout(b)


def device_pass(
    ws, d_values, native, rgb, nhsize, focus, alpha, sth, *, s_fill=-np.inf, host_fm=None,
    ready=None,
) -> dict[str, Any]:  # fmt: skip
    """Every kernel of one block whose samples ``d_values`` (C, P, Y, X) are on the GPU.

    Queued on the workspace's stream (nothing waits). ``native`` is the input's dtype (the
    samples may be float16 widened to float32); ``host_fm``, if given, is the focus measure
    computed on the host (64-bit integers). ``ready(p0, p1)``, if given, is called before
    the kernels that read planes ``p0:p1`` are queued (the samples are then sent a group of
    planes at a time; else they must be on the GPU already). Returns the device arrays
    ``out`` (C, Y, X), ``fmax``, ``arg`` and ``sel``.
    """
    from .numpy_engine import fm_dtype
    from .pixel import phi_from_s

    _, kernels = _target()
    stream = ws.stream
    n_ch, n_planes, rows, width = d_values.shape
    n = int(nhsize)
    lo, hi = n // 2, n - 1 - n // 2
    fm_dt = fm_dtype(native)
    out_dt = np.dtype(np.float64) if native == np.float16 else np.dtype(native)
    d_fm = ws.on_device("fm", (n_planes, rows, width), fm_dt)
    if host_fm is not None:
        d_fm.copy_to_device(host_fm, stream=stream)
    else:
        _focus_measure(ws, kernels, d_values, d_fm, np.dtype(native), rgb, n, lo, hi, ready)

    fit = n_planes >= 5
    d_focus = ws.on_device("focus", (n_planes,), np.float64)
    h_focus = ws.on_host("focus", (n_planes,), np.float64)
    h_focus[...] = focus
    d_focus.copy_to_device(h_focus, stream=stream)
    d_fmax = ws.on_device("fmax", (rows, width), fm_dt)
    d_arg = ws.on_device("arg", (rows, width), np.int32)
    d_q = ws.on_device("q", (1, rows, width), np.float64)
    d_vs = ws.on_device("vs", (1, rows, width), np.float64)
    d_phi = ws.on_device("phi", (rows, width), np.float64)
    d_sel = ws.on_device("sel", (rows, width), np.float64)
    d_out = ws.on_device("out", (n_ch, rows, width), out_dt)
    pixels = rows * width
    ws.launch(kernels["fit_error"], pixels, d_fm, d_focus, even_step(focus), fit, d_fmax, d_arg,
              d_q[0])  # fmt: skip
    if fit:
        ws.launch(kernels["float_column_sums"], pixels, lo, hi, d_q, d_vs)
    phi_full = float(phi_from_s(np.inf, float(alpha), float(sth), float(s_fill)))
    ws.launch(
        kernels["selectivity_phi"], pixels, lo, hi, 1.0 / (n * n), fit, phi_full,
        float(alpha), float(sth), float(s_fill), d_vs, d_phi, d_sel,
    )  # fmt: skip
    lo_val, hi_val, top, is_int = _store_limits(out_dt)
    ws.launch(kernels["blend"], pixels, d_values, d_fm, d_fmax, d_phi, d_out, lo_val, hi_val,
              top, is_int)  # fmt: skip
    return {"out": d_out, "fmax": d_fmax, "arg": d_arg, "sel": d_sel}


def _focus_measure(ws, kernels, d_values, d_fm, native, rgb, n, lo, hi, ready=None) -> None:
    """The focus measure of every plane into ``d_fm``, a group of planes at a time
    (``ready(p0, p1)`` first, if given: see :func:`device_pass`)."""
    from .numpy_engine import _exact_int_ok, _float_divisor

    n_planes, rows, width = d_fm.shape
    groups = plane_groups(n_planes, d_fm.dtype.itemsize)
    exact = _exact_int_ok(native, n)
    for p0 in range(0, n_planes, groups):
        g = min(groups, n_planes - p0)
        if ready is not None:
            ready(p0, p0 + g)
        voxels = g * rows * width
        if exact:
            scale = float(n**6) * float(np.iinfo(native).max) ** 2
            h1 = ws.on_device("i32a", (g, rows, width), np.int32)
            d = ws.on_device("i32b", (g, rows, width), np.int32)
            h2 = ws.on_device("i64", (g, rows, width), np.int64)
            ws.launch(kernels["int_rows"], voxels, d_values, rgb, p0, lo, hi, h1)
            ws.launch(kernels["int_deviation"], voxels, d_values, rgb, p0, lo, hi, h1, d)
            ws.launch(kernels["int_square_rows"], voxels, lo, hi, d, h2)
            ws.launch(kernels["int_measure"], voxels, p0, lo, hi, scale, h2, d_fm)
        else:
            rounded = native.kind in "iu"
            divisor = _float_divisor(native)
            inv_area = 1.0 / (n * n)
            t1 = ws.on_device("f64a", (g, rows, width), np.float64)
            t2 = ws.on_device("f64b", (g, rows, width), np.float64)
            args = (d_values, rgb, rounded, divisor, p0, lo, hi)
            ws.launch(kernels["float_columns"], voxels, *args, t1)
            ws.launch(kernels["float_deviation"], voxels, *args, inv_area, t1, t2)
            ws.launch(kernels["float_column_sums"], voxels, lo, hi, t2, t1)
            ws.launch(kernels["float_measure"], voxels, p0, lo, hi, inv_area, t1, d_fm)


def _store_limits(dtype: np.dtype) -> tuple[float, float, Any, bool]:
    """As ``fused.blend_compiled``: the clip range of an integer output, and its maximum."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo_val, hi_val = float(info.min), float(info.max)
        if int(hi_val) > int(info.max):  # 64-bit: the maximum is not a float64
            hi_val = float(np.nextafter(hi_val, 0.0))
        return lo_val, hi_val, dtype.type(info.max), True
    return 0.0, 0.0, dtype.type(0), False
