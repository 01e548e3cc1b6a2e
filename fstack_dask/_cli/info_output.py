"""What ``fstack-dask info`` says of an output fstack_dask wrote (an OME-Zarr store or a
pyramidal OME-TIFF, finished or not): its image and levels, scale, maps, what it was fused
from and with which parameters, and whether it is done, under way or can be resumed.
"""

from __future__ import annotations

import time
from typing import Any

from .args import shown

__all__ = ["describe_output"]


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


def put_aside_output(src: str, storage_options: Any) -> list[tuple[str, str]] | None:
    """``info``'s lines for a missing dst whose previous output an overwrite cut short between
    its two renames (no RENAME_EXCHANGE: NFS) left hidden beside it: info said "src ... does
    not exist", as if the output were lost, where the next run into dst puts it back."""
    from .._locations import resolve
    from .._outputs.leftovers import put_aside

    try:
        dst = resolve(src, name="src", storage_options=storage_options)
        found = put_aside(dst) if dst.is_local else None
    except (ValueError, TypeError, OSError):
        return None
    if found is None:
        return None
    old, staged = found
    lines = describe_output(old, "complete")
    lines[0] = ("output", f"{shown(dst.url)} (missing: an overwrite cut short while "
                          f"swapping left the previous output, whole, in {shown(old.url)}; the "
                          "next fuse run into dst puts it back, and --resume finishes the "
                          "overwrite)")  # fmt: skip
    for folder in staged:
        state = dict(describe_output(folder, "unfinished"))["state"]
        lines.append(("overwrite", f"under way in {shown(folder.url)}: {state}"))
    return lines


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
    params = _replacing_params(location, kind) or params
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
        # (no watch of a stale-looking lock: info of it waited 60 s, silently)
        staged = staged_run(location, locked_too=True) if kind == "complete" else None
    except OSError:  # a folder this user may enter, not list (a colleague's home, 711): info
        return []  # of the output itself failed, "may not list the folder"
    if staged is None:
        return []
    moving = _moving_in(location, staged)
    if moving is not None:
        return [("overwrite", moving)]
    state = dict(describe_output(staged, "unfinished"))["state"]
    return [("overwrite", f"under way in {shown(staged.url)}: {state}")]


def _moving_in(location: Any, staged: Any) -> str | None:
    """The line for a complete output that an overwrite cut short was replacing entry by
    entry by the ``staged`` output (:mod:`.._outputs.inplace`), before its first entry moved
    or once its last had: info said "12 of 12 blocks done; resumable: ... computes only the
    blocks left" of a new output whose blocks were all done, or already all in dst."""
    import os

    from .._outputs.inplace import replacing
    from .._outputs.ownership import STATE_DIR, recorded_entries

    if replacing(location) != staged:
        return None
    left = [e for e in sorted((recorded_entries(staged) or set()) - {STATE_DIR})
            if os.path.lexists(staged.child(e).path)]  # fmt: skip
    now = (
        "the previous output, whole: none of the new one's entries has moved in yet"
        if left
        else "the new output, whole: every entry has moved in, its run's state is left"
    )
    return (
        f"cut short while replacing dst entry by entry (its folder cannot be renamed) by the "
        f"output in {shown(staged.url)}; dst is {now}; the same fuse command with --resume "
        "(resume=True) finishes the replacement"
    )


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
        ("output", shown(os.path.abspath(src))),  # (as an OME-Zarr output's is shown)
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
                lines += _tiff_shift(pixels)
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

    from .._outputs.tiff import is_claim

    if not src.lower().endswith((".tif", ".tiff")):
        return None
    work = _unfinished_work(src)
    if work is None:  # (a complete store's TIFF was in place: it is a leftover)
        return None
    if os.path.lexists(src) and not is_claim(src, work.path):  # (a run on exFAT stopped at
        return None  # the move over its claim: "not a readable TIFF file")
    lines = describe_output(work, "unfinished")
    lines[0] = ("output", f"{shown(src)} (not written yet; its run works in {shown(work.url)})")
    lines[1] = ("format", "fstack_dask output, unfinished: a pyramidal OME-TIFF once complete")
    previous = _previous_tiff(src, work)
    if previous is not None:  # (info said "not written yet" of a dst whose TIFF was hidden)
        lines[0] = ("output", f"{shown(src)} (missing: an overwrite cut short between its two "
                              f"moves left the previous TIFF, whole, in {shown(previous)}; the "
                              "next fuse run into dst puts it back, and --resume finishes the "
                              "overwrite)")  # fmt: skip
    return lines


