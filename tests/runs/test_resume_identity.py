"""A resume cannot be fooled by size and mtime (issue 22): content digests of what finished
blocks read, the source of a complete output, the engine.

Real stores with uncompressed chunks (every chunk file has the same size, so a replaced one
keeps its size), replaced the way users and tools do (`cp -p`, `touch -r`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import zarr
from conftest import tree_digest
from safety_util import (
    CHUNK,
    PLANES,
    cli,
    count_decodes,
    one_line_error,
    small_stack,
    write_src,
)

from fstack_dask import focus_stack, fuse_zarr
from fstack_dask._runs.blocks import FuseJob

FUSE = ("--chunks", CHUNK, "--no-progress")


def _raw_src(path, seed=0):
    """A zyx stack with uncompressed chunks: every chunk file has the same size."""
    data = small_stack(seed)
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                            chunks=(PLANES, CHUNK, CHUNK), compressors=None,
                            dimension_names=["z", "y", "x"])  # fmt: skip
    arr[...] = data
    return path


def _unfinished(src, dst, monkeypatch, n_blocks=2, **kwargs):
    """Fuse ``n_blocks`` blocks then stop; returns each finished block's haloed samples."""
    real = FuseJob.fuse_and_write
    read = {}

    def run_block(self, block, stack, *args, **kwargs):
        if len(read) >= n_blocks:
            raise KeyboardInterrupt
        read[self.plan.name(block)] = np.array(stack)
        return real(self, block, stack, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", run_block)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False, **kwargs)
    monkeypatch.setattr(FuseJob, "fuse_and_write", real)
    return read


def _as_older_versions_wrote(dst, read):
    """Done-markers as versions before 2026-12 wrote them: the bare sha256 of the samples
    with their dtype and shape (computed here, not by the package)."""
    for name, samples in read.items():
        h = hashlib.sha256(f"{samples.dtype.str}{samples.shape}".encode())
        h.update(np.ascontiguousarray(samples))
        marker = dst / ".fstack_dask" / "done" / name
        assert marker.read_text().startswith("xxh3-128:")  # what this version writes
        marker.write_text(h.hexdigest())


@pytest.mark.parametrize("markers", ["xxh3", "older sha256"])
def test_a_chunk_replaced_with_its_size_and_mtime_is_found(tmp_path, monkeypatch, markers):
    """The adversarial case: a chunk a finished block read is replaced by another of the
    same size, its old mtime put back (`cp` then `touch -r`). The old code resumed and
    mixed the two sources; now the finished block is read again and its digest differs.
    The same holds for an unfinished output of an older version, whose markers hold sha256."""
    src, other = _raw_src(tmp_path / "src.zarr"), _raw_src(tmp_path / "other.zarr", seed=4)
    dst = tmp_path / "out.zarr"
    read = _unfinished(src, dst, monkeypatch)  # blocks 0_0 and 0_1: they read chunk c/0/0/0
    assert sorted(read) == ["0_0", "0_1"]
    if markers == "older sha256":
        _as_older_versions_wrote(dst, read)
    chunk = src / "c" / "0" / "0" / "0"
    backup = tmp_path / "chunk.orig"
    subprocess.run(["cp", "-p", str(chunk), str(backup)], check=True)
    shutil.copyfile(other / "c" / "0" / "0" / "0", chunk)
    subprocess.run(["touch", "-r", str(backup), str(chunk)], check=True)
    assert os.stat(chunk).st_size == os.stat(backup).st_size
    assert os.stat(chunk).st_mtime_ns == os.stat(backup).st_mtime_ns
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "'c/0/0/0' changed since the run began" in line and "finished block 0_0" in line
    assert tree_digest(tmp_path) == before
    # The original content, copied back with its times (`cp -p`): the same samples, so the
    # resume goes on, and the output is the uninterrupted run's.
    subprocess.run(["cp", "-p", str(backup), str(chunk)], check=True)
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 0, proc.stderr
    out = zarr.open_group(str(dst), mode="r")["0"][...]
    np.testing.assert_array_equal(out, focus_stack(small_stack().transpose(1, 2, 0)))


def _zipped(store, archive):
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(store.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(store.parent))


def _sources_whose_files_cannot_tell(tmp_path):
    """Sources whose changes their files' sizes and times did not show (found by an
    adversarial run, 2026-12-05): ``kind -> (open it, replace its data by seed 4's)``.
    Uncompressed chunks throughout, so that every replaced chunk keeps its size."""
    import dask.array as da
    import h5py
    import xarray as xr

    store = _raw_src(tmp_path / "src.zarr")
    new = small_stack(4)

    def in_place():
        zarr.open_array(str(store), mode="r+")[...] = new

    # a store assembled by links: its first chunk row is a symlinked folder
    linked = _raw_src(tmp_path / "linked.zarr")
    shutil.move(linked / "c" / "0" / "0", tmp_path / "row0")
    os.symlink(tmp_path / "row0", linked / "c" / "0" / "0")
    # a zip archive of the store, replaced by another one of the same sizes
    _zipped(store, tmp_path / "stack.zip")
    other = _raw_src(tmp_path / "other" / "src.zarr", seed=4)

    def rezip():
        _zipped(other, tmp_path / "stack.zip")

    # an HDF5 virtual dataset of one file per plane
    layout = h5py.VirtualLayout(shape=(PLANES, *new.shape[1:]), dtype=new.dtype)
    for z in range(PLANES):
        with h5py.File(tmp_path / f"plane{z}.h5", "w") as f:
            f["p"] = small_stack()[z]
        layout[z] = h5py.VirtualSource(f"plane{z}.h5", "p", shape=new.shape[1:])
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        f.create_virtual_dataset("stack", layout)

    def planes_rewritten():  # each plane file written anew, then moved in place
        for z in range(PLANES):
            with h5py.File(tmp_path / "plane.tmp", "w") as f:
                f["p"] = new[z]
            os.replace(tmp_path / "plane.tmp", tmp_path / f"plane{z}.h5")

    # an HDF5 file whose dataset is an ExternalLink to another file's (a third run, 2026-12-05)
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["stack"] = small_stack()
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f["stack"] = h5py.ExternalLink("data.h5", "/stack")

    def linked_file_rewritten():
        with h5py.File(tmp_path / "data.tmp", "w") as f:
            f["stack"] = new
        os.replace(tmp_path / "data.tmp", tmp_path / "data.h5")

    zarr_kw = {"axes": "zyx"}
    # from_zarr of the opened array, not of its path: dask at our floor (before dask PR
    # 11387) opens a path as zarr.Array(store, read_only=True), a TypeError with zarr 3
    return {
        "dask": (lambda: da.from_zarr(zarr.open_array(str(store), mode="r")), in_place, zarr_kw),
        "xarray": (
            lambda: xr.DataArray(
                da.from_zarr(zarr.open_array(str(store), mode="r")), dims=("z", "y", "x")
            ),
            in_place,
            {},
        ),  # fmt: skip
        "symlinked chunk folder": (
            lambda: linked,
            lambda: zarr.open_array(str(linked), mode="r+").__setitem__(Ellipsis, new),
            {},
        ),  # fmt: skip
        "zip archive": (
            lambda: "zip://src.zarr",
            rezip,
            {"storage_options": {"fo": str(tmp_path / "stack.zip")}},
        ),  # fmt: skip
        "hdf5 virtual dataset": (
            lambda: f"{tmp_path / 'vds.h5'}/stack",
            planes_rewritten,
            zarr_kw,
        ),  # fmt: skip
        "hdf5 external link": (
            lambda: f"{tmp_path / 'master.h5'}/stack",
            linked_file_rewritten,
            zarr_kw,
        ),  # fmt: skip
    }


KINDS = [
    "dask",
    "xarray",
    "symlinked chunk folder",
    "zip archive",
    "hdf5 virtual dataset",
    "hdf5 external link",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_source_whose_files_cannot_show_a_change_is_read_again(tmp_path, monkeypatch, kind):
    """Unchanged, the resume reads every finished block again and goes on: the uninterrupted
    run's bytes. Changed in place (the same shape, dtype and chunk sizes), it is refused,
    and nothing is written: the old code resumed and mixed the two versions."""
    sources = _sources_whose_files_cannot_tell(tmp_path)
    open_src, change, kwargs = sources[kind]
    whole = focus_stack(small_stack().transpose(1, 2, 0))
    dst = tmp_path / "out.zarr"
    _unfinished(open_src(), dst, monkeypatch, **kwargs)
    fuse_zarr(open_src(), dst, chunks=CHUNK, resume=True, progress=False, **kwargs)
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], whole)
    dst2 = tmp_path / "out2.zarr"
    _unfinished(open_src(), dst2, monkeypatch, **kwargs)
    change()
    before = tree_digest(dst2)
    refused = "changed since the run began, and finished block 0_"
    if kind.startswith("hdf5"):  # HDF5 keeps a linked dataset's files open in this process
        proc = cli("fuse", open_src(), dst2, "--resume", "--axes", "zyx", *FUSE)
        assert proc.returncode == 2 and refused in one_line_error(proc), proc.stderr
    else:
        with pytest.raises(ValueError, match=refused):
            fuse_zarr(open_src(), dst2, chunks=CHUNK, resume=True, progress=False, **kwargs)
    assert tree_digest(dst2) == before


