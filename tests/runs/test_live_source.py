"""Another program writes the source while a run reads it (a microscope still acquiring, a
copy or a removal under way): the run never marks complete an output fused from two versions
of it, or from the fill values its removed chunks read as, and a resume once the writer is
done gives what a fresh run gives (an adversarial run on live data, 2026-12-06: each case
finished "complete", exit 0).

Real stores and plane folders on disk, changed by the test after the run's third block.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import tifffile
import zarr
from safety_util import CHUNK, count_decodes, small_stack, write_src

from fstack_dask import SourceReadError, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._cli.main import main
from fstack_dask._outputs.state import OutputState


def _while_running(monkeypatch, change, after=3):
    """Run ``change()`` once ``after`` level-0 blocks are finished (their markers written)."""
    real = OutputState.mark_done
    count = []

    def mark_done(self, name, *args, **kwargs):
        real(self, name, *args, **kwargs)
        if not name.startswith("L"):
            count.append(name)
            if len(count) == after:
                change()

    monkeypatch.setattr(OutputState, "mark_done", mark_done)
    return count


def _fuse(src, dst, **kwargs):
    return fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False, **kwargs)


def test_a_chunk_rewritten_under_finished_blocks_is_not_marked_complete(
    tmp_path, monkeypatch, capsys
):
    """Chunk 0 is rewritten (planes reversed) after the blocks that read it are done: the run
    fails in one line, exit 1, naming the file; those blocks are dropped, and ``--resume``
    then gives the bits of a fresh run of the source as it is now."""
    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"

    def rewrite():
        arr = zarr.open_array(src / "0", mode="r+")
        arr[:, :CHUNK, :CHUNK] = arr[:, :CHUNK, :CHUNK][::-1]

    _while_running(monkeypatch, rewrite)
    argv = ["fuse", str(src), str(dst), "--chunks", str(CHUNK), "--scheduler", "synchronous",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed while this run read it: c/0/0/0 changed after" in err[0]
    assert "--resume fuses them again" in err[0]
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is False
    monkeypatch.undo()
    _fuse(src, dst, resume=True)
    fresh = _fuse(src, tmp_path / "fresh.zarr")
    assert np.array_equal(zarr.open_group(dst, mode="r")["0"][...], fresh["0"][...])


def test_blocks_filled_with_the_smallest_selectivity_a_dropped_block_held_go_too(
    tmp_path, monkeypatch
):
    """Plane 0 dark (selectivity undefined where the fit reads it: filled with the image's
    smallest, held by a low-contrast patch); the patch is then rewritten with the stack's
    own texture, after every block is done. The blocks that read it are dropped, and so are
    those filled with the smallest selectivity it held: the resume gives a fresh run's bits
    (keeping them left 726 pixels filled with the old smallest)."""
    stack = synthetic_stack((96, 80), 7, dtype="uint8", noise=0.01, seed=2).stack
    data = np.ascontiguousarray(np.moveaxis(stack, 2, 0))
    data[0] = 0
    normal = data[:, 64:96, 64:80].copy()
    rng = np.random.default_rng(1)
    texture = rng.integers(50, 200, (32, 16))
    data[:, 64:96, 64:80] = texture + rng.integers(0, 3, (7, 32, 16))
    src, dst = tmp_path / "src.zarr", tmp_path / "out.zarr"
    write_stack(src, data, axes="zyx", chunks=(7, CHUNK, CHUNK))

    def rewrite():
        zarr.open_array(src / "0", mode="r+")[:, 64:96, 64:80] = normal

    _while_running(monkeypatch, rewrite, after=9)
    with pytest.raises(SourceReadError, match="c/0/2/2 changed after 4 finished block"):
        _fuse(src, dst)
    monkeypatch.undo()
    _fuse(src, dst, resume=True)
    fresh = _fuse(src, tmp_path / "fresh.zarr")
    assert np.array_equal(zarr.open_group(dst, mode="r")["0"][...], fresh["0"][...])


def _append_planes(src):
    arr = zarr.open_array(src / "0", mode="r+")
    arr.append(np.asarray(small_stack(1)[:2]), axis=0)


def _remove(src):
    shutil.rmtree(src)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_append_planes, r"changed while this run read it \(its shape was \[7, 96, 80\] and is "
                         r"now \[9, 96, 80\]"),
        (_remove, "cannot be opened any more .* moved or removed while this run read it"),
    ],
    ids=["planes appended", "store removed"],
)  # fmt: skip
def test_a_store_changed_or_removed_while_it_is_read_leaves_nothing(
    tmp_path, monkeypatch, change, match
):
    """Planes appended (zarr.json rewritten) or the store removed mid-run: its chunks read
    as the fill value from then on, silently. Now nothing is kept of a new dst."""
    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    _while_running(monkeypatch, lambda: change(src))
    with pytest.raises(SourceReadError, match=f"{match}.*; nothing was written$"):
        _fuse(src, dst)
    assert not dst.exists()


def test_a_source_that_cannot_be_opened_again_for_a_while_keeps_every_block(tmp_path, monkeypatch):
    """The check cannot open the source (a network error, expired credentials) though it is
    there: the run fails, keeping every block, and a resume checks it again and finishes."""
    from fstack_dask._sources import open as opening

    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"

    def unreachable(self, data=None):
        raise OSError("Service Unavailable")

    monkeypatch.setattr(opening.Reopen, "__call__", unreachable)
    with pytest.raises(SourceReadError, match="could not be opened again to check .*"
                       r"\(Service Unavailable\); .* is kept with 9 of 9 blocks done"):  # fmt: skip
        _fuse(src, dst)
    monkeypatch.undo()
    out = _fuse(src, dst, resume=True)
    fresh = _fuse(src, tmp_path / "fresh.zarr")
    assert np.array_equal(out["0"][...], fresh["0"][...])


def test_plane_files_saved_into_the_folder_while_it_is_fused(tmp_path, monkeypatch):
    """The folder holds more planes at the end of the run than it listed: refused."""
    planes, dst = tmp_path / "planes", tmp_path / "out.zarr"
    planes.mkdir()
    stack = small_stack(0)
    for z in range(5):
        tifffile.imwrite(planes / f"z{z:02d}.tif", stack[z])
    _while_running(monkeypatch, lambda: tifffile.imwrite(planes / "z05.tif", stack[5]))
    with pytest.raises(SourceReadError, match=r"its shape was \[5, 96, 80\] and is now \[6, "):
        _fuse(planes, dst)
    assert not dst.exists()


def test_a_chunk_only_touched_while_it_is_read_still_completes(tmp_path, monkeypatch, caplog):
    """A file whose times change but not its samples (a backup tool, ``touch``) does not
    fail the run, and the output records the files as the run left them."""
    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    chunk = src / "0" / "c" / "0" / "0" / "0"
    _while_running(monkeypatch, lambda: os.utime(chunk, ns=(1, 1)))
    out = _fuse(src, dst)
    assert out.attrs["fstack_dask"]["complete"] is True
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="fstack_dask"):
        _fuse(src, dst, resume=True)  # its files as the run left them: "already complete"
    assert "already complete; nothing to resume" in caplog.text


def test_a_file_saved_beside_the_chunks_reads_no_block_again(tmp_path, monkeypatch):
    """Finder's ``.DS_Store`` saved into the source's array folder mid-run (someone browsing
    the store over SMB) had the check after the run read every finished block again, as if
    each had read it: a second read of the whole source (a review, 2026-12-06). Zarr reads
    only chunks: no block is read again, and the output is complete."""
    import fstack_dask._runs.source_changes as changes

    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    _while_running(monkeypatch, lambda: (src / "0" / ".DS_Store").write_bytes(b"Bud1"))
    real, reads = changes.fetch_block, []
    monkeypatch.setattr(changes, "fetch_block", lambda *a, **k: reads.append(1) or real(*a, **k))
    out = _fuse(src, dst)
    assert out.attrs["fstack_dask"]["complete"] is True
    assert not reads


def test_a_chmod_of_every_chunk_reads_the_source_once_more_on_the_runs_threads(
    tmp_path, monkeypatch
):
    """``chmod -R`` of the source during a run (its ctimes only) has every finished block
    read again by the check after the run. It read them on one thread, each block decoding
    its neighbours' chunks again for its halo: 5.6 times the source's bytes here (a review,
    2026-12-06). Now the blocks are read on the run's threads, in its order, each chunk
    decoded once; nothing is dropped."""
    import dask

    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    chunks = [p for p in (src / "0" / "c").rglob("*") if p.is_file()]
    counting: list[bool] = []
    decoded, names = count_decodes(monkeypatch, counting)

    def chmod_all():  # after the last block: only the check reads after this
        for path in chunks:
            os.chmod(path, os.stat(path).st_mode ^ 0o040)
        counting.append(True)

    _while_running(monkeypatch, chmod_all, after=len(chunks))  # a block per chunk
    with dask.config.set(num_workers=2):
        out = fuse_zarr(src, dst, chunks=CHUNK, scheduler="threads", progress=False)
    assert out.attrs["fstack_dask"]["complete"] is True
    stored = small_stack().nbytes
    assert stored <= sum(decoded) <= 1.25 * stored, sum(decoded) / stored
    assert names and all(n.startswith("fstack-recheck") for n in names), names


def test_a_cluster_run_s_source_checks_read_on_the_threads_this_process_is_given(
    tmp_path, monkeypatch
):
    """With a cluster, the checks of the source before a run (a resume's) and after it read
    in this process, not on the workers: both on dask's ``num_workers`` here. The one after
    the run took every core of the machine the client runs on, whatever ``num_workers``
    said; sizing either from the cluster would ask its threads, and a cache of
    ``memory_per_task`` each, of this one machine."""
    import dask
    from distributed import Client, LocalCluster

    from fstack_dask import _params
    from fstack_dask._runs import run

    monkeypatch.setattr(_params, "cpu_count", lambda: 8)  # a large login node
    asked: dict[str, int] = {}
    for name in ("examine", "check_source_after_run"):
        real = getattr(run, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            asked[_name] = kwargs["threads"]
            return _real(*args, **kwargs)

        monkeypatch.setattr(run, name, spy)
    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                           dashboard_address=":0")  # fmt: skip
    with cluster, Client(cluster) as client, dask.config.set(num_workers=1):
        out = fuse_zarr(src, dst, chunks=CHUNK, scheduler=client, progress=False)
    assert out.attrs["fstack_dask"]["complete"] is True
    assert asked == {"examine": 1, "check_source_after_run": 1}


FAT_NS = 2_000_000_000  # FAT's timestamp granularity


class _FatClock:
    """The clock a simulated FAT filesystem stamps by, and the one the package waits on
    (``fingerprint.time``): it stands still unless the package sleeps on it."""

    def __init__(self):
        self.ns = 1_800_000_000_500_000_000  # half a second into a 2-s granule

    def time_ns(self) -> int:
        return self.ns

    def sleep(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9) + 1


def test_a_chunk_rewritten_within_the_filesystems_timestamp_granule_is_noticed(
    tmp_path, monkeypatch
):
    """On a filesystem with coarse times (FAT: 2 s, its ctime the mtime; Lustre, HFS+: whole
    seconds) a chunk rewritten in place, same size, within the granule in which the run listed
    it keeps the size, times and inode listed: the run marked complete an output fused from
    both versions. A file changed within a granule of the listing is now listed again once
    the granule is past (git's "racily clean" files), so the rewrite gets other times."""
    from fstack_dask._errors import SourceChangedError
    from fstack_dask._outputs import fingerprint
    from fstack_dask._sources.source import Source

    clock, stamped = _FatClock(), {}
    real_files = Source.data_files

    def fat_files(self, *args, **kwargs):  # each file's times: the clock's at its last change
        for name, size, _mtime, ctime, ino in real_files(self, *args, **kwargs):
            if stamped.get(name, (None,))[0] != ctime:
                stamped[name] = (ctime, clock.ns // FAT_NS * FAT_NS)
            yield name, size, stamped[name][1], stamped[name][1], ino

    monkeypatch.setattr(Source, "data_files", fat_files)
    monkeypatch.setattr(fingerprint, "time", clock, raising=False)
    stack = small_stack()
    src = tmp_path / "src.zarr"
    chunks = (stack.shape[0], CHUNK, CHUNK)
    arr = zarr.create_array(src, shape=stack.shape, chunks=chunks, dtype=stack.dtype,
                            compressors=None, dimension_names=("z", "y", "x"))  # fmt: skip
    arr[...] = stack
    chunk = src / "c" / "0" / "0" / "0"
    planes = np.frombuffer(chunk.read_bytes(), np.uint8).reshape(stack.shape[0], -1)

    def rewrite():  # in place, same size: the planes reversed
        with open(chunk, "r+b") as fh:
            fh.write(planes[::-1].tobytes())

    _while_running(monkeypatch, rewrite)
    with pytest.raises(SourceChangedError, match=r"c/0/0/0 changed after \d finished block"):
        _fuse(src, tmp_path / "out.zarr", axes="zyx")
    assert clock.ns - 1_800_000_000_500_000_000 <= FAT_NS  # one granule at most


def test_a_chunk_removed_before_the_blocks_that_read_it_is_not_read_as_the_fill_value(
    tmp_path, monkeypatch, capsys
):
    """A chunk file removed after the run listed the store and before its blocks read it (a
    store being replaced): they read the fill value, the check after the run read the same
    again, and the run finished "complete", exit 0, with a wrong image (g88; an HTTP server
    that stops serving a listed chunk is an error too: test_locations). A chunk listed when
    the run began and gone after it drops the blocks that read it: one line naming the file,
    exit 1, and ``--resume`` once it is back gives the bits of a fresh run."""
    import fstack_dask._runs.resume as resume

    src, dst = write_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    chunk = src / "0" / "c" / "0" / "2" / "2"
    kept = chunk.read_bytes()
    listed = resume.source_identity
    monkeypatch.setattr(
        resume, "source_identity", lambda *a, **k: (listed(*a, **k), chunk.unlink())[0]
    )
    argv = ["fuse", str(src), str(dst), "--chunks", str(CHUNK), "--scheduler", "synchronous",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = [e for e in capsys.readouterr().err.splitlines() if "error:" in e]  # (and a warning
    assert len(err) == 1 and "c/0/2/2 changed after" in err[0], err  # of its undefined S)
    assert "--resume" in err[0], err
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["complete"] is False
    monkeypatch.undo()
    chunk.write_bytes(kept)
    _fuse(src, dst, resume=True)
    fresh = _fuse(src, tmp_path / "fresh.zarr")
    assert np.array_equal(zarr.open_group(dst, mode="r")["0"][...], fresh["0"][...])