def _previous_tiff(src: str, work: Any) -> str | None:
    """The previous TIFF an overwrite without an exchange (exFAT, NFS) cut short left in the
    working store ``work``, where the next run into ``src`` puts it back or removes it."""
    from .._outputs.ownership import provenance
    from .._outputs.tiff import previous_fate, previous_left

    new_id = (provenance(work) or {}).get("output_id")
    return previous_left(work.path) if previous_fate(work.path, src, new_id) else None


def _overwrite_under_way(src: str) -> list[tuple[str, str]]:
    """The line for an ``--overwrite`` of our TIFF interrupted in its working store: the
    TIFF is still the old one, and ``--resume`` finishes the new."""
    work = _unfinished_work(src)
    if work is None:
        return []
    state = dict(describe_output(work, "unfinished"))["state"]
    lines = [("overwrite", f"under way in {shown(work.url)}: {state}")]
    previous = _previous_tiff(src, work)
    if previous is not None:  # dst is the new TIFF already
        lines.append(
            (
                "previous",
                f"{shown(previous)}, the TIFF this overwrite replaced, left by "
                "a run cut short: the next fuse run into dst removes it",
            )
        )
    return lines


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
    # (no size: a pixel, said as the OME-Zarr output's scale of 1 without a unit is said)
    return ", ".join(f"{a.lower()}={v} {u}" for a, v, u in sizes if v) or "y=1, x=1 (no unit)"


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
    record = state.record()
    if record is None:  # (a removal cut short between the state folder and zarr.json)
        return (
            f"unfinished: {done}; not resumable: it holds no run record (a removal of it was "
            "cut short); start over with --overwrite (overwrite=True)"
        )
    swapped = _being_replaced(location, record)
    if swapped is not None:
        return swapped
    why = _not_resumable(record.get("params") or params)  # what --resume reads
    if why is not None:  # (it said "resumable", and --resume refused it)
        return (
            f"unfinished: {done}; not resumable by this version: {why}; resume it with that "
            "version, or start over with --overwrite (overwrite=True)"
        )
    return (
        f"unfinished: {done}; resumable: run the same fuse command again with --resume "
        "(resume=True), which computes only the blocks left"
    )


def _being_replaced(location: Any, record: dict[str, Any]) -> str | None:
    """What an overwrite cut short while it replaced ``location`` entry by entry left (it
    said "0 of 9 blocks of level 0 done; resumable ... computes only the blocks left", of a
    new output whose blocks were all done, beside it; and so where that one was gone)."""
    from .._outputs.inplace import SWAPPING, abandoned, replacing

    new = replacing(location) if SWAPPING in record else None
    if new is None:
        gone = abandoned(location) if SWAPPING in record else None
        return None if gone is None else f"unfinished, not resumable: {gone}"
    return (
        f"unfinished: being replaced by a new output entry by entry (an overwrite cut short; "
        f"its folder cannot be renamed), what has not moved yet in {new.url!r}; the next run "
        "into it (the same fuse command with --resume, resume=True) finishes the replacement; "
        "the lines below are the new output's"
    )


def _replacing_params(location: Any, kind: str) -> dict[str, Any] | None:
    """The new output's parameters where an overwrite cut short was replacing ``location``
    entry by entry (``info`` showed the old output's, its state line the new one's)."""
    from .._outputs.inplace import replacing
    from .._outputs.ownership import provenance, run_record

    new = replacing(location) if kind == "unfinished" and location.is_local else None
    if new is None:
        return None
    return provenance(new) or (run_record(new) or {}).get("params") or None