def test_resume_of_a_complete_output_from_another_source_is_refused(tmp_path):
    """The old code said "already complete" and exited 0 for any source of the same shape."""
    src = write_src(tmp_path / "src.zarr")
    other = write_src(tmp_path / "other.zarr", seed=4)
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    before = tree_digest(tmp_path)
    proc = cli("fuse", other, dst, "--resume", *FUSE)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "is complete, but was computed from another source" in line and "other.zarr" in line
    assert tree_digest(tmp_path) == before
    proc = cli("fuse", src, dst, "--resume", *FUSE)  # its own source: nothing to do
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(tmp_path) == before


def test_resume_from_a_copy_under_another_name_says_where_not_that_its_metadata_changed(
    tmp_path,
):
    """A copy of the source under another name is another source (its files are not the
    run's), refused; the line said "its metadata changed" too, of metadata files the copy
    holds byte for byte: now it names the location alone."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    shutil.copytree(src, tmp_path / "copy.zarr")
    before = tree_digest(tmp_path)
    proc = cli("fuse", tmp_path / "copy.zarr", dst, "--resume", *FUSE)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "computed from another source (its location was" in line and "copy.zarr" in line
    assert "metadata" not in line
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("dst_name", ["out.zarr", "out.ome.tif"])
def test_resume_of_a_complete_output_whose_source_was_rewritten_is_refused(tmp_path, dst_name):
    """The same store, its chunks rewritten in place with another stack's: the old code said
    "already complete" (exit 0) and kept the result of the old data."""
    src = _raw_src(tmp_path / "src.zarr")
    dst = tmp_path / dst_name
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    assert cli("fuse", src, dst, "--resume", *FUSE).returncode == 0  # unchanged: complete
    zarr.open_array(str(src), mode="r+")[...] = small_stack(4)
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 2, proc.stderr
    assert "is complete, but the source's files were rewritten" in one_line_error(proc)
    assert tree_digest(tmp_path) == before


def test_a_complete_resumed_output_keeps_the_source_it_was_finished_from(tmp_path, monkeypatch):
    """A chunk only unfinished blocks read is rewritten before the resume, which accepts it;
    the output it completes records the source as the resume found it, so a later resume
    finds it complete rather than rewritten."""
    src = _raw_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)  # blocks 0_0 and 0_1: chunk row 2 is not read
    new = small_stack()
    new[:, 64:, 64:] = small_stack(4)[:, 64:, 64:]
    zarr.open_array(str(src), mode="r+")[:, 64:, 64:] = new[:, 64:, 64:]
    assert cli("fuse", src, dst, "--resume", *FUSE).returncode == 0
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert "already complete" in proc.stderr


def test_resume_under_another_engine_is_refused(tmp_path, monkeypatch):
    """The NumPy and compiled engines differ in the last bits of exp/log/tanh: a resume must
    not mix them (the old code did, when FSTACK_DASK_ENGINE differed between the runs)."""
    from fstack_dask._algorithm import block as _kernel

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    monkeypatch.setattr(_kernel, "ENGINE", "numpy")
    _unfinished(src, dst, monkeypatch)
    monkeypatch.undo()
    assert _kernel.ENGINE == "compiled"
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 2, proc.stderr
    assert "different engine (engine was 'numpy', now 'compiled')" in one_line_error(proc)
    assert tree_digest(tmp_path) == before
    proc = cli("fuse", src, dst, "--resume", *FUSE, env={"FSTACK_DASK_ENGINE": "numpy"})
    assert proc.returncode == 0, proc.stderr
    assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["engine"] == "numpy"


@pytest.mark.parametrize("lost", ["0/c/0/1", "depth/0/c/0/0"])
def test_a_finished_block_whose_chunk_file_is_gone_is_fused_again(tmp_path, monkeypatch, caplog,
                                                                  lost):  # fmt: skip
    """An unfinished output copied in part (or a chunk file deleted): the resume trusted the
    done-marker and finished with the fill value where the block was (a third adversarial
    run). Markers list the chunk files their block stored; a block missing one is fused
    again, with a warning, and the output is the uninterrupted run's."""
    import logging

    src = _raw_src(tmp_path / "src.zarr")
    whole = fuse_zarr(src, tmp_path / "whole.zarr", chunks=CHUNK, depth_map=True,
                      progress=False)  # fmt: skip
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch, depth_map=True)  # blocks 0_0 and 0_1
    os.remove(dst / lost)
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        out = fuse_zarr(src, dst, chunks=CHUNK, depth_map=True, resume=True, progress=False)
    block = "0_1" if lost.startswith("0/") else "0_0"
    assert f"1 finished blocks of {dst} lost chunk files since they were written ({block})" in (
        caplog.text
    )
    for name in ("0", "depth/0"):
        np.testing.assert_array_equal(out[name][...], whole[name][...])


