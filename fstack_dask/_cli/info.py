"""``fstack-dask info``: what a fuse run would do with a stack, from its metadata alone."""

from __future__ import annotations

import argparse
from typing import Any

from .._runs.fusion import plan_fusion
from .args import EXIT_OK, configure, scene_src

__all__ = ["cmd_info"]

_PLAN_KEYS = (
    "axes", "level", "channels", "nhsize", "focus", "alpha", "sth", "depth_map",
    "selectivity_map", "chunks", "memory_per_task", "storage_options", "levels", "device",
)  # fmt: skip


def plan_from_options(src: str, kw: dict[str, Any]):
    """Open ``src`` and plan the fusion as ``fuse_zarr`` will: validates the source and every
    parameter, reads no pixel data."""
    return plan_fusion(src, **{k: kw[k] for k in _PLAN_KEYS if k in kw})


def _parameters(params: dict[str, Any]) -> str:
    auto = params.get("auto") or {}
    text = f"nhsize {params['nhsize']}, sth {params['sth']:g} dB, alpha {params['alpha']:g}"
    if auto:
        text += (
            f" (nhsize and sth chosen from the data: noise {auto['noise']:.3g}, texture/noise^2 "
            f"{auto['snr']:.3g}, {auto['tiles']} tiles read)"
        )
    return text


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_info(args: argparse.Namespace) -> int:
    config = configure(args)
    import numpy as np

    from .._params import cpu_count

    kw = config.fuse_kwargs()
    fusion = plan_from_options(scene_src(args.src, args.scene), kw)
    source, layout = fusion.source, fusion.layout
    workers = cpu_count() if config.cluster.kind == "local" else 1
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
        ("source", source.location.url if source.location else source.description),
        ("format", fmt + (f", level {source.level}" if source.level else "")),
        ("axes", axes),
        ("shape", str(shape)),
        ("dtype", str(np.dtype(source.dtype))),
        ("source chunks", str(tuple(int(c) for c in source.unit_shape))),
        ("scale", scale),
        ("channels", channels),
        ("output", f"{out.axes} {out.shape} {np.dtype(out.dtype)}"),
        ("parameters", _parameters(fusion.params)),
        ("halo", f"{fusion.halo} px (nhsize {fusion.params['nhsize']})"),
        ("chunks (y, x)", f"{fusion.block[0]}, {fusion.block[1]}"),
        ("blocks", f"{ny} x {nx} (y x x) per image, {blocks.n_images} image(s)"),
        ("tasks", str(blocks.n_blocks)),
        ("strip", f"{blocks.strip} block(s) wide (the order that shares decoded chunks)"),
        (
            "memory per task",
            f"{_mib(task)} (block with halo and the kernel's arrays; budget "
            f"{_mib(fusion.memory_per_task)})",
        ),
        ("memory per process", f"<= {workers} x {_mib(fusion.memory_per_task)} "
         f"(tasks {_mib(workers * task)}, decoded-chunk cache {_mib(cache)})"),
        ("device", _device_line(fusion, workers)),
    ]  # fmt: skip
    width = max(len(k) for k, _ in lines) + 2
    for key, value in lines:
        print(f"{key + ':':<{width}}{value}")
    if task > fusion.memory_per_task:
        print(
            f"warning: a task needs about {_mib(task)}, more than the "
            f"{_mib(fusion.memory_per_task)} budget; choose smaller --chunks "
            f"or a larger --memory-per-task",
            flush=True,
        )
    return EXIT_OK


def _device_line(fusion: Any, workers: int) -> str:
    if fusion.params["device"] != "cuda":
        return "cpu"
    from .._algorithm.cuda import device_block_memory

    lay, halo = fusion.layout, fusion.halo
    shape = (fusion.block[0] + 2 * halo, fusion.block[1] + 2 * halo)
    gpu = device_block_memory(shape, lay.n_planes, lay.n_channels, fusion.source.dtype.itemsize,
                              float16=fusion.source.dtype == "float16")  # fmt: skip
    return (
        f"cuda: {_mib(gpu)} of GPU memory per task, <= {workers} x {_mib(gpu)} per process "
        "(one process per GPU)"
    )
