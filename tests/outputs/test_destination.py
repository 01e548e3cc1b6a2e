"""What a run may do with ``dst`` (fstack_dask._outputs.destination), checked before anything is
written: real folders, real stores, and nothing ever changes on disk during a check."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import tree_digest as _tree
from safety_util import bind_or_skip, unmount_all_under

from fstack_dask import fuse_zarr, write_stack
from fstack_dask._locations import resolve
from fstack_dask._outputs.destination import Destination


def _stack(shape=(5, 16, 12), dtype="uint16"):
    return (np.arange(np.prod(shape)) % 251).reshape(shape).astype(dtype)


def _source_store(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "src.zarr"
    write_stack(path, _stack(), axes="zyx")
    return path


def check(dst, *, src=None, overwrite=False, resume=False, storage_options=None) -> str:
    """The mode a run into ``dst`` would use (the check fuse_zarr makes first)."""
    protect = [] if src is None else [resolve(src, name="src")]
    location = resolve(dst, name="dst", storage_options=storage_options, writable=True)
    return Destination(location, protect=protect).check(overwrite=overwrite, resume=resume)


def test_new_dst(tmp_path):
    src = _source_store(tmp_path)
    dst = tmp_path / "fused.zarr"
    assert check(dst, src=src) == "new"
    assert check(str(dst), overwrite=True) == "new"
    assert check(dst.as_uri(), src=src, resume=True) == "new"
    assert not dst.exists()


@pytest.mark.parametrize("name", ["fused.png", "fused.jpg", "Fused.JPEG", "out/fused.webp"])
def test_dst_named_like_a_picture_is_refused(tmp_path, name):
    """A Zarr folder named fused.png opens in no PNG reader: refused before anything is
    written, saying what is written instead."""
    src = _source_store(tmp_path)
    (tmp_path / "out").mkdir()
    before = _tree(tmp_path)
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ValueError, match=r"names a (PNG|JPG|JPEG|WEBP) file, but fstack_dask "
                           r"writes OME-Zarr .*such as '(fused|Fused)\.ome\.zarr'"):  # fmt: skip
            check(tmp_path / name, src=src, **kw)
    with pytest.raises(ValueError, match=r"^dst '.*' names a"):
        fuse_zarr(src, tmp_path / name, progress=False)
    assert _tree(tmp_path) == before
    assert check(tmp_path / "fused.ome.zarr", src=src) == "new"


def test_dst_whose_parent_is_missing_is_refused(tmp_path):
    """A typo in the parent path must not create a tree of folders (it did before)."""
    src = _source_store(tmp_path)
    dst = tmp_path / "out" / "deeper" / "fused.zarr"
    for overwrite in (False, True):
        with pytest.raises(FileNotFoundError, match=r"dst .*parent folder .*out/deeper.* does not"):
            check(dst, src=src, overwrite=overwrite)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path):
    src = _source_store(tmp_path)
    dst = tmp_path / "fused.zarr"
    fuse_zarr(src, dst, progress=False)
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match=r"dst .*fused.zarr.*overwrite=True") as info:
        check(dst, src=src)
    assert "\n" not in str(info.value)
    # Overwriting a complete output writes beside it and swaps at the end.
    assert check(dst, src=src, overwrite=True) == "staged"
    assert check(dst, src=src, resume=True) == "complete"  # nothing left to do
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("where", ["equal", "inside", "inside_via_dots"])
def test_dst_in_the_source_is_refused(tmp_path, where):
    src = _source_store(tmp_path)
    dst = {
        "equal": src,
        "inside": src / "fused",
        "inside_via_dots": tmp_path / "x" / ".." / "src.zarr" / "0" / "fused",
    }[where]
    before = _tree(src)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="dst .*is the source or lies inside it"):
            check(dst, src=src, overwrite=overwrite, resume=not overwrite)
    assert _tree(src) == before
    assert not (tmp_path / "x").exists()


def test_dst_containing_the_source_is_refused(tmp_path):
    src = _source_store(tmp_path / "project")
    with pytest.raises(ValueError, match="dst .*contains the source"):
        check(tmp_path / "project", src=src, overwrite=True)
    assert src.exists()


def test_symlinked_source_is_recognised(tmp_path):
    src = _source_store(tmp_path)
    link = tmp_path / "link.zarr"
    link.symlink_to(src, target_is_directory=True)
    with pytest.raises(ValueError, match="dst .*source"):
        check(link / "fused", src=src)
    with pytest.raises(ValueError, match="dst .*source"):
        check(src / "fused", src=link)


@pytest.mark.parametrize("link", ["folder", "file"])
def test_a_source_whose_chunks_are_linked_from_inside_dst_is_protected(tmp_path, link):
    """A store whose chunk folder is a link into the output about to be replaced (here the
    output's own level 0 read as a source): ``--overwrite`` deleted the source's chunks (a
    third adversarial run). The folders a source's links lead to are the source too."""
    import json

    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (2, 6, 64, 64), dtype=np.uint16)
    write_stack(tmp_path / "tz.zarr", data, axes="tzyx", chunks=(1, 6, 32, 32))
    dst = tmp_path / "out.zarr"
    fuse_zarr(tmp_path / "tz.zarr", dst, chunks=32, levels=0, progress=False)
    src = tmp_path / "linked.zarr"
    src.mkdir()
    meta = json.loads((dst / "0" / "zarr.json").read_text())
    meta.update(dimension_names=["z", "y", "x"], attributes={})
    (src / "zarr.json").write_text(json.dumps(meta))
    if link == "folder":
        os.symlink(dst / "0" / "c", src / "c")
    else:  # one chunk file linked (a fourth adversarial run: file links were not followed)
        shutil.copytree(dst / "0" / "c", src / "c")
        os.remove(src / "c" / "0" / "0" / "0")
        os.symlink(dst / "0" / "c" / "0" / "0" / "0", src / "c" / "0" / "0" / "0")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="dst .*contains the source"):
        fuse_zarr(src, dst, chunks=32, overwrite=True, progress=False)
    assert _tree(tmp_path) == before