def test_a_finished_block_whose_chunk_file_was_cut_short_is_fused_again(tmp_path, monkeypatch,
                                                                         caplog):  # fmt: skip
    """An unfinished output copied by a ``cp`` that was killed: the file it was copying is
    there, shorter. The resume trusted the done-marker and marked the output complete with an
    unreadable chunk (an adversarial run on moved outputs). Markers keep their files' sizes;
    a block whose file has another size is fused again, and the output reads as the
    uninterrupted run's."""
    import logging

    src = _raw_src(tmp_path / "src.zarr")
    whole = fuse_zarr(src, tmp_path / "whole.zarr", chunks=CHUNK, progress=False)
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)  # blocks 0_0 and 0_1
    chunk = dst / "0" / "c" / "0" / "1"
    os.truncate(chunk, chunk.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        out = fuse_zarr(src, dst, chunks=CHUNK, resume=True, progress=False)
    assert f"1 finished blocks of {dst} lost chunk files since they were written (0_1)" in (
        caplog.text
    )
    np.testing.assert_array_equal(out["0"][...], whole["0"][...])


def _consolidated_v2_group(path, order):
    """A Zarr v2 OME-Zarr image whose consolidated metadata gives the array's ``order``
    (its own ``.zarray`` says "C"): zarr reads the array through ``.zmetadata``."""
    import json

    data = small_stack()
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = group.create_array("0", shape=data.shape, chunks=(PLANES, CHUNK, CHUNK),
                             dtype=data.dtype)  # fmt: skip
    arr[...] = data
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    scale = [{"type": "scale", "scale": [1, 1, 1]}]
    level = {"path": "0", "coordinateTransformations": scale}
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [level]}]
    zarr.consolidate_metadata(str(path))
    meta = json.loads((path / ".zmetadata").read_text())
    meta["metadata"]["0/.zarray"]["order"] = order
    (path / ".zmetadata").write_text(json.dumps(meta))
    return path


