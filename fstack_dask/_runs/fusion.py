"""What a fusion run will compute, decided from the source's metadata alone.

:func:`plan_fusion` opens the source, checks every parameter, chooses the blocks and builds
the output's description; it reads no pixel data and writes nothing. ``fuse_zarr`` runs
it before touching ``dst``, and ``fstack-dask info`` prints it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._algorithm.auto import (
    AUTO,
    AutoParameters,
    auto_parameters,
    check_nhsize_or_auto,
    check_sth_or_auto,
)
from .._algorithm.block import block_memory, haloed_shape, wide_int
from .._algorithm.device import check_device
from .._layout import Layout
from .._outputs.ownership import METHOD
from .._outputs.write import OutputSpec, output_spec
from .._params import (
    check_alpha,
    check_chunks,
    check_focus,
    check_memory,
    overlap_depth,
    resolve_channels,
)
from .._sources.open import open_source, portable
from .._sources.source import Source
from .._version import FORMAT, NUMERICS, __version__
from .device import run_engine
from .plan import make_plan
from .reading import auto_block, read_by, reading

__all__ = ["Fusion", "auto_kept", "plan_fusion"]

MIN_BLOCKS_PER_IMAGE = 16  # so that a many-core node has work on a mid-size image


@dataclass(frozen=True, eq=False)
class Fusion:
    """A planned fusion: the source, the parameters, the blocks and the output."""

    source: Source
    layout: Layout
    params: dict[str, Any]
    kernel: dict[str, Any]
    block: tuple[int, int]
    halo: int
    maps: tuple[str, ...]
    spec: OutputSpec | None  # (None while the blocks are chosen, before the output is)
    memory_per_task: int
    unit: dict[str, int]
    unit_bytes: int
    depth_affine: tuple[float, float] | None
    recipe: tuple[Any, ...]  # how a worker process opens the source again
    # Undefined S filled with each image's smallest S, as the reference does (None: found
    # by the run, see ``run.fill_undefined``); {}: taken as -inf, the rule of outputs begun
    # before 2026-12-05, which a resume of one keeps.
    fills: dict[tuple[int, ...], float] | None = None
    auto_note: str | None = None  # what "auto" chose, for the run to tell once dst is accepted
    nhsize_auto: bool = False  # nhsize chosen by "auto", from a sample of the stack

    def task_bytes(self, block: tuple[int, int]) -> int:
        """Bytes one task holds for a block of that size (with its halo)."""
        lay = self.layout
        shape = haloed_shape(block, self.halo, lay.shape_yx, self.kernel.get("engine"))
        return block_memory(shape, lay.n_planes, lay.n_channels, self.source.dtype.itemsize,
                            lay.rgb, nhsize=self.kernel["nhsize"],
                            engine=self.kernel.get("engine"),
                            float16=self.source.dtype == np.float16,  # widened to float32
                            wide_int=wide_int(self.source.dtype))  # fmt: skip

    def plan(self, workers: int, processes: int = 1):
        """The block order and the unit cache's budget for ``workers`` tasks per process
        and ``processes`` processes."""
        return make_plan(
            self.layout, unit_shape=self.unit, halo=self.halo, workers=workers,
            memory_per_task=self.memory_per_task, task_bytes=self.task_bytes,
            unit_bytes=self.unit_bytes, block=self.block, processes=processes,
        )  # fmt: skip


def plan_fusion(
    src: Any,
    *,
    axes: str | None = None,
    level: int = 0,
    channels: str = "auto",
    nhsize: int | str = 9,  # or "auto"
    focus: Any = None,
    alpha: float = 0.2,
    sth: float | str = 13,  # or "auto"
    depth_map: bool = False,
    selectivity_map: bool = False,
    chunks: Any = None,
    memory_per_task: Any = None,
    levels: int | None = None,
    storage_options: dict[str, Any] | None = None,
    device: str = "cpu",
    output: str = "ome-zarr",
    quiet_auto: bool = False,
    before_sample: Any = None,
) -> Fusion:
    """Open ``src``, check every parameter, plan the blocks; see ``fuse_zarr`` for them all.

    ``quiet_auto``: what ``"auto"`` chose is kept in ``auto_note``, not logged (a run tells
    it once dst is accepted: it came before dst's refusal). ``before_sample(source)``, if
    given, is called before ``"auto"`` reads its sample (a run refuses its dst there).

    ``device`` is only checked here (``"cpu"`` or ``"cuda"``); whether a GPU is there is
    checked where the tasks will run, once the scheduler is known (``_algorithm.device``).
    ``output="ome-tiff"`` plans the working store of a TIFF dst: its levels (by default) go
    on until the image fits one TIFF tile, and what a TIFF cannot hold is refused.
    """
    from .._params import DEFAULT_MEMORY_PER_TASK

    device = check_device(device)
    memory = check_memory(DEFAULT_MEMORY_PER_TASK if memory_per_task is None else memory_per_task)
    chunks = check_chunks(chunks)
    source = open_source(src, axes=axes, level=level, storage_options=storage_options)
    try:
        nhsize = check_nhsize_or_auto(nhsize)
        n_planes = source.size("z")
        focus_given = focus is not None
        focus = check_focus(focus, n_planes)
        alpha, sth = check_alpha(alpha), check_sth_or_auto(sth)
        rgb = _rgb(channels, source)
        layout = Layout(source.axes, source.shape, rgb)
        if axes is None:  # axes stated are the user's word: warned about in _tell, as fuse does
            _check_plausible(layout, source)
        _tell(source, layout, axes_given=axes is not None)
        chosen = None
        nhsize_auto = nhsize == AUTO
        if AUTO in (nhsize, sth):  # from a fixed sample of tiles, before anything is planned
            if before_sample is not None:
                before_sample(source)
            kept, key = _KEPT.get(), (str(src), axes, level, repr(storage_options),
                                      layout.rgb, focus.tobytes(), nhsize, sth)  # fmt: skip
            chosen = None if kept is None or not isinstance(src, str) else kept.get(key)
            if chosen is None:
                chosen = _auto(source, layout, focus, nhsize, sth, quiet_auto)
            if kept is not None and isinstance(src, str):
                kept[key] = chosen
            nhsize, sth = chosen.nhsize, chosen.sth
        halo = overlap_depth(nhsize)
        maps = tuple(n for n, on in (("depth", depth_map), ("selectivity", selectivity_map)) if on)
        depth_unit, depth_affine = _depth_units(source, focus_given)
        kernel = {
            "nhsize": nhsize, "focus": focus, "alpha": alpha, "sth": sth, "rgb": rgb,
            "with_depth": "depth" in maps, "with_selectivity": "selectivity" in maps,
        }  # fmt: skip
        # One engine for the whole run, chosen here (every worker uses it, a resume compares it):
        # the engines differ in the last bits of exp/log/tanh.
        kernel["engine"] = run_engine(device)
        recipe = (_portable(src, source, storage_options), axes, level, storage_options)
        fusion = reading(
            Fusion(
                source, layout, {}, kernel, (1, 1), halo, maps, None, memory, {}, 0,
                depth_affine, recipe,
            ),
            by_inner_chunks=False,
        )  # fmt: skip
        if chunks is None:
            chunks = auto_block(fusion, MIN_BLOCKS_PER_IMAGE // 2)
        # how a run on as many workers would read (each run decides for its own: read_by)
        fusion = read_by(replace(fusion, block=tuple(chunks)), MIN_BLOCKS_PER_IMAGE // 2)
        _check_unit_fits(fusion)
        _warn_over_budget(fusion)
        if output == "ome-tiff":
            from .._outputs.tiff import check_tiff_output, tiff_levels

            check_tiff_output(source.dtype, layout.image_axes, source.description)
            if levels is None:
                levels = tiff_levels(layout.shape_yx)
        levels = _check_levels(levels, layout.shape_yx, chunks)
        _warn_many_blocks(layout, chunks)
        _warn_many_files(layout, chunks, len(maps), levels)
        params = {
            "version": __version__,
            "numerics": NUMERICS,  # a resume by a version computing other bits is refused
            "records_format": FORMAT,  # and one by a version older than the output's records
            "method": METHOD,
            "src": source.location.url if source.location is not None else source.description,
            "src_axes": source.axes,
            "src_shape": list(source.shape),
            "level": int(source.level),
            "nhsize": nhsize,
            "focus": focus.tolist(),
            "alpha": alpha,
            "sth": sth,
            "channels": "rgb" if rgb else "independent",
            "chunks": [int(chunks[0]), int(chunks[1])],
            "depth_map": bool(depth_map),
            "selectivity_map": bool(selectivity_map),
            "depth_unit": depth_unit,
            "levels": levels,
            "auto": None if chosen is None else chosen.as_dict(),
            "device": device,  # GPU and CPU may differ in the last place: resume on the same
            "engine": kernel["engine"],
            "complete": False,
        }
        params["undefined_selectivity"] = "image minimum"  # absent: -inf (earlier outputs)
        if output == "ome-tiff":
            params["output"] = output
        spec = output_spec(
            source, layout, block=chunks, dtype=source.dtype.newbyteorder("="), maps=maps,
            provenance=params, depth_unit=depth_unit, levels=levels,
        )  # fmt: skip
        return Fusion(
            fusion.source, layout, params, kernel, tuple(chunks), halo, maps, spec, memory,
            fusion.unit, fusion.unit_bytes, depth_affine, fusion.recipe,
            auto_note=None if chosen is None else chosen.summary(), nhsize_auto=nhsize_auto,
        )  # fmt: skip

    except BaseException:
        source.close()  # its files, not left open by a kept traceback
        raise


def _portable(src: Any, source: Source, storage_options: Any) -> Any:
    """``src`` as the workers open it (:func:`~.._sources.open.portable`): a glob or list of
    plane files (no location of its own) as the files listed here."""
    planes = source.files if source.location is None else ()
    return portable(src, storage_options, planes=planes)


def with_block(fusion: Fusion, block: tuple[int, int], levels: int) -> Fusion:
    """The same fusion with another block size and number of levels (a resume uses the
    interrupted run's when the caller left them automatic)."""
    params = {**fusion.params, "chunks": [int(block[0]), int(block[1])], "levels": int(levels)}
    fusion = read_by(replace(fusion, block=tuple(block)), MIN_BLOCKS_PER_IMAGE // 2)
    spec = output_spec(
        fusion.source, fusion.layout, block=block, dtype=fusion.spec.array("0").dtype,
        maps=fusion.maps, provenance=params, depth_unit=params["depth_unit"],
        levels=params["levels"],
    )  # fmt: skip
    return replace(fusion, params=params, block=tuple(block), spec=spec)


MANY_FILES = 1_000_000
MANY_BLOCKS = 1_000_000
BLOCK_OVERHEAD_S = 0.005  # at least, a block (chunks=16: 14-24 ms, halo and pixels included)


def _check_unit_fits(fusion: Fusion) -> None:
    """A Zarr source's read unit (a chunk, or a shard's chunk, with every plane) is decoded
    whole: one larger than ``memory_per_task`` cannot be held within it (a chunk of 93 GiB
    failed at run time with a MemoryError, exit 1; per-plane chunks of 2048^2 held 482 MiB for
    a budget of 16: adversarial runs). A dask array's chunk is computed whole by each read
    too (one of 21 x 4096^2 held 2.9 GiB at a budget of 128 MiB). Other readers decode
    regions, or cache whole planes within a budget of their own."""
    source = fusion.source
    if source.kind not in ("zarr", "ome-zarr") and not hasattr(source.array, "dask_array"):
        return
    # a chunk spanning several time points (or channels fused apart) is decoded with them all
    lead = math.prod(n for a, n in zip(source.axes, source.unit_shape, strict=True)
                     if a not in "zyxc" or (a == "c" and not fusion.layout.rgb))  # fmt: skip
    padding = _padding(source)
    decoded = math.ceil(fusion.unit_bytes * lead * padding)
    if decoded <= fusion.memory_per_task:
        return
    from dask.utils import format_bytes

    mib = -(-decoded // 2**20)
    other = (
        "or give fuse_zarr the files the array reads (a folder or glob of planes, a TIFF, a "
        "Zarr path), which it reads by region"
        if hasattr(source.array, "dask_array")
        else "or rechunk the source"
    )
    size = f"{fusion.unit['y']} x {fusion.unit['x']} px"
    if padding > 1:
        size += ", stored and decoded at a larger size than the image's"
    raise ValueError(
        f"the chunks of {source.description} ({size}, with "
        f"every plane {format_bytes(decoded)} decoded) are larger than memory_per_task "
        f"({format_bytes(fusion.memory_per_task)}) lets a task hold; give memory_per_task="
        f"{mib}MiB or more, {other}"
    )


def _padding(source: Source) -> float:
    """How much more than its share of the image a Zarr read unit decodes: zarr decodes
    whole chunks (a sharded array's inner chunks) at their stated size, so a chunk stated
    larger than the array is decoded at that size (a chunk of 6 x 8192^2 over a 64^2 image
    held 950 MB, 5 times the budget: an adversarial run, 2026-12-05), and a unit decodes the
    chunks that cover it. A shard larger than the image decodes only the chunks inside it."""
    import zarr

    array, read = source.array, source.read_shape
    if not isinstance(array, zarr.Array) or len(array.chunks) != len(read):
        return 1.0  # a dask array's chunks are computed at their own size
    return math.prod(
        math.ceil(r / int(c)) * int(c) / r for c, r in zip(array.chunks, read, strict=True)
    )


def _warn_over_budget(fusion: Fusion) -> None:
    """Chunks given larger than ``memory_per_task`` holds: said by the run, not only by
    ``info`` (a run went on in silence with 7 times the memory asked for)."""
    from dask.utils import format_bytes

    from .._errors import warn

    task = fusion.task_bytes(fusion.block)
    if task > fusion.memory_per_task:
        warn(
            f"chunks={tuple(fusion.block)} need about {format_bytes(task)} per task, more than "
            f"memory_per_task ({format_bytes(fusion.memory_per_task)}); choose smaller chunks "
            "or a larger memory_per_task"
        )


def _warn_many_blocks(layout: Layout, block: tuple[int, int]) -> None:
    """Chunks so small that each block's own cost (scheduling, its halo, its files) outweighs
    its pixels: ``--chunks 1`` planned 10^10 blocks in silence, months of overhead (a review,
    2026-12-06)."""
    import math

    from .._errors import warn

    (ny, nx), (by, bx) = layout.shape_yx, block
    blocks = math.prod(layout.lead_shape) * math.ceil(ny / by) * math.ceil(nx / bx)
    if blocks > MANY_BLOCKS:
        hours = blocks * BLOCK_OVERHEAD_S / 3600
        warn(
            f"chunks={block} make {blocks:,} blocks, each costing {BLOCK_OVERHEAD_S * 1000:g} "
            f"ms or more beyond its pixels (scheduling, its halo, its files): {hours:,.1f} h "
            "or more of overhead alone; consider larger chunks"
        )


def _warn_many_files(layout: Layout, block: tuple[int, int], n_maps: int, levels: int) -> None:
    """Chunks so small that the output has millions of files strain every filesystem."""
    import math

    from .._errors import warn

    (ny, nx), (by, bx) = layout.shape_yx, block
    per_level = math.prod(layout.lead_shape) * math.ceil(ny / by) * math.ceil(nx / bx)
    files = int(per_level * (1 + n_maps) * (4 / 3 if levels else 1))
    if files > MANY_FILES:
        message = (
            f"chunks={block} make the output about {files:,} chunk files; filesystems and "
            "object stores slow down with that many: consider larger chunks"
        )
        warn(message)


def _check_levels(levels: Any, shape_yx: tuple[int, int], block: tuple[int, int]) -> int:
    """Pyramid levels beyond 0: ``None`` until the image fits in one chunk, else as given."""
    from .._outputs.pyramid import n_levels

    if levels is None:
        return n_levels(shape_yx, block)
    # NumPy's integers too (np.int64(2) was refused), not bools
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral):  # (True is no int)
        raise TypeError(
            f"levels must be None (automatic) or an integer >= 0, got {levels!r} "
            f"({type(levels).__name__})"
        )
    if levels < 0:
        raise ValueError(f"levels must be None (automatic) or an integer >= 0, got {levels!r}")
    levels = int(levels)
    # level N of the last useful one is 1 x 1; beyond, copies of it (34 of them for
    # levels=40 on 64 px, with translations far outside the image: adversarial runs)
    most = max(1, math.ceil(math.log2(max(shape_yx)))) if max(shape_yx) > 1 else 0
    if levels > most:
        raise ValueError(
            f"levels must be at most {most} for a {shape_yx[0]} x {shape_yx[1]} image (each "
            f"halves it; level {most} is 1 px wide), got {levels}"
        )
    return levels


def _rgb(channels: Any, source: Source) -> bool:
    rgb = resolve_channels(channels, source.axes, source.shape, source.dtype)
    if channels == "auto" and source.separate_channels:
        return False  # 3 uint8 channels that the format says are not colour (fluorescence)
    if channels == "auto" and source.rgb and "c" in source.axes and source.size("c") == 3:
        return True  # the format says these are colour samples
    return rgb


#: "auto"'s choices while :func:`auto_kept` is entered, by the source (as spelled) and what they
#: were chosen from: the CLI's cluster path plans before it connects (to refuse bad input
#: first), then fuse_zarr plans again, and read a remote sample twice
_KEPT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("auto_kept", default=None)


@contextlib.contextmanager
def auto_kept() -> Iterator[None]:
    """Keep what ``"auto"`` chooses for a source while inside, for its next planning."""
    token = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(token)


def _auto(source: Source, layout: Layout, focus, nhsize, sth, quiet: bool) -> AutoParameters:
    """``"auto"`` parameters from tiles of the first image (batch index 0), every channel
    pooled when they are fused independently."""
    import numpy as np

    from .._sources.fetch import BlockRegion, fetch_block

    batch = {a: 0 for a in layout.lead_axes if a != "c"}
    channels = list(range(layout.size("c"))) if "c" in layout.lead_axes else [None]

    def read_tile(y0: int, y1: int, x0: int, x1: int):
        tiles = []
        for c in channels:
            lead = {**batch, **({"c": c} if c is not None else {})}
            region = BlockRegion(tuple((a, lead[a]) for a in layout.lead_axes), (y0, y1),
                                 (x0, x1), layout.rgb)  # fmt: skip
            tiles.append(fetch_block(source, region, None))
        return tiles[0] if channels == [None] else np.stack(tiles)

    n_channels = None if channels == [None] else len(channels)
    return auto_parameters(
        read_tile, shape_yx=layout.shape_yx, n_planes=layout.n_planes, dtype=source.dtype,
        rgb=layout.rgb, n_channels=n_channels, focus=focus, nhsize=nhsize, sth=sth, quiet=quiet,
    )  # fmt: skip


def _check_plausible(layout: Layout, source: Source) -> None:
    """Refuse axes not given that make a stack with more focus planes than pixels per plane
    (nearly always a transposed array); ``axes`` given fuses it, with a warning."""
    ny, nx = layout.shape_yx
    if ny * nx < layout.n_planes:
        raise ValueError(
            f"axes {source.axes!r} make {source.description} a stack of {layout.n_planes} "
            f"focus planes of {ny} x {nx} pixels, more planes than pixels per plane; check "
            f"the axes (z is the focus axis, y and x the image); to fuse it as it is, pass "
            f"axes= with them, {source.axes!r}"
        )


MIN_FIT_PLANES = 5  # the reference's 3-point fit samples planes two apart


def _tell(source: Source, layout: Layout, *, axes_given: bool) -> None:
    """Warn where the result may not be what was meant (``info`` shows these too).

    Here, where the run is planned, and not in the reader: worker processes open the
    source again, and would say it all once more. (The source's notes, the files it reads,
    are logged when the fusion starts: ``passes.fuse_blocks``.)
    """
    from .._errors import warn

    for message in source.warnings:
        warn(message)
    planes, (ny, nx) = layout.n_planes, layout.shape_yx
    if planes == 1:
        warn(
            f"{source.description} has 1 focus plane: the output is that plane unchanged; check "
            "the source (a focus stack has several planes)"
        )
    elif planes < MIN_FIT_PLANES:
        warn(
            f"{source.description} has {planes} focus planes: with fewer than {MIN_FIT_PLANES} "
            "the selectivity fit is not defined, so every pixel takes the sharpest weighting "
            "towards its plane of highest local contrast (docs/algorithm.md, "
            "'Differences from the reference'); check that the source holds the whole stack"
        )
    if axes_given and planes > min(ny, nx):
        # Legitimate stacks have far fewer planes than pixels along either side; more planes
        # than that is nearly always a focus axis given to the wrong dimension.
        # the shortest of the three as z, the other two as y and x in their order
        places = sorted(source.axes.index(a) for a in "zyx")
        shortest = min(places, key=lambda i: source.shape[i])
        image = iter("yx")
        letters = list(source.axes)
        for place in places:
            letters[place] = "z" if place == shortest else next(image)
        swap = "".join(letters)
        side = "rows" if ny < nx else "columns"
        # (not "the shortest axis as the focus": for a real 2 x 2 crop of 21 planes that is
        # wrong, the review of a0d8209)
        warn(
            f"axes {source.axes!r} make {source.description} a stack of {planes} focus planes "
            f"of {ny} x {nx} pixels, more planes than the image has {side}: fused as given, "
            f"right for a small crop of a deep stack; if the array is transposed instead, give "
            f"the axes that name its focus axis, e.g. {swap!r} for its axis of length "
            f"{source.shape[shortest]}"
        )


def _depth_units(
    source: Source, focus_given: bool
) -> tuple[str | None, tuple[float, float] | None]:
    """The depth map's unit, and the plane-to-position map when the source has a z scale.

    With ``focus`` given the depth is in its units, which fstack_dask cannot name (it was
    labelled with the source's z unit). A z scale whose positions float32 cannot hold apart
    (``1e38``: inf; ``1e-300``: all 0; both silently, an adversarial run) gives plane
    numbers instead, with a warning."""
    unit = source.units.get("z")
    if focus_given:
        return None, None
    if "z" not in source.scale:
        return None, None
    offset, step = float(source.translation.get("z", 0.0)), float(source.scale["z"])
    with np.errstate(all="ignore"):
        depths = (offset + step * np.arange(source.size("z"), dtype=np.float64)).astype(np.float32)
    if np.isfinite(depths).all() and (len(depths) < 2 or np.unique(depths).size == len(depths)):
        return unit, (offset, step)
    from .._errors import warn

    warn(
        f"{source.description}: its z scale {step:g} (translation {offset:g}) gives positions "
        "that float32 cannot hold apart; the depth map is in plane numbers instead"
    )
    return None, None