@pytest.fixture()
def bind_mount(tmp_path):
    """``tmp_path/real`` bound at ``tmp_path/bound`` (``mount --bind``, as Apptainer and Docker
    give host folders under other names): one folder, two canonical paths."""
    real, bound = tmp_path / "real", tmp_path / "bound"
    real.mkdir()
    bound.mkdir()
    bind_or_skip(real, bound)
    try:
        yield real, bound
    finally:
        unmount_all_under(tmp_path)


def test_a_source_reached_through_a_bind_mount_is_still_the_source(bind_mount):
    """Canonical paths differ through a bind mount, so a string comparison let a run write a
    group into its source, and ``--overwrite`` replace a TIFF source with its own fusion (a
    fifth adversarial run). The folders are compared by device and inode too."""
    real, bound = bind_mount
    write_stack(real / "stack.ome.zarr", _stack((5, 64, 64)), axes="zyx", chunks=(5, 32, 32))
    fuse_zarr(np.stack([_stack((5, 64, 64))] * 6), real / "chan.ome.tif", axes="czyx",
              chunks=32, progress=False)  # an earlier output: a TIFF of 6 pages  # fmt: skip
    before = _tree(real)
    with pytest.raises(ValueError, match="dst .*source"):
        fuse_zarr(bound / "stack.ome.zarr", real / "stack.ome.zarr" / "fused.ome.zarr",
                  progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="dst .*source"):
        fuse_zarr(real / "stack.ome.zarr", bound / "stack.ome.zarr" / "fused.ome.zarr",
                  progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="dst .*source"):
        fuse_zarr(bound / "chan.ome.tif", real / "chan.ome.tif", axes="zyx", chunks=32,
                  overwrite=True, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="dst .*source"):
        check(bound, src=real / "stack.ome.zarr", overwrite=True)  # dst holds the source
    assert _tree(real) == before


def test_what_is_not_ours_is_never_replaced(tmp_path):
    victim = tmp_path / "documents"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    other_zarr = tmp_path / "other.zarr"
    write_stack(other_zarr, _stack(), axes="zyx")
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    before = _tree(tmp_path)
    for overwrite, resume in ((False, False), (True, False), (False, True)):
        with pytest.raises(FileExistsError, match="dst .*a folder with other content"):
            check(victim, overwrite=overwrite, resume=resume)
        with pytest.raises(FileExistsError, match="dst .*a Zarr store, not an fstack_dask output"):
            check(other_zarr, overwrite=overwrite, resume=resume)
        with pytest.raises(FileExistsError, match="dst .*an existing file"):
            check(a_file, overwrite=overwrite, resume=resume)
    assert _tree(tmp_path) == before
    # An empty directory may be written into, with or without overwrite.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check(empty) == check(empty, overwrite=True) == "empty"


def test_dst_whose_parent_is_a_file(tmp_path):
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    with pytest.raises(FileNotFoundError, match=r"dst .*parent folder .*a.txt.* is not a folder"):
        check(a_file / "fused.zarr")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions"
)
def test_unwritable_parent(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="dst .*not writable"):
            check(locked / "fused.zarr")
    finally:
        locked.chmod(0o700)