def test_consolidated_metadata_changed_between_a_run_and_its_resume_is_refused(
    tmp_path, monkeypatch
):
    """Zarr reads a v2 group's arrays through ``.zmetadata``, which the source's identity did
    not cover: a run began on stale consolidated metadata (order "F"), the user consolidated
    again, and the resume fused the rest from the other reading of the same chunks, exit 0
    (an eighth adversarial run). Refused now, and nothing is written; a complete output's
    resume says so too."""
    src = _consolidated_v2_group(tmp_path / "src.zarr", order="F")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    zarr.consolidate_metadata(str(src))  # the user repairs it: only .zmetadata changes
    assert zarr.open_group(str(src), mode="r")["0"].metadata.order == "C"
    before = tree_digest(dst)
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 2 and "its metadata changed" in one_line_error(proc), proc.stderr
    assert tree_digest(dst) == before
    done = tmp_path / "done.zarr"
    assert (
        cli("fuse", _consolidated_v2_group(tmp_path / "src2.zarr", "F"), done, *FUSE).returncode
        == 0
    )
    zarr.consolidate_metadata(str(tmp_path / "src2.zarr"))
    proc = cli("fuse", tmp_path / "src2.zarr", done, "--resume", *FUSE)
    assert proc.returncode == 2 and "is complete, but" in one_line_error(proc), proc.stderr


def test_a_file_read_another_way_is_still_the_same_source(tmp_path):
    """An output begun from an uncompressed TIFF when it was read by pages could not be
    resumed once it was read by region: "its chunking was [1, 1024, 1024] and is now [21,
    512, 512]; its content changed" (an adversarial run). A reader's units are ours to
    choose for every format but Zarr, whose chunking is the data's."""
    tifffile = pytest.importorskip("tifffile")
    from dask.base import tokenize

    from fstack_dask._outputs.fingerprint import identity_differences
    from fstack_dask._sources.tiff_array import TiffArray

    old, new = (
        {"kind": "tiff", "unit_shape": [1, 64, 64]},
        {"kind": "tiff", "unit_shape": [5, 64, 64]},
    )
    assert identity_differences(old, new) == []
    zarr_old, zarr_new = {**old, "kind": "zarr"}, {**new, "kind": "zarr"}
    assert identity_differences(zarr_old, zarr_new) == [
        "its chunking was [1, 64, 64] and is now [5, 64, 64]"
    ]
    path = str(tmp_path / "s.tif")
    tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint16))
    with tifffile.TiffFile(path) as tif:
        offset = tif.series[0].dataoffset
    by_pages, by_rows = (
        TiffArray(path, 0, 0),
        TiffArray(path, 0, 0, offset=offset, unit=(5, 64, 64)),
    )
    assert tokenize(by_pages) == tokenize(by_rows)


