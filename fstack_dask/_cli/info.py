"""``fstack-dask info``: what a fuse run would do with a stack, from its metadata alone."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .args import EXIT_OK, configure, printable, scene_src, shown

__all__ = ["cmd_info"]

_PLAN_KEYS = (
    "axes", "level", "channels", "nhsize", "focus", "alpha", "sth", "depth_map",
    "selectivity_map", "chunks", "memory_per_task", "storage_options", "levels", "device",
)  # fmt: skip


def plan_from_options(src: str, kw: dict[str, Any]):
    """Open ``src`` and plan the fusion as ``fuse_zarr`` will: validates the source and every
    parameter, reads no pixel data."""
    # here, not at the top: planning imports the kernels (numba, SciPy: about 0.7 s), which
    # info of an output of ours never needs
    from .._runs.fusion import plan_fusion

    return plan_fusion(src, **{k: kw[k] for k in _PLAN_KEYS if k in kw})


def _number(value: Any) -> float:
    """A float from provenance, where non-finite values are stored as strings ("inf")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _parameters(params: dict[str, Any]) -> str:
    auto = params.get("auto") or {}
    text = (
        f"nhsize {params['nhsize']}, sth {_number(params['sth']):g} dB, "
        f"alpha {_number(params['alpha']):g}"
    )
    if auto:
        # A stack without measurable noise (a clean or piecewise-flat image) has an infinite
        # texture/noise^2, stored as the string "inf".
        text += (
            f" (nhsize and sth chosen from the data: noise {_number(auto['noise']):.3g}, "
            f"texture/noise^2 {_number(auto['snr']):.3g}, {auto['tiles']} tiles read)"
        )
    return text


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_info(args: argparse.Namespace) -> int:
    config = configure(args)
    import warnings

    import numpy as np

    from .._errors import FstackDaskWarning
    from .._params import cpu_count

    kw = config.fuse_kwargs()
    output = _our_output(args.src, kw.get("storage_options"))
    if output is not None:
        _print(describe_output(*output))
        return EXIT_OK
    ours = _our_tiff(args.src) or _tiff_run(args.src)  # (else refused as a source of
    if ours is not None:  # several series, naming them; or as one that does not exist)
        _print(ours)
        return EXIT_OK
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FstackDaskWarning)
        fusion = plan_from_options(scene_src(args.src, args.scene), kw)
    told = [str(w.message) for w in caught if issubclass(w.category, FstackDaskWarning)]
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


# ------------------------------------------------------------------ our own outputs


def _our_output(src: str, storage_options: Any) -> tuple[Any, str] | None:
    """(location, "complete" or "unfinished") when ``src`` is an fstack_dask output."""
    from .._locations import resolve
    from .._outputs.ownership import classify

    try:
        location = resolve(src, name="src", storage_options=storage_options)
    except (ValueError, TypeError, OSError):
        return None  # not a place: a glob, say; planning says what is wrong with it
    try:
        kind = classify(location)
    except PermissionError:  # a local output's part this user may not read: say which (it
        if location.is_local:  # was taken for no output: "not an image yet", if unfinished)
            raise
        return None  # (a store's refusal: planning says how to reach it)
    except (ValueError, TypeError, OSError):
        return None
    return (location, kind) if kind in ("complete", "unfinished") else None


def describe_output(location: Any, kind: str) -> list[tuple[str, str]]:
    """``info``'s lines for an fstack_dask output: its image and levels, scale, maps, what
    it was fused from and with which parameters, and whether it is done or can be resumed.

    Reads metadata and the done-markers only.
    """
    from .._outputs.ownership import provenance, run_record
    from .._outputs.staleness import read_lock
    from .._outputs.state import OutputState

    params = provenance(location)
    if params is None:  # a run killed while creating the output: its record only
        params = (run_record(location) or {}).get("params") or {}
    lines = [
        ("output", shown(location.url)),
        (
            "format",
            "fstack_dask output, OME-Zarr 0.5 (a multiscale image)"
            if kind == "complete"
            else "fstack_dask output, unfinished: a plain Zarr group, an OME-Zarr 0.5 "
            "multiscale image once complete",
        ),
        ("state", _state(location, kind, params, OutputState, read_lock)),
    ]
    return lines + _images(location) + _made_of(params) + _staged(location, kind)


def _staged(location: Any, kind: str) -> list[tuple[str, str]]:
    """The line for an ``--overwrite`` of a complete output that failed or was interrupted in
    its staging folder beside it (``--resume`` finishes it): info said only "complete"."""
    from .._outputs.leftovers import staged_run

    try:
        staged = staged_run(location) if kind == "complete" else None
    except OSError:  # a folder this user may enter, not list (a colleague's home, 711): info
        return []  # of the output itself failed, "may not list the folder"
    if staged is None:
        return []
    state = dict(describe_output(staged, "unfinished"))["state"]
    return [("overwrite", f"under way in {shown(staged.url)}: {state}")]