def test_memory_url():
    base = f"memory://fstack-test-{uuid.uuid4().hex}"
    write_stack(f"{base}/in.zarr", _stack(), axes="zyx")
    url = f"{base}/out.zarr"
    assert check(url) == "new"
    fuse_zarr(f"{base}/in.zarr", url, progress=False, scheduler="synchronous")
    with pytest.raises(FileExistsError, match="dst"):
        check(url)
    assert check(url, overwrite=True) == "staged"
    with pytest.raises(ValueError, match="dst .*source"):
        check(f"{base}/in.zarr/fused", src=f"{base}/in.zarr")
    assert zarr.open_group(url, mode="r")["0"].shape == (16, 12)


def test_file_urls(tmp_path):
    src = _source_store(tmp_path)
    with pytest.raises(ValueError, match="dst .*source"):
        check((src / "fused").as_uri(), src=src)
    with pytest.raises(ValueError, match="dst .*source"):
        check(f"file:{src}/fused", src=src.as_uri())
    with pytest.raises(FileExistsError, match="dst"):  # a store, but not an output of ours
        check(src.as_uri())


def test_an_overwrite_of_a_dst_whose_name_leaves_no_room_for_its_staging_is_refused(tmp_path):
    """A 244-byte dst name fits; the staging folder beside it (23 bytes more) does not: every
    overwrite failed, exit 1, saying dst "cannot be created" (an eighth adversarial run). It
    is refused before anything is computed, saying why."""
    src = _source_store(tmp_path)
    dst = tmp_path / ("a" * 235 + ".ome.zarr")
    fuse_zarr(src, dst, chunks=8, progress=False)
    before = _tree(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"has a name too long for the folders an overwrite "
        r"writes beside it \(up to 277 bytes, where its filesystem allows 255\)",
    ):
        fuse_zarr(src, dst, chunks=8, progress=False, overwrite=True, nhsize=3)  # fmt: skip
    assert _tree(tmp_path) == before


def test_names_and_paths_too_long_for_the_filesystem_are_refused_before_writing(tmp_path):
    """A TIFF dst named with 242-255 bytes (its working folder's name is 13 bytes longer) and
    a dst whose files' paths would pass PATH_MAX failed mid-run with a raw "[Errno 36] File
    name too long" (an HPC run, 2026-12-05): one line naming dst now, nothing written."""
    src = tmp_path / "src.zarr"
    write_stack(src, np.arange(5 * 40 * 40, dtype=np.uint16).reshape(5, 40, 40), axes="zyx")
    deep = tmp_path
    while len(os.fsencode(deep)) < 4000:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    before = _tree(tmp_path)
    tiff = tmp_path / ("b" * 242 + ".ome.tif")
    with pytest.raises(ValueError, match="its working folder beside it has a name of 263 bytes"):
        fuse_zarr(src, tiff, progress=False)
    for name in ("o.ome.zarr", "o.ome.tif"):
        with pytest.raises(ValueError, match="lies at a path of .* bytes"):
            fuse_zarr(src, deep / name, progress=False)
    assert _tree(tmp_path) == before