def test_the_same_files_at_another_path_resume(tmp_path, monkeypatch):
    """A requeued job on a node that mounts the project space at another path (or a
    container's bind mount) was refused: "its location was ... ; its metadata changed", the
    metadata digest holding the files' paths (an HPC run, 2026-12-05). The same store moved to
    another folder under the same name resumes now, and the blocks finished before are kept;
    another store with the same metadata under the same name is still refused (its chunk
    files differ under finished blocks), and the same store under another name too."""
    name = "src.ome.zarr"
    here, there = tmp_path / "mnt-a", tmp_path / "mnt-b"
    here.mkdir()
    write_src(here / name)
    dst = tmp_path / "out.zarr"
    assert len(_unfinished(here / name, dst, monkeypatch)) == 2
    os.rename(here, there)  # the same files (inodes, times), reached at another path
    fused = []
    real = FuseJob.fuse_and_write

    def counting(self, block, *args, **kwargs):
        fused.append(block)
        return real(self, block, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", counting)
    out = fuse_zarr(there / name, dst, chunks=CHUNK, resume=True, progress=False)
    monkeypatch.setattr(FuseJob, "fuse_and_write", real)
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(out["0"][...], expected)
    n_blocks = -(-expected.shape[0] // CHUNK) * -(-expected.shape[1] // CHUNK)
    assert len(fused) == n_blocks - 2

    again = tmp_path / "again.zarr"
    _unfinished(there / name, again, monkeypatch)
    other = tmp_path / "other" / name
    other.parent.mkdir()
    write_src(other, seed=3)
    with pytest.raises(ValueError, match="changed since the run began"):
        fuse_zarr(other, again, chunks=CHUNK, resume=True, progress=False)
    renamed = there / f"renamed-{name}"
    os.rename(there / name, renamed)
    with pytest.raises(ValueError, match="its location was"):
        fuse_zarr(renamed, again, chunks=CHUNK, resume=True, progress=False)


def _unshare_ro_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-m", "sh", "-c", "mount --bind / /mnt && mount -o remount,bind,ro /mnt"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def test_resume_of_a_complete_output_writes_nothing_into_it(tmp_path):
    """A pipeline or a requeued job reruns with --resume over a complete output it cannot
    write (a read-only archive mount, a collaborator's output): it failed, "cannot be created:
    Read-only file system", because the lock's folder was made inside the output first (an
    HPC run, 2026-12-05). Nothing is created or removed in it now (its folder's mtime holds),
    and on a real read-only mount (where we may make one) the run says "already complete"."""
    src = write_src(tmp_path / "src.zarr")
    archive = tmp_path / "archive"
    archive.mkdir()
    dst = archive / "out.zarr"
    assert cli("fuse", src, dst, *FUSE).returncode == 0
    before = tree_digest(dst), os.stat(dst).st_mtime_ns
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 0, proc.stderr
    assert "already complete; nothing to resume" in proc.stderr
    assert (tree_digest(dst), os.stat(dst).st_mtime_ns) == before
    if not _unshare_ro_works():
        return
    script = f'mount --bind "{archive}" "{archive}" && mount -o remount,bind,ro "{archive}" && '
    script += " ".join(f'"{a}"' for a in (sys.executable, "-m", "fstack_dask", "fuse", src,
                                           dst, "--resume", *FUSE))  # fmt: skip
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=180, env={**os.environ})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "already complete; nothing to resume" in proc.stderr


def _stopped_in_the_pyramid(src, dst, monkeypatch):
    """A run into ``dst`` that stops (as Ctrl-C would) once it marked its first block of
    level 1: level 0 whole, the pyramid begun."""
    from fstack_dask._outputs.state import OutputState

    real = OutputState.mark_done

    def mark_done(self, name, *args, **kwargs):
        real(self, name, *args, **kwargs)
        if name.startswith("L1_"):
            raise KeyboardInterrupt

    monkeypatch.setattr(OutputState, "mark_done", mark_done)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, chunks=CHUNK, levels=1, scheduler="synchronous", progress=False)
    monkeypatch.undo()


def _as_begun_by(dst, numerics):
    """The run record as a version of another generation of numbers wrote it (``None``: one
    from before records named it)."""
    import json

    path = dst / ".fstack_dask" / "run.json"
    record = json.loads(path.read_text())
    if numerics is None:  # nor the format of its records
        record["params"].pop("numerics", None)
        record["params"].pop("records_format", None)
    else:
        record["params"]["numerics"] = numerics
    path.write_text(json.dumps(record))


