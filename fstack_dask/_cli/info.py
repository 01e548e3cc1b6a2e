"""``fstack-dask info``: what a fuse run would do with a stack, from its metadata alone (and,
for an output of ours, what :mod:`.info_output` says of it)."""

from __future__ import annotations

import argparse
from typing import Any

from .._env import check as check_environment
from .args import EXIT_OK, configure, printable, scene_src, shown
from .info_output import (
    _our_output,
    _our_tiff,
    _parameters,
    _tiff_run,
    describe_output,
    put_aside_output,
)

__all__ = ["cmd_info"]

_PLAN_KEYS = (
    "axes", "level", "channels", "nhsize", "focus", "alpha", "sth", "depth_map",
    "selectivity_map", "chunks", "memory_per_task", "storage_options", "levels", "device",
)  # fmt: skip


def plan_from_options(src: str, kw: dict[str, Any], before_sample: Any = None):
    """Open ``src`` and plan the fusion as ``fuse_zarr`` will: validates the source and every
    parameter, reads no pixel data but ``"auto"``'s sample (``before_sample(source)`` is
    called before it: the CLI's cluster path refuses its dst there)."""
    # here, not at the top: planning imports the kernels (numba, SciPy: about 0.7 s), which
    # info of an output of ours never needs
    from .._runs.fusion import plan_fusion

    return plan_fusion(
        src, **{k: kw[k] for k in _PLAN_KEYS if k in kw}, before_sample=before_sample
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_info(args: argparse.Namespace) -> int:
    config = configure(args)

    import numpy as np

    from .._errors import diverted_warnings
    from .._params import cpu_count

    kw = config.fuse_kwargs()
    # as a run does, and info of a source (its planning) did: info of an output judged its lock
    # with 60 s in silence where FSTACK_DASK_LOCK_STALE_AFTER held what a run refuses
    check_environment()
    output = _our_output(args.src, kw.get("storage_options"))
    if output is not None:
        _print(describe_output(*output))
        return EXIT_OK
    aside = put_aside_output(args.src, kw.get("storage_options"))
    if aside is not None:
        _print(aside)
        return EXIT_OK
    tiff = _as_tiff(args.src)
    ours = _our_tiff(tiff) or _tiff_run(tiff)  # (else refused as a source of
    if ours is not None:  # several series, naming them; or as one that does not exist)
        _print(ours)
        return EXIT_OK
    told: list[str] = []
    # (this thread's alone: catch_warnings took a host's other threads' warnings too)
    with diverted_warnings(told):
        fusion = plan_from_options(scene_src(args.src, args.scene), kw)
    from .._runs.reading import read_by

    workers = cpu_count() if config.cluster.kind == "local" else 1
    fusion = read_by(fusion, workers)  # as a run on these workers reads a sharded source
    source, layout = fusion.source, fusion.layout
    blocks, cache = fusion.plan(workers)
    axes, shape = source.axes, source.shape
    size_of = dict(zip(axes, shape, strict=True))
    out = fusion.spec.array("0")
    if "c" not in axes:
        channels = "none"
    elif layout.rgb:
        channels = "rgb (3 channels fused with one shared weight map)"
    else:
        channels = f"independent ({size_of['c']} channel(s), each fused on its own)"
    if source.scale:
        scale = ", ".join(
            f"{a}={source.scale[a]:g}" + (f" {source.units[a]}" if a in source.units else "")
            for a in axes
            if a in source.scale and a != "c"
        )
    else:
        scale = "unknown (1.0 is written)"
    task = fusion.task_bytes(fusion.block)
    ny, nx = blocks.grid
    fmt = f"OME-NGFF {source.ome_version}" if source.ome_version else source.kind
    lines = [
        ("source", shown(source.location.url) if source.location else source.description),
        ("format", fmt + (f", level {source.level}" if source.level else "")),
        ("axes", axes),
        ("shape", str(shape)),
        ("dtype", str(np.dtype(source.dtype))),
        ("source chunks", _chunks_line(source)),
        ("scale", scale),
        *_translation_line(source),
        ("channels", channels),
        ("output", f"{out.axes} {out.shape} {np.dtype(out.dtype)}"),
        ("parameters", _parameters(fusion.params)),
        ("halo", f"{fusion.halo} px (nhsize {fusion.params['nhsize']})"),
        ("chunks (y, x)", f"{fusion.block[0]}, {fusion.block[1]}"),
        ("blocks", f"{ny} x {nx} (y x x) per image, {blocks.n_images} image(s)"),
        ("tasks", str(blocks.n_blocks)),
        ("strip", f"{blocks.strip} block(s) wide (the order that shares decoded chunks)"),
        ("decoding", _decoding_line(fusion, blocks, cache, workers)),
        (
            "memory per task",
            f"{_mib(task)} (block with halo and the kernel's arrays; budget "
            f"{_mib(fusion.memory_per_task)})",
        ),
        ("memory per process", f"<= {workers} x {_mib(max(task, fusion.memory_per_task))} "
         f"(tasks {_mib(workers * task)}, decoded-chunk cache {_mib(cache)})"),
        ("device", _device_line(fusion, workers)),
    ]  # fmt: skip
    lines[1:1] = [("files", note) for note in source.notes]
    _print(lines)
    for message in told:  # odd file names, few planes, chunks over budget: as a run warns
        print(f"warning: {printable(message)}")
    return EXIT_OK


def _print(lines: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in lines) + 2
    for key, value in lines:
        # values from a file's metadata and names, which may hold any character
        print(f"{key + ':':<{width}}{printable(value)}", flush=True)


def _chunks_line(source: Any) -> str:
    shape = str(tuple(int(c) for c in source.unit_shape))
    if source.inner_shape is None:
        return shape
    inner = str(tuple(int(c) for c in source.inner_shape))
    read = "chunks" if source.by_inner_chunks else "whole shards"
    return f"{inner} in shards of {shape} (read by {read})"


def _decoding_line(fusion: Any, blocks: Any, cache: int, workers: int) -> str:
    """How the run will decode the source's units, and about how many times (one process
    of ``workers`` threads): halo exchange's waves decode the column (row) beside each again."""
    from .._runs import exchange

    unit = (fusion.unit["y"], fusion.unit["x"])
    found = exchange.decoding(blocks, unit, cache, fusion.source.dtype.itemsize)
    if not exchange.enabled():
        return "through the unit cache (halo exchange turned off)"
    if found is None:
        why = "blocks neither whole units nor even divisors of one"
        if exchange.exchange_grid(blocks, unit) is not None:
            why = "memory for fewer than two rows of a wave of one column"
        return f"through the unit cache ({why})"
    grid, width, ratio, across = found
    n = grid.grid[0 if across else 1]
    what = "blocks"
    if grid is not blocks:
        per = (grid.block[0] // blocks.block[0]) * (grid.block[1] // blocks.block[1])
        what = f"cells of {grid.block[0]} x {grid.block[1]} px ({per} blocks each)"
    lines = "row(s)" if across else "column(s)"
    return (f"halo exchange by {what}, waves of {width} of {n} {lines}: about {ratio:.2f} x "
            f"the stored bytes decoded on {workers} thread(s)")  # fmt: skip


def _device_line(fusion: Any, workers: int) -> str:
    if fusion.params["device"] != "cuda":
        return "cpu"
    from .._algorithm.block import haloed_shape
    from .._algorithm.cuda import device_block_memory

    lay = fusion.layout
    shape = haloed_shape(fusion.block, fusion.halo, lay.shape_yx)
    gpu = device_block_memory(shape, lay.n_planes, lay.n_channels, fusion.source.dtype.itemsize,
                              float16=fusion.source.dtype == "float16")  # fmt: skip
    line = (
        f"cuda: {_mib(gpu)} of GPU memory per task, <= {workers} x {_mib(gpu)} per process "
        "(one process per GPU)"
    )
    from .._algorithm.device import cuda_problem

    # info plans a GPU job from anywhere (a login node); fuse would refuse here, so say why
    problem = cuda_problem()
    if problem is None:
        return line
    return f"{line}; cannot run here: fstack_dask {problem.split('; use ')[0]}"


def _translation_line(source: Any) -> list[tuple[str, str]]:
    """The source's position (carried to the output's y/x; z places the depth map), where it
    states one: it was carried but not shown (an adversarial run on metadata)."""
    shift = {a: v for a, v in source.translation.items() if v and a in source.axes}
    if not shift:
        return []
    said = ", ".join(
        f"{a}={shift[a]:g}" + (f" {source.units[a]}" if a in source.units else "")
        for a in source.axes
        if a in shift
    )
    return [("translation", said)]


def _as_tiff(src: str) -> str:
    """The TIFF ``fused.tif/.`` names, as fuse writes it: ``info fused.tif/.`` described our
    output as a source, "a single 2-D image, not a focus stack"."""
    from .._locations import resolve
    from .._runs.fuse_zarr import is_tiff_destination

    if src.rstrip("/").lower().endswith((".tif", ".tiff")) or not is_tiff_destination(src):
        return src  # (as typed, as the lines show it)
    location = resolve(src, name="src")  # (it resolved just now)
    return location.path if location.is_local else src