def test_ctrl_c_after_an_overwrites_swap_says_the_new_output_is_in_dst(tmp_path, monkeypatch):
    """Ctrl-C while an overwrite removed the previous output, after the swap: the run said
    "interrupted; rerun the same command with --resume to continue" of a dst that held the
    new output, complete. It says so, and where the previous one is; a resume removes it."""
    src = tmp_path / "src.zarr"
    write_stack(src, _stack((5, 64, 64)), axes="zyx", chunks=(5, 32, 32))
    dst = tmp_path / "out.zarr"
    fuse_zarr(src, dst, chunks=32, progress=False)
    real = Destination.remove

    def remove(self, folder, **kwargs):
        if folder.name.startswith(".out.zarr.fstack-staging-"):
            raise KeyboardInterrupt
        return real(self, folder, **kwargs)

    monkeypatch.setattr(Destination, "remove", remove)
    with pytest.raises(KeyboardInterrupt) as stopped:
        fuse_zarr(src, dst, chunks=32, nhsize=5, overwrite=True, progress=False)
    monkeypatch.setattr(Destination, "remove", real)
    (old,) = [n for n in os.listdir(tmp_path) if n.startswith(".out.zarr.fstack-staging-")]
    assert "dst holds the new output, complete" in str(stopped.value)
    assert old in str(stopped.value)
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["nhsize"] == 5
    fuse_zarr(src, dst, chunks=32, nhsize=5, resume=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["out.zarr", "src.zarr"]


def test_a_source_spelled_in_another_case_is_the_source(exfat):
    """On a case-insensitive filesystem whose FUSE driver gives each spelling its own inode,
    ``fuse Src.zarr src.zarr/x.zarr`` wrote its output inside its source (the comparison by
    device and inode saw two folders), and ``SRC.ZARR`` was refused only as "not an fstack_dask
    output". Both are refused as the source, nothing written."""
    src = exfat / "Src.zarr"
    write_stack(src, _stack((5, 32, 32)), axes="zyx")
    if os.stat(src).st_ino == os.stat(exfat / "SRC.ZARR").st_ino:
        pytest.skip("this driver gives both spellings one inode (already compared by it)")
    before = _tree(exfat)
    for dst in (exfat / "src.zarr" / "x.zarr", exfat / "SRC.ZARR"):
        with pytest.raises(ValueError, match="is the source or lies inside it"):
            fuse_zarr(src, dst, overwrite=True, progress=False)
    assert _tree(exfat) == before


_KILLED_BEFORE_THE_SWAP = """
import os, signal, sys
from fstack_dask._outputs import destination
destination.Destination.swap_in = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from fstack_dask._cli.main import main
main(["fuse", *sys.argv[1:], "--overwrite", "--nhsize", "5", "--no-progress"])
"""


def test_an_overwrite_cut_short_is_found_by_a_run_into_dst_spelled_otherwise(exfat):
    """On a case-insensitive filesystem an overwrite of out.zarr killed before its swap left
    .out.zarr.fstack-staging-...; a --resume spelled Out.zarr did not see it ("already
    complete; nothing to resume"), nor did an --overwrite spelled so remove it: hidden beside
    dst for good. It is dst's, however dst is spelled: resumed and swapped in."""
    import subprocess
    import sys

    src, dst = exfat / "src.zarr", exfat / "out.zarr"
    write_stack(src, _stack((5, 32, 32)), axes="zyx")
    fuse_zarr(src, dst, progress=False)
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_THE_SWAP, str(src), str(dst)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert len(os.listdir(exfat)) == 3, os.listdir(exfat)  # the staged output beside dst
    out = fuse_zarr(src, exfat / "Out.zarr", nhsize=5, resume=True, progress=False)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    assert sorted(n.lower() for n in os.listdir(exfat)) == ["out.zarr", "src.zarr"]


# The CLI's --overwrite where dst's folder cannot be renamed (EXDEV, as in an overlayfs lower
# layer: replaced entry by entry), SIGKILLed once the old zarr.json went.
_KILLED_REPLACING_IN_PLACE = """
import errno, os, signal, sys, types
from fstack_dask._locations import remove
from fstack_dask._outputs import folders
def exchange(new, dst):
    raise OSError(errno.EXDEV, "Invalid cross-device link")
folders.exchange = exchange
def unlink_then_die(path):
    os.unlink(path)
    if path.endswith("/out.zarr/zarr.json"):
        os.kill(os.getpid(), signal.SIGKILL)
remove.os = types.SimpleNamespace(**{**vars(os), "unlink": unlink_then_die})
from fstack_dask._cli.main import main
main(["fuse", *sys.argv[1:], "--overwrite", "--nhsize", "5", "--no-progress"])
"""


def test_a_replacement_in_place_cut_short_is_finished_by_a_run_spelled_otherwise(exfat):
    """dst replaced entry by entry (its folder cannot be renamed), killed half way: a
    --resume into it spelled Out.zarr on a case-insensitive filesystem did not find the
    staged output its record names (.out.zarr...) and said it "is gone", exit 2."""
    import subprocess
    import sys

    from safety_util import cli

    src, dst = exfat / "src.zarr", exfat / "out.zarr"
    write_stack(src, _stack((5, 32, 32)), axes="zyx")
    fuse_zarr(src, dst, progress=False)
    killed = subprocess.run([sys.executable, "-c", _KILLED_REPLACING_IN_PLACE, str(src),
                             str(dst)], capture_output=True, text=True, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    info = cli("info", exfat / "Out.zarr")
    assert "being replaced by a new output entry by entry" in info.stdout, info.stdout
    proc = cli("fuse", src, exfat / "Out.zarr", "--nhsize", "5", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert zarr.open_group(dst, mode="r").attrs["fstack_dask"]["nhsize"] == 5
    assert sorted(n.lower() for n in os.listdir(exfat)) == ["out.zarr", "src.zarr"]


def test_folders_named_alike_but_for_case_are_two_places_where_case_counts(tmp_path):
    """Where case counts (ext4, tmpfs), ``src.zarr`` beside the source ``Src.zarr`` is a
    folder of its own: an output inside it is not inside the source."""
    src = tmp_path / "Src.zarr"
    write_stack(src, _stack((5, 32, 32)), axes="zyx")
    (tmp_path / "src.zarr").mkdir()
    if os.path.samefile(src, tmp_path / "src.zarr"):
        pytest.skip("a case-insensitive filesystem")
    fuse_zarr(src, tmp_path / "src.zarr" / "x.zarr", progress=False)
    assert (tmp_path / "src.zarr" / "x.zarr" / "zarr.json").exists()