def test_a_pyramid_begun_by_an_older_version_is_computed_again(tmp_path, monkeypatch):
    """An unfinished output begun by a version from before records named the generation of
    their numbers, stopped in its pyramid (whose rules changed since: the maps' +inf, 64-bit
    integers clipped): the resume kept the older version's finished level-1 blocks and
    computed the rest by its own rules, two versions' numbers in one level (an adversarial
    run with older versions' real outputs). Its pyramid is computed again."""
    src = write_src(tmp_path / "src.zarr")
    whole = fuse_zarr(src, tmp_path / "whole.zarr", chunks=CHUNK, levels=1, progress=False)
    dst = tmp_path / "out.zarr"
    _stopped_in_the_pyramid(src, dst, monkeypatch)
    done = sorted(p.name for p in (dst / ".fstack_dask" / "done").iterdir())
    assert [n for n in done if n.startswith("L")] == ["L1_0_0"]
    _as_begun_by(dst, None)
    level = zarr.open_array(str(dst / "1"), mode="r+")
    level[:CHUNK, :CHUNK] = 7  # what the older version's rule put there (other numbers)
    marker = dst / ".fstack_dask" / "done" / "L1_0_0"  # as it wrote it: no sizes then
    marker.write_text("\n".join(ln for ln in marker.read_text().split("\n")[:2]))
    out = fuse_zarr(src, dst, chunks=CHUNK, levels=1, resume=True, progress=False)
    for name in ("0", "1"):
        np.testing.assert_array_equal(out[name][...], whole[name][...])
    assert out.attrs["fstack_dask"]["numerics"] == 1  # what this version's records name


def test_a_run_begun_by_a_version_computing_other_bits_is_not_resumed(tmp_path, monkeypatch):
    """A record naming another generation of numbers (a version whose blocks' bits differ):
    resumed, one output would hold both; refused in one line, nothing changed."""
    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    _as_begun_by(dst, 0)
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "started by a version of fstack_dask that computes other bits" in line
    assert "(numerics 0, this version's 1)" in line
    assert tree_digest(tmp_path) == before


def test_a_synchronous_resume_checks_the_source_on_one_thread(tmp_path, monkeypatch):
    """A resume reads a changed source's finished blocks again on the run's own workers, one
    for the synchronous scheduler; it read on dask's ``num_workers`` threads (every core
    where unset) whatever the run was told (a review, 2026-12-06)."""
    import threading

    import dask

    import fstack_dask._runs.source_changes as changes

    src, dst = _raw_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    assert len(_unfinished(src, dst, monkeypatch, n_blocks=6)) == 6
    for path in (p for p in (src / "c").rglob("*") if p.is_file()):
        os.chmod(path, os.stat(path).st_mode ^ 0o040)  # its ctimes: every block is a suspect
    real, seen = changes.fetch_block, set()

    def fetch_block(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(changes, "fetch_block", fetch_block)  # (the check's reads only)
    with dask.config.set(num_workers=4):
        fuse_zarr(src, dst, chunks=CHUNK, scheduler="synchronous", progress=False, resume=True)
    assert len(seen) == 1, seen
    assert all(n.startswith("fstack-recheck") for n in seen), seen


def test_a_resume_after_a_chmod_of_every_chunk_reads_each_chunk_once_on_threads(
    tmp_path, monkeypatch
):
    """``chmod -R`` of the source between a run and its resume (its ctimes only): the
    finished blocks are read again, on dask's ``num_workers`` threads, each chunk decoded
    once; they read on one thread before, each decoding its neighbours' chunks again for
    its halo (a review, 2026-12-06). The resume goes on, to the uninterrupted run's bits."""
    import dask

    import fstack_dask._runs.resume as resume

    src, dst = _raw_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    assert len(_unfinished(src, dst, monkeypatch, n_blocks=6)) == 6  # two rows of three
    for path in (p for p in (src / "c").rglob("*") if p.is_file()):
        os.chmod(path, os.stat(path).st_mode ^ 0o040)
    real_check, checking = resume.check_source_files, []
    decoded, names = count_decodes(monkeypatch, checking)

    def check(*args, **kwargs):  # only its decodes are counted
        checking.append(True)
        try:
            return real_check(*args, **kwargs)
        finally:
            checking.clear()

    monkeypatch.setattr(resume, "check_source_files", check)
    with dask.config.set(num_workers=2):  # the run's threads (synchronous: one)
        out = fuse_zarr(src, dst, chunks=CHUNK, scheduler="threads", progress=False,
                        resume=True)  # fmt: skip
    stored = small_stack().nbytes  # (the six blocks' halos reach every chunk)
    assert 0 < sum(decoded) <= stored, sum(decoded) / stored
    assert all(n.startswith("fstack-recheck") for n in names), names
    np.testing.assert_array_equal(out["0"][...], focus_stack(small_stack().transpose(1, 2, 0)))


def test_a_file_source_only_touched_resumes_and_one_rewritten_does_not(tmp_path, monkeypatch):
    """A TIFF (as an HDF5, vendor or plane file) only touched between a run and its resume
    (`touch`, a copy without -p, a file server's clock): the resume was refused, "its content
    changed", since the reader's token held the file's mtime. Its file is compared as a
    store's chunk files are: the finished blocks are read again and, the same, kept; a file
    rewritten with other data of its size is still refused."""
    tifffile = pytest.importorskip("tifffile")
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, small_stack(0))
    for name in ("touched.zarr", "rewritten.zarr"):
        _unfinished(src, tmp_path / name, monkeypatch, axes="zyx")
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    out = fuse_zarr(src, tmp_path / "touched.zarr", chunks=CHUNK, axes="zyx", progress=False,
                    resume=True)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(small_stack(0).transpose(1, 2, 0)))
    tifffile.imwrite(src, small_stack(4))  # the same size, other samples
    assert os.stat(src).st_size == st.st_size
    with pytest.raises(ValueError, match="stack.tif' changed since the run began"):
        fuse_zarr(src, tmp_path / "rewritten.zarr", chunks=CHUNK, axes="zyx", progress=False,
                  resume=True)  # fmt: skip