def _made_of(params: dict[str, Any]) -> list[tuple[str, str]]:
    """What an output was fused from, with which parameters, by which version."""
    return [
        ("fused from", f"{shown(params.get('src', '?'))} (axes {params.get('src_axes', '?')}, "
                       f"shape {tuple(params.get('src_shape') or ())}, "
                       f"level {params.get('level', 0)})"),
        ("parameters", _output_parameters(params)),
        ("provenance", f"fstack_dask {params.get('version', '?')}: {params.get('method', '?')}; "
                       f"device {params.get('device', 'cpu')}, engine {params.get('engine', '?')}"),
    ]  # fmt: skip


def _our_tiff(src: str) -> list[tuple[str, str]] | None:
    """``info``'s lines for a pyramidal OME-TIFF fstack_dask wrote, or None (not one).

    ``info fused.ome.tif`` took our own output for a source of three series and asked which
    one to fuse (a readers' run, 2026-12-06).
    """
    import os
    import xml.etree.ElementTree as ET

    import tifffile

    from .._outputs.tiff import tiff_owner

    if not os.path.isfile(src) or not src.lower().endswith((".tif", ".tiff")):
        return None
    params = tiff_owner(src)
    if params is None:
        return None
    lines = [
        ("output", shown(src)),
        ("format", "fstack_dask output, pyramidal OME-TIFF (BigTIFF, 512 x 512 px tiles)"),
        ("state", "complete"),
    ]
    with tifffile.TiffFile(src) as tif:
        pixels = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
        for k, series in enumerate(tif.series):
            levels = ", ".join(f"{i}: {tuple(s.shape)}" for i, s in enumerate(series.levels))
            if k == 0:
                lines.append(("image", f"{series.axes.lower()} {tuple(series.shape)} "
                                       f"{series.dtype}"))  # fmt: skip
                lines.append(("levels", levels))
                lines.append(("scale", _tiff_scale(pixels)))
            else:
                unit = params.get("depth_unit") if series.name == "depth" else "dB"
                lines.append((series.name, f"{series.dtype}{f', {unit}' if unit else ''}, "
                                           f"{len(series.levels)} level(s)"))  # fmt: skip
    return lines + _made_of(params) + _overwrite_under_way(src)


def _tiff_run(src: str) -> list[tuple[str, str]] | None:
    """``info``'s lines for a TIFF dst not yet there whose interrupted run left its working
    store: ``info fused.ome.tif`` said "src ... does not exist", where the README has it say
    how far the run got and that ``--resume`` continues it (a README audit, 2026-12-06)."""
    import os

    if not src.lower().endswith((".tif", ".tiff")) or os.path.lexists(src):
        return None
    work = _unfinished_work(src)
    if work is None:  # (a complete store's TIFF was in place: it is a leftover)
        return None
    lines = describe_output(work, "unfinished")
    lines[0] = ("output", f"{shown(src)} (not written yet; its run works in {shown(work.url)})")
    lines[1] = ("format", "fstack_dask output, unfinished: a pyramidal OME-TIFF once complete")
    return lines


def _overwrite_under_way(src: str) -> list[tuple[str, str]]:
    """The line for an ``--overwrite`` of our TIFF interrupted in its working store: the
    TIFF is still the old one, and ``--resume`` finishes the new."""
    work = _unfinished_work(src)
    if work is None:
        return []
    state = dict(describe_output(work, "unfinished"))["state"]
    return [("overwrite", f"under way in {shown(work.url)}: {state}")]


def _unfinished_work(src: str) -> Any:
    """The working store beside a TIFF ``src`` where it holds an unfinished run, else None."""
    from .._locations import resolve
    from .._outputs.ownership import classify
    from .._runs.tiff_output import working_store

    try:
        tiff = resolve(src, name="src")
        if not tiff.is_local:  # a TIFF dst is a local path: nothing to ask a server
            return None
        work = working_store(tiff)
        return work if classify(work) == "unfinished" else None
    except (ValueError, TypeError, OSError):
        return None


