"""Whether the source changed under a run: what a run records of its source (its identity,
the digests of its files' list), its data files compared one by one by their size,
modification and change time and inode, and the finished blocks that read a file that
changed read again, their samples' digest compared with the one their done-marker recorded
(:mod:`.resume` decides from that whether a resume may go on). Where the files cannot show
every change (:func:`fingerprinted`), every finished block is read again.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import math
import os
from typing import Any

import numpy as np

from .._errors import SourceChangedError, SourceReadError
from .._outputs.fingerprint import (
    changed_files,
    files_digest,
    identity_differences,
    input_unchanged,
    source_files,
    versions_digest,
)
from .._outputs.state import OutputState
from .._sources.common import without_stamps
from .._sources.fetch import fetch_block, units_of
from .._sources.open import Reopen
from .._sources.source import Source
from .._sources.unit_cache import UnitCache
from .fusion import Fusion
from .plan import Plan

__all__ = ["check_source_after_run", "check_source_files", "fingerprinted", "source_identity"]

log = logging.getLogger(__name__)


def check_source_files(
    state: OutputState, what: str, source: Source, fusion: Fusion, files, *, threads: int
) -> None:
    """Refuse a resume when the data a finished block read has changed (see the module
    docstring); reads the source again only for the finished blocks of changed files, on
    ``threads`` threads (the run's own workers: one for the synchronous scheduler)."""
    plan = fusion.plan(1)[0]
    old = state.files()
    if old is None:
        return
    changed = changed_files(old, files)
    gone = sorted(set(old["names"].tolist()) - set(files["names"].tolist()))
    if gone:  # (its blocks not yet done read the fill value: an image of it)
        raise ValueError(
            f"cannot resume {what}: the source file {gone[0]!r} "
            + (f"(and {len(gone) - 1} more) " if len(gone) > 1 else "")
            + "was removed since the run began (its blocks would read the fill value); put it "
            "back, or start over with overwrite=True and resume=False"
        )
    shown = fingerprinted(source, files)
    if not changed and shown:
        return
    done = {n for n in state.done() if not n.startswith("L")}
    suspects: dict[str, str] = {}  # finished block -> a changed file it read
    if not shown:  # no file can say what changed: every finished block is read again
        suspects = dict.fromkeys(done, "")
        log.info(
            "the source's files cannot show every change of its data (%s): reading the %d "
            "finished block(s) again", _unshown(source), len(done),
        )  # fmt: skip
    for block, name in _blocks_reading(source, plan, changed, done).items():
        suspects.setdefault(block, name)
    if suspects:
        log.debug(
            "source files changed since the run began (%s): reading the %d finished block(s) "
            "that read them again", _few(changed), len(suspects),
        )  # fmt: skip
    budget = _budget(fusion, plan, threads)
    for block, name in _read_otherwise(
        state, source, plan, suspects, first=True, threads=threads, cache_bytes=budget
    ):
        because = f"the source file {name!r}" if name else "the source's data"
        raise ValueError(
            f"cannot resume {what}: {because} changed since the run began, and finished "
            f"block {block} was computed from its old content; start over with "
            "overwrite=True and resume=False"
        )
    log.info(
        "source %s since the run began; the blocks already done read the same samples as "
        "before, and only blocks not yet done read the rest",
        f"files changed ({_few(changed)})" if changed else "unchanged, as far as its data shows",
    )  # fmt: skip


def check_source_after_run(src, fusion: Fusion, state: OutputState, plan: Plan, identity, files,
                           *, threads: int = 1):  # fmt: skip
    """The source's identity to keep with the output, once every block is fused: raises
    :class:`SourceChangedError` where another program changed the source while this run
    read it (a microscope still writing it, a copy or a removal under way), rather than
    mark complete an output fused from two versions of it, or from the fill values its
    removed chunks read as. ``identity`` and ``files`` are what the run began from.

    Its files are listed again; the finished blocks that read one that changed are read
    again from the source opened afresh, and those whose samples differ from their
    marker's digest are dropped, so that a resume fuses them from the source as it is
    then. A source whose shape or metadata changed (opened again as ``src``, the user's
    spelling: a folder is listed again), or that is gone, keeps no block; one that cannot
    be opened for another reason (a network error) keeps them all, for a resume to check.
    A source in memory is not checked (its data would be read again whole). The blocks are
    read on ``threads`` threads, with a cache of decoded units as large as the memory those
    threads' tasks would have (``memory_per_task``)."""
    source = fusion.source
    if source.data_root is None and not source.files:
        return identity
    done = {n for n in state.done() if not n.startswith("L")}
    where = source.description
    try:
        fresh = Reopen(src, *fusion.recipe[1:], by_inner_chunks=source.by_inner_chunks)()
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if not _gone(source):  # a network error, expired credentials: keep the blocks
            raise SourceReadError(
                f"{where} could not be opened again to check that it did not change while "
                f"this run read it ({reason}); resume=True checks it again"
            ) from exc
        # gone: a store's chunks read as the fill value since, and a store moved back later
        # would look unchanged to a resume
        state.drop_markers(state.done())
        raise SourceChangedError(
            f"{where} cannot be opened any more ({reason}): it was moved or removed while "
            "this run read it, and the blocks fused are not kept; fuse it again once it is "
            "back (with overwrite=True and resume=False where dst is kept)"
        ) from exc
    with contextlib.closing(fresh):
        root = fresh.data_root
        if root is not None and not root.is_local:  # (fsspec keeps the listings it made)
            root.fs.invalidate_cache()
        now = source_files(fresh.data_files())
        changes = identity_differences(identity, {**identity, **fresh.identity()})
        if changes:
            state.drop_markers(state.done())
            raise SourceChangedError(
                f"{where} changed while this run read it ({'; '.join(changes)}), and the "
                "blocks fused are not kept; fuse it again once nothing writes to it (with "
                "overwrite=True and resume=False where dst is kept)"
            )
        changed = changed_files(files, now)
        suspects = _blocks_reading(fresh, plan, changed, done)
        # a block that read a file listed when the run began and gone now read either its old
        # samples or the fill value a missing chunk reads as, the same as a read again gives
        # (a chunk removed before its blocks read it was kept, exit 0): dropped unread
        gone = _blocks_reading(fresh, plan, sorted(set(files["names"]) - set(now["names"])),
                               done)  # fmt: skip
        otherwise = _read_otherwise(state, fresh, plan,
                                    {b: n for b, n in suspects.items() if b not in gone},
                                    first=False, threads=threads,
                                    cache_bytes=_budget(fusion, plan, threads))  # fmt: skip
        otherwise = sorted([*otherwise, *gone.items()])
    if otherwise:
        # the blocks filled with an image's smallest S go too: a dropped block may hold it
        images = {b.rsplit("_", 2)[0] if b.count("_") > 1 else "" for b, _ in otherwise}
        filled = [n for n in done if (n.rsplit("_", 2)[0] if n.count("_") > 1 else "") in images
                  and state.marker_filled(n)]  # fmt: skip
        state.drop_markers([b for b, _ in otherwise] + filled
                           + [n for n in state.done() if n[0] == "L"])  # fmt: skip
        names = sorted({name for _, name in otherwise})
        raise SourceChangedError(
            f"{where} changed while this run read it: {_few(names)} changed after "
            f"{len(otherwise)} finished block(s) ({_few([b for b, _ in otherwise])}) read "
            "it, and their results are dropped; once nothing writes to the source, "
            "resume=True fuses them again from it"
        )
    if changed:
        log.info("%s: files changed while the run read them (%s); every finished block read "
                 "what they hold now", where, _few(changed))  # fmt: skip
    return {**identity, **_digests(source, now)}


def _gone(source: Source) -> bool:
    """Whether the source's store, or one of its files, is no longer where it was."""
    try:
        if any(not os.path.exists(f) for f in source.files):
            return True
        return source.location is not None and not source.location.exists()
    except Exception:  # cannot tell (a network error): not known to be gone
        return False


def _blocks_reading(source: Source, plan: Plan, changed: list[str], done: set[str]):
    """{finished block: the first of the ``changed`` files it read}."""
    suspects: dict[str, str] = {}
    for name in changed:
        unit = source.unit_of_file(name)
        if unit is None and _beside_chunks(source, name):
            continue
        if unit is None:  # a file every block may read (a TIFF, a plane file)
            for block in done:
                suspects.setdefault(block, name)
            continue
        extent = {
            a: (u * s, min((u + 1) * s, n))
            for a, u, s, n in zip(source.axes, unit, source.unit_shape, source.shape, strict=True)
        }
        rows, cols = plan.blocks_reading(extent["y"], extent["x"])
        lead_ranges = [range(*extent[a]) for a in plan.layout.lead_axes]
        for lead in itertools.product(*lead_ranges):
            for j in rows:
                for i in cols:
                    block = plan.name((*lead, j, i))
                    if block in done:
                        suspects.setdefault(block, name)
    return suspects


def _beside_chunks(source: Source, name: str) -> bool:
    """Whether ``name`` lies in a Zarr array's folder but is no chunk of it (Finder's
    ``.DS_Store``, a note): Zarr reads no such file, and one saved there had every finished
    block read again, a second read of the whole source (a review, 2026-12-06)."""
    meta = getattr(source.array, "metadata", None)
    return meta is not None and source.data_root is not None and name not in source.files


def _read_otherwise(state, source, plan, suspects, *, first: bool, threads: int = 1,
                    cache_bytes: int = 0) -> list[tuple[str, str]]:  # fmt: skip
    """The (block, file) of ``suspects`` whose samples, read from ``source`` now, are not
    those their done-marker vouches for, by block name (only one, with ``first``).

    Read on ``threads`` threads in the run's block order, each unit announced to a cache of
    ``cache_bytes`` for the rows of blocks that read it: a ``chmod -R`` of the source (its
    ctimes only) had every block read again on one thread, each decoding its neighbours'
    units again for its halo, 3 to 9 times the source's bytes (a review, 2026-12-06)."""
    found: dict[str, str] = {}
    rows = [list(row) for _, row in itertools.groupby(
        sorted(suspects, key=lambda b: _in_order(plan, b)),
        key=lambda b: _in_order(plan, b)[:3])]  # fmt: skip
    cache, ahead = UnitCache(cache_bytes, plan.halo), _rows_read(source, plan)

    def same(block: str) -> bool:
        recorded = state.marker_digest(block)
        if recorded is None:  # a marker without a digest vouches for nothing
            cache.forget(units_of(source, plan.region(_index(block)), plan.halo))
            return False
        try:
            samples = fetch_block(source, plan.region(_index(block)), cache)
            return input_unchanged(recorded, samples)
        except Exception:  # unreadable now: it is not what the block read
            return False

    def collect(most: int) -> bool:  # wait until at most ``most`` reads are pending
        while len(pending) > most:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                name = pending.pop(future)
                if not future.result():
                    found[name] = suspects[name]
        return first and bool(found)

    pending: dict[cf.Future, str] = {}
    announced = 0
    with cf.ThreadPoolExecutor(max(1, threads), thread_name_prefix="fstack-recheck") as pool:
        try:
            for r, row in enumerate(rows):
                for later in rows[announced : r + ahead + 1]:  # every reader of row r's units
                    cache.expect(u for b in later for u in units_of(source, plan.region(_index(b)),
                                                                   plan.halo))  # fmt: skip
                announced = max(announced, r + ahead + 1)
                for block in row:
                    pending[pool.submit(same, block)] = block
                    if collect(2 * max(1, threads) - 1):  # the reads under way end too:
                        collect(0)  # the first block by name among them is named
                        return [min(found.items())]
            if collect(0):
                return [min(found.items())]
        finally:
            for future in pending:  # (an error: the rest is not wanted)
                future.cancel()
    return sorted(found.items())


def _budget(fusion: Fusion, plan: Plan, threads: int) -> int:
    """The unit cache of a run of ``threads`` tasks in one process (``make_plan``'s)."""
    return max(0, threads * (fusion.memory_per_task - fusion.task_bytes(plan.block)))


def _index(block: str) -> tuple[int, ...]:
    return tuple(int(k) for k in block.split("_"))


def _in_order(plan: Plan, block: str) -> tuple[Any, ...]:
    """The key of ``Plan.blocks``' order: (lead unit, strip, row, column, lead indices)."""
    *lead, j, i = _index(block)
    group = tuple(k // u for k, u in zip(lead, plan.unit_lead, strict=True))
    return group, i // plan.strip, j, i, tuple(lead)


def _rows_read(source: Source, plan: Plan) -> int:
    """How many rows of blocks after the first one read a unit (with their halos)."""
    unit = source.read_shape[source.axes.index("y")]
    return math.ceil((unit + 2 * plan.halo) / plan.block[0]) + 1


def fingerprinted(source: Source, files: dict[str, Any]) -> bool:
    """Whether the sizes and times of the source's data files show every change of its data
    (what a resume relies on to read again only the finished blocks of changed files).

    Not for a dask-backed or Zarr array in memory (its token is its graph's or store's name,
    not its data: only a NumPy array's hashes its samples), nor for a store whose files have no
    modification time (zip archives, HTTP: only their sizes would be compared)."""
    if source.files or source.data_root is not None:
        return bool(np.all(files["stamps"] != 0))
    return isinstance(source.array, np.ndarray)


def _unshown(source: Source) -> str:
    if source.files or source.data_root is not None:
        return "some have no modification time"
    return f"{source.kind} data in memory"


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def source_identity(source: Source, files: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run records of its source: :meth:`Source.identity`, a digest of its data if
    in memory, and of its files' list (``files``: listed now, where not given)."""
    files = source_files(source.data_files()) if files is None else files
    identity = {**source.identity(), "content": _content_token(source), **_digests(source, files)}
    if source.files:  # what records begun before 2026-12-06 hold (with the files' mtimes)
        identity["content_with_times"] = _content_token(source, times=True)
    return identity


def _digests(source: Source, files: dict[str, Any]) -> dict[str, str | None]:
    """The digests of a source's files kept with its output; the objects' versions on an
    object store alone (a local file's inode is no version: a copy of the source changes it)."""
    digests: dict[str, str | None] = {"files_sha256": files_digest(files)}
    if source.data_root is not None and not source.data_root.is_local:
        digests["files_versions_sha256"] = versions_digest(files)
    return digests


def _content_token(source: Source, *, times: bool = False) -> str | None:
    """The token of an in-memory array's data, or of a file source's reader without its
    files' times: those files are compared one by one (a TIFF, HDF5 or vendor file only
    touched refused every resume as "its content changed": an adversarial run, 2026-12-06)."""
    if source.data_root is not None:
        return None  # its files are fingerprinted one by one
    from dask.base import tokenize

    if times or not source.files:
        return tokenize(source.array)
    with without_stamps():
        return tokenize(source.array)