def test_a_file_source_begun_by_an_older_version_still_resumes(tmp_path, monkeypatch):
    """A run record written before 2026-12-06 holds the TIFF reader's token with the file's
    mtime as its content: the resume of such a run, its file untouched, still goes on."""
    import json

    tifffile = pytest.importorskip("tifffile")
    src, dst = tmp_path / "stack.tif", tmp_path / "out.zarr"
    tifffile.imwrite(src, small_stack(0))
    _unfinished(src, dst, monkeypatch, axes="zyx")
    record = dst / ".fstack_dask" / "run.json"
    body = json.loads(record.read_text())
    source = body["source"]
    assert source["content"] != source["content_with_times"]
    source["content"] = source.pop("content_with_times")  # as older versions wrote it
    record.write_text(json.dumps(body))
    out = fuse_zarr(src, dst, chunks=CHUNK, axes="zyx", progress=False, resume=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(small_stack(0).transpose(1, 2, 0)))


def test_a_chunk_dated_past_2262_is_fused_and_resumed(tmp_path, monkeypatch):
    """A chunk whose mtime in ns overflows 64 bits (`touch -d 2300-01-01`, a clock's or an
    NTFS volume's mistake) stopped every run with a bare "OverflowError: Python int too large
    to convert to C long". Its times are wrapped into 64 bits, as C would, and compared so."""
    src, dst = _raw_src(tmp_path / "src.zarr"), tmp_path / "out.zarr"
    chunk = src / "c" / "0" / "0" / "0"
    far = 10_413_792_000 * 10**9  # 2300-01-01 in ns: more than 2**63
    os.utime(chunk, ns=(far, far))
    if os.stat(chunk).st_mtime_ns != far:
        pytest.skip("this filesystem cannot store a time past 2262")
    _unfinished(src, dst, monkeypatch)
    out = fuse_zarr(src, dst, chunks=CHUNK, progress=False, resume=True)
    np.testing.assert_array_equal(out["0"][...], focus_stack(small_stack(0).transpose(1, 2, 0)))
    proc = cli("fuse", src, dst, "--resume", *FUSE)  # complete: its files' digest the same
    assert proc.returncode == 0 and "already complete" in proc.stderr, proc.stderr


@pytest.mark.parametrize("found", [2, "2", None], ids=["newer", "a string", "null"])
def test_a_run_begun_by_a_newer_version_is_refused_naming_it(tmp_path, monkeypatch, found):
    """An unfinished output begun by a newer version, whose records this version would
    misread (an older version resuming a newer one's output failed with KeyError 'ome'): a
    record's format newer than this version reads, or one it does not know, is refused in
    one line naming the version, nothing changed; ``--overwrite`` still starts over."""
    import json

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    path = dst / ".fstack_dask" / "run.json"
    record = json.loads(path.read_text())
    record["params"].update(records_format=found, version="9.0")
    path.write_text(json.dumps(record))
    before = tree_digest(tmp_path)
    proc = cli("fuse", src, dst, "--resume", *FUSE)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert f"cannot resume dst '{dst}': it was begun by fstack_dask 9.0" in line, line
    assert f"does not know (format {found!r}; this version reads format 1 and older)" in line
    assert "--overwrite and without --resume" in line and tree_digest(tmp_path) == before
    assert cli("fuse", src, dst, "--overwrite", *FUSE).returncode == 0