def _tiff_scale(pixels: Any) -> str:
    """The y/x pixel size an OME-XML ``Pixels`` element gives, with its units."""
    sizes = [
        (a, pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in "YX"
    ]
    return ", ".join(f"{a.lower()}={v} {u}" for a, v, u in sizes if v) or "none"


def _state(location: Any, kind: str, params: dict[str, Any], state_of: Any, read: Any) -> str:
    if kind == "complete":
        return "complete"
    state = state_of(location)
    lock = read(state.lock)
    holder = _holder(lock) if lock is not None else "gone"
    total = _level0_blocks(params)
    done = f"{state.n_done()} of {total if total else '?'} blocks of level 0 done"
    owner = f"pid {(lock or {}).get('pid') or '?'} on {(lock or {}).get('host') or '?'}"
    if holder == "live":
        return f"being written now by {owner}: {done}"
    if holder != "gone":
        from .._outputs.staleness import LOCK_STALE_AFTER

        return (
            f"unfinished: {done}; its lock, from {owner}, was {holder} by this machine's "
            "clock (clocks may differ): if that run is gone, a run with --resume "
            f"(resume=True) takes the lock over once it sees no heartbeat for "
            f"{LOCK_STALE_AFTER:g} s, and computes only the blocks left"
        )
    return (
        f"unfinished: {done}; resumable: run the same fuse command again with --resume "
        "(resume=True), which computes only the blocks left"
    )


def _holder(lock: dict[str, Any]) -> str:
    """Whether the lock's run is "live" or "gone", or else the age of the heartbeat of a lock
    written on another machine that looks stale or is dated ahead: judged at a glance,
    without the watch of the stale age a run makes (``info`` waited that long, 60 s,
    silently, on every lock a job on another node left: an adversarial run, 2026-12-06)."""
    from .._outputs.staleness import HEARTBEAT_EVERY, LOCK_STALE_AFTER, machine_id

    if lock.get("machine") == machine_id() and lock.get("held") is not None:
        return "live" if lock["held"] else "gone"  # this kernel shows a live holder's flock
    age = time.time() - float(lock.get("mtime", 0.0))
    if -HEARTBEAT_EVERY <= age < LOCK_STALE_AFTER:
        return "live"
    return f"last renewed {age:.0f} s ago" if age >= 0 else f"dated {-age:.0f} s ahead"


def _level0_blocks(params: dict[str, Any]) -> int | None:
    """Blocks of level 0 in the run these parameters describe (None if they do not say)."""
    import math

    from .._layout import Layout

    try:
        axes, shape = params["src_axes"], tuple(int(n) for n in params["src_shape"])
        by, bx = (int(n) for n in params["chunks"])
        layout = Layout(axes, shape, params.get("channels") == "rgb")
    except (KeyError, TypeError, ValueError):
        return None
    ny, nx = layout.shape_yx
    return math.prod(layout.lead_shape) * -(-ny // by) * -(-nx // bx)


def _images(location: Any) -> list[tuple[str, str]]:
    """The fused image's levels and scale, and the maps, from the output's metadata."""
    from .._outputs.write import ngff_metadata, open_output

    try:
        group = open_output(location, mode="r")
    except Exception:  # a run killed before it wrote its metadata
        return [("image", "not written yet")]
    lines = []
    for name in ("", "depth", "selectivity"):
        if name and name not in group:
            continue
        node = group[name] if name else group
        # an unfinished output's waits in its private attribute (published when complete)
        multiscales = ngff_metadata(node.attrs.asdict()).get("multiscales") or [{}]
        axes = [a["name"] for a in multiscales[0].get("axes", [])]
        units = {a["name"]: a["unit"] for a in multiscales[0].get("axes", []) if a.get("unit")}
        datasets = multiscales[0].get("datasets", [])
        if not datasets:
            continue
        base = node[datasets[0]["path"]]
        shapes = ", ".join(f"{d['path']}: {tuple(node[d['path']].shape)}" for d in datasets)
        if not name:
            lines.append(("image", f"{''.join(axes)} {tuple(base.shape)} {base.dtype}, chunks "
                                   f"{tuple(base.chunks)}"))  # fmt: skip
            lines.append(("levels", shapes))
            lines.append(("scale", _scale(axes, units, datasets[0])))
        else:
            # kept in the map's fstack_dask attributes (read at the top level, the depth
            # map's unit was never shown: a readers' run, 2026-12-06)
            unit = (node.attrs.get("fstack_dask") or {}).get("unit")
            unit = unit or ("dB" if name == "selectivity" else None)
            lines.append((name, f"{base.dtype}{f', {unit}' if unit else ''}, {len(datasets)} "
                                "level(s)"))  # fmt: skip
    return lines


def _scale(axes: list[str], units: dict[str, str], dataset: dict[str, Any]) -> str:
    scale = next((t.get("scale") for t in dataset.get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)  # fmt: skip
    if not scale:
        return "unknown"
    return ", ".join(
        f"{a}={v:g}" + (f" {units[a]}" if a in units else "")
        for a, v in zip(axes, scale, strict=False)
        if a in "yx"
    )


def _output_parameters(params: dict[str, Any]) -> str:
    if "nhsize" not in params:
        return "unknown"
    text = _parameters(params)
    maps = [m for m in ("depth", "selectivity") if params.get(f"{m}_map")]
    chunks = params.get("chunks") or ["?", "?"]
    return (
        f"{text}, channels {params.get('channels', '?')}, chunks {chunks[0]} x {chunks[1]}, "
        f"maps {', '.join(maps) if maps else 'none'}"
    )


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
    if not exchange.ENABLED:
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