def _not_resumable(params: dict[str, Any]) -> str | None:
    """Why a resume by this version refuses the unfinished output (as ``_runs.resume`` does:
    a newer version's records, or other numerics), or None."""
    from .._outputs.ownership import newer_format
    from .._version import NUMERICS

    numerics = params.get("numerics", NUMERICS)
    if numerics != NUMERICS:
        return (
            f"it was begun by fstack_dask {params.get('version', '?')}, which computes other "
            f"bits (numerics {numerics!r}, this version's {NUMERICS!r})"
        )
    return newer_format(params)


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
        # a run killed while it created its arrays leaves levels its metadata lists unwritten
        # (info failed "KeyError: '1'" of such a dst, or of the overwrite staged beside it)
        levels = [_array_or_none(node, d["path"]) for d in datasets]
        shapes = ", ".join(f"{d['path']}: {tuple(a.shape) if a is not None else 'not written yet'}"
                           for d, a in zip(datasets, levels, strict=True))  # fmt: skip
        base = levels[0]
        if base is None:
            lines.append((name or "image", "not written yet"))
            continue
        if not name:
            lines.append(("image", f"{''.join(axes)} {tuple(base.shape)} {base.dtype}, chunks "
                                   f"{tuple(base.chunks)}"))  # fmt: skip
            lines.append(("levels", shapes))
            lines.append(("scale", _scale(axes, units, datasets[0])))
            lines += _shift(axes, units, datasets[0])
        else:
            # kept in the map's fstack_dask attributes (read at the top level, the depth
            # map's unit was never shown: a readers' run, 2026-12-06)
            unit = (node.attrs.get("fstack_dask") or {}).get("unit")
            unit = unit or ("dB" if name == "selectivity" else None)
            lines.append((name, f"{base.dtype}{f', {unit}' if unit else ''}, {len(datasets)} "
                                "level(s)"))  # fmt: skip
    return lines


def _array_or_none(node: Any, path: str) -> Any:
    """The array at ``path`` in ``node``, or None where it is not there (not written yet)."""
    try:
        return node[path]
    except KeyError:
        return None


def _scale(axes: list[str], units: dict[str, str], dataset: dict[str, Any]) -> str:
    scale = next((t.get("scale") for t in dataset.get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)  # fmt: skip
    if not scale:
        return "unknown"
    said = ", ".join(
        f"{a}={v:g}" + (f" {units[a]}" if a in units else "")
        for a, v in zip(axes, scale, strict=False)
        if a in "yx"
    )
    return said if any(a in units for a in "yx") else f"{said} (no unit)"


def _shift(axes: list[str], units: dict[str, str], dataset: dict[str, Any]) -> list:
    """The full resolution's y/x translation (its first pixel's place: a source's stage or
    scene position, carried), where not 0: ``info`` of the output did not show it."""
    shift = next((t.get("translation") for t in dataset.get("coordinateTransformations", [])
                  if t.get("type") == "translation"), None)  # fmt: skip
    said = [
        f"{a}={v:g}" + (f" {units[a]}" if a in units else "")
        for a, v in zip(axes, shift or (), strict=False)
        if a in "yx" and v
    ]
    return [("translation", ", ".join(said))] if said else []


def _tiff_shift(pixels: Any) -> list:
    """The first plane's OME ``PositionY``/``PositionX`` (the translation), where stated."""
    plane = next((e for e in pixels if e.tag.endswith("Plane")), None)
    if plane is None:
        return []
    said = [
        f"{a.lower()}={float(plane.get(f'Position{a}')):g} {plane.get(f'Position{a}Unit', 'µm')}"
        for a in "YX"
        if plane.get(f"Position{a}") is not None
    ]
    return [("translation", ", ".join(said))] if said else []


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