@pytest.mark.parametrize(
    ("key", "why"),
    [("records_format", "keeps its records in a format this version does not know (format 2;"),
     ("numerics", "computes other bits (numerics 2, this version's 1)")],
    ids=["newer records", "other numerics"],
)  # fmt: skip
def test_info_calls_no_run_resumable_that_resume_refuses(tmp_path, monkeypatch, key, why):
    """info of an unfinished output begun by a newer version (its records' format) or by one
    computing other bits said "resumable: run the same fuse command again with --resume",
    which then refused it (exit 2). It says why this version may not resume it."""
    import json

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    path = dst / ".fstack_dask" / "run.json"
    record = json.loads(path.read_text())
    record["params"].update({key: 2, "version": "9.0"})
    path.write_text(json.dumps(record))
    assert cli("fuse", src, dst, "--resume", *FUSE).returncode == 2
    proc = cli("info", dst)
    assert proc.returncode == 0, proc.stderr
    (state,) = [line for line in proc.stdout.splitlines() if line.startswith("state:")]
    assert "resumable: run the same" not in state, state
    assert f"not resumable by this version: it was begun by fstack_dask 9.0, which {why}" in state
    assert "start over with --overwrite" in state


def test_info_calls_no_output_without_its_run_record_resumable(tmp_path, monkeypatch):
    """An --overwrite of an unfinished output killed while removing it, after the state folder
    (the run record with it) and before zarr.json: info said "resumable: run the same fuse
    command again with --resume", which refused it ("without its run record")."""
    import shutil

    src = write_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)
    shutil.rmtree(dst / ".fstack_dask")
    shutil.rmtree(dst / "0" / "c")
    assert cli("fuse", src, dst, "--resume", *FUSE).returncode == 2
    proc = cli("info", dst)
    assert proc.returncode == 0, proc.stderr
    (state,) = [line for line in proc.stdout.splitlines() if line.startswith("state:")]
    assert "resumable: run the same" not in state, state
    assert "not resumable: it holds no run record" in state and "--overwrite" in state, state
    assert cli("fuse", src, dst, "--overwrite", *FUSE).returncode == 0


def test_a_resume_after_the_z_coordinate_array_changed_is_refused(tmp_path, monkeypatch):
    """An xarray Dataset saved with ``to_zarr``: its array's z step comes from the coordinate
    array ``z`` beside it, which the source's identity did not cover. The user rewrote it
    (2 um made 5) between a run and its resume, and the resume fused the rest under the new
    step, the depth map mixing 0, 2, 4 with 5, 10, 15 um, exit 0 (g50, on g46's fixes).
    Refused now, nothing written."""
    xr = pytest.importorskip("xarray")
    data = small_stack()
    coords = {a: (a, np.arange(n) * s, {"units": "um"})
              for a, n, s in zip("zyx", data.shape, (2.0, 0.5, 0.5), strict=True)}  # fmt: skip
    xr.Dataset({"stack": (("z", "y", "x"), data)}, coords=coords).to_zarr(
        tmp_path / "src.zarr", zarr_format=3, consolidated=False
    )
    src, dst = tmp_path / "src.zarr" / "stack", tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch, n_blocks=1, depth_map=True)
    zarr.open_array(str(tmp_path / "src.zarr" / "z"), mode="r+")[...] = np.arange(PLANES) * 5.0
    before = tree_digest(dst)
    proc = cli("fuse", src, dst, "--resume", "--depth-map", *FUSE)
    assert proc.returncode == 2 and "its metadata changed" in one_line_error(proc), proc.stderr
    assert tree_digest(dst) == before


def test_a_source_chunk_file_gone_before_the_resume_is_refused(tmp_path, monkeypatch):
    """A source chunk file the run began with, read by no finished block, removed before the
    resume (a copy under way, a clean-up): the resume read it as the fill value, said only
    "1 of its N chunk files are missing", and wrote an image of fill values there (the g94
    brief). The run recorded the file: the resume is refused, naming it, and writes nothing."""
    src = _raw_src(tmp_path / "src.zarr")
    dst = tmp_path / "out.zarr"
    _unfinished(src, dst, monkeypatch)  # blocks 0_0 and 0_1
    last = sorted((src / "c").rglob("*"), key=lambda p: p.parts)[-1]
    os.remove(last)
    before = tree_digest(dst)
    with pytest.raises(ValueError) as info:
        fuse_zarr(src, dst, chunks=CHUNK, resume=True, progress=False)
    name = last.relative_to(src).as_posix()
    assert f"cannot resume dst {str(dst)!r}: the source file {name!r} " in str(info.value)
    assert "was removed since the run began (its blocks would read the fill value)" in str(
        info.value
    ), info.value
    assert tree_digest(dst) == before
