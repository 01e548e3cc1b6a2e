"""The pyramidal OME-TIFF output: what it holds (exactly the OME-Zarr output of the same run),
how slide viewers' readers open it, and the safety contract (claimed beside dst, moved into
place when complete, ours by record, resumable).

Real files and processes: the TIFFs are read back with tifffile, tiffslide and OpenSlide
(openslide-bin), runs are killed with SIGKILL at a chosen point of the conversion.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from conftest import tree_digest
from readers_util import need
from safety_util import cli_whose_chunk_writes_fail

import fstack_dask
from fstack_dask import synthetic_stack, write_stack
from fstack_dask._outputs.tiff import NAMESPACE, TILE, tiff_owner

tifffile = need("tifffile")

TIMEOUT = 300


def _grey_source(path, shape=(300, 700), planes=7, channels=2):
    stacks = [
        np.moveaxis(synthetic_stack(shape, planes, seed=s).stack, -1, 0) for s in range(channels)
    ]
    data = np.round(np.stack(stacks) * 3000).astype(np.uint16)  # c, z, y, x
    if channels == 1:
        data = data[0]
    write_stack(path, data, axes="czyx"[-data.ndim :], scale={"y": 0.5, "x": 0.5, "z": 2.0},
                units={a: "micrometer" for a in "zyx"})  # fmt: skip
    return data


def _rgb_source(path, shape=(300, 700), planes=5):
    s = synthetic_stack(shape, planes, seed=3, rgb=True).stack  # [M, N, P, 3]
    data = np.round(np.moveaxis(s, (2, 3), (0, 1)) * 255).astype(np.uint8)  # z, c, y, x
    write_stack(path, np.moveaxis(data, 1, 0), axes="czyx", scale={"y": 0.25, "x": 0.25},
                units={"y": "micrometer", "x": "micrometer"})  # fmt: skip
    return data


def _levels_of(path, series=0):
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[series].levels]


def _cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, check=False, env=env,
    )  # fmt: skip


def test_the_tiff_holds_exactly_the_ome_zarr_output_of_the_same_run(tmp_path):
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src)
    opts = dict(chunks=128, depth_map=True, selectivity_map=True, progress=False)
    out = fstack_dask.fuse_zarr(src, tmp_path / "fused.ome.tif", **opts)
    assert sorted(os.listdir(tmp_path)) == ["fused.ome.tif", "stack.ome.zarr"]  # store gone
    n = len(_levels_of(tmp_path / "fused.ome.tif")) - 1
    assert n == 1  # 700 px wide: one more level fits in one 512 px tile
    ref = fstack_dask.fuse_zarr(src, tmp_path / "fused.ome.zarr", levels=n, **opts)
    for series, node in enumerate((ref, ref["depth"], ref["selectivity"])):
        levels = _levels_of(tmp_path / "fused.ome.tif", series)
        assert len(levels) == n + 1
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level, node[str(k)][:])  # NaN == NaN for the maps
    np.testing.assert_array_equal(out["0"][:], ref["0"][:])
    with tifffile.TiffFile(tmp_path / "fused.ome.tif") as tif:
        assert tif.is_bigtiff and tif.is_ome
        page = tif.pages.first
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (TILE, TILE)
        assert page.tags["Software"].value == "fstack_dask"
        assert len(page.tags["SubIFDs"].value) == n
        assert [s.name for s in tif.series] == ["fused", "depth", "selectivity"]
        xml = tif.ome_metadata
    assert 'PhysicalSizeX="0.5"' in xml and 'PhysicalSizeXUnit="\u00b5m"' in xml
    assert 'Name="c0"' in xml and 'Color="-1"' in xml  # the source's channels: white
    owner = tiff_owner(str(tmp_path / "fused.ome.tif"))
    assert owner["complete"] is True and owner["format"] == "ome-tiff" and NAMESPACE in xml
    assert owner["source_identity"]["location"] == str(src)


def test_rgb_output_opens_in_openslide_and_tiffslide(tmp_path):
    openslide = need("openslide")
    tiffslide = need("tiffslide")
    src = tmp_path / "he.ome.zarr"
    _rgb_source(src, shape=(1100, 600))
    dst = tmp_path / "he.ome.tiff"
    fstack_dask.fuse_zarr(src, dst, chunks=200, progress=False)
    ref = fstack_dask.fuse_zarr(src, tmp_path / "he.ome.zarr2", chunks=200, levels=2,
                                progress=False)  # fmt: skip
    level0 = np.moveaxis(ref["0"][:], 0, -1)
    slide = openslide.OpenSlide(str(dst))
    assert slide.dimensions == (600, 1100)
    region = np.asarray(slide.read_region((37, 501), 0, (400, 300)))
    np.testing.assert_array_equal(region[..., :3], level0[501:801, 37:437])
    assert (region[..., 3] == 255).all()
    slide.close()
    ts = tiffslide.TiffSlide(str(dst))
    # levels until the last fits one tile: 1100 -> 550 -> 275 rows
    assert ts.level_dimensions == ((600, 1100), (300, 550), (150, 275))
    np.testing.assert_array_equal(
        np.asarray(ts.read_region((0, 0), 2, (150, 275)))[..., :3],
        np.moveaxis(ref["2"][:], 0, -1),
    )
    ts.close()
    for k, level in enumerate(_levels_of(dst)):
        np.testing.assert_array_equal(level, np.moveaxis(ref[str(k)][:], 0, -1))


@pytest.mark.parametrize(
    ("chunks", "scheduler"), [(64, "threads"), ((100, 300), "synchronous"), (512, "processes")]
)
def test_same_bytes_of_pixels_whatever_the_chunking_and_scheduler(tmp_path, chunks, scheduler):
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(260, 530), planes=6, channels=1)
    first = tmp_path / "a.tif"
    fstack_dask.fuse_zarr(src, first, chunks=128, progress=False, scheduler="threads")
    other = tmp_path / "b.tif"
    fstack_dask.fuse_zarr(src, other, chunks=chunks, progress=False, scheduler=scheduler)
    for a, b in zip(_levels_of(first), _levels_of(other), strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_runs_of_one_job_write_the_same_tiff_bytes(tmp_path):
    """The OME-XML's UUID was tifffile's uuid1, the clock's time and the host's MAC: the only
    bytes in which two runs of the same job differed (an OME-Zarr output's are the same)."""
    src, dst = tmp_path / "stack.ome.zarr", tmp_path / "out.tif"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    first = dst.read_bytes()
    dst.unlink()
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    assert dst.read_bytes() == first


def test_a_tiff_fstack_dask_did_not_write_is_never_replaced(tmp_path):
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=1)
    tifffile.imwrite(tmp_path / "theirs.ome.tif", np.zeros((4, 8, 8), np.uint16), ome=True)
    (tmp_path / "notes.tif").write_text("a text file with a TIFF name")
    (tmp_path / "folder.tiff").mkdir()
    before = tree_digest(tmp_path)
    for name in ("theirs.ome.tif", "notes.tif", "folder.tiff"):
        for flags in ((), ("--overwrite",), ("--resume",)):
            res = _cli("fuse", src, tmp_path / name, "--no-progress", *flags, cwd=tmp_path)
            assert res.returncode == 2, res.stderr
            assert len(res.stderr.splitlines()) == 1
            assert "fstack_dask did not write; refusing to replace it" in res.stderr
    res = _cli("fuse", src, tmp_path / "missing" / "x.tif", "--no-progress", cwd=tmp_path)
    assert res.returncode == 2 and "parent folder" in res.stderr
    res = _cli("fuse", src, src / "inside.tif", "--no-progress", cwd=tmp_path)
    assert res.returncode == 2 and "is the source or lies inside it" in res.stderr
    assert tree_digest(tmp_path) == before  # nothing written, nothing changed
    # a user's folder where the working store would go: the message names it (it said that
    # the TIFF, which does not exist, was "a folder with other content")
    (tmp_path / ".new.ome.tif.fstack-work").mkdir()
    (tmp_path / ".new.ome.tif.fstack-work" / "mine.txt").write_text("mine")
    before = tree_digest(tmp_path)
    res = _cli("fuse", src, tmp_path / "new.ome.tif", "--no-progress", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "(its working folder '" in res.stderr and ".new.ome.tif.fstack-work')" in res.stderr
    assert tree_digest(tmp_path) == before


def test_a_tiff_with_our_ome_xml_copied_in_is_not_ours(tmp_path):
    """A user's processed image saved with the OME-XML of our TIFF (what OME writers that keep
    the metadata, bioio's or Bio-Formats', do): the provenance in it names the output's id,
    and the private tag that holds it on our first page is not copied. Refused, unchanged."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=1)
    ours = tmp_path / "out.ome.tif"
    assert _cli("fuse", src, ours, "--no-progress", cwd=tmp_path).returncode == 0
    with tifffile.TiffFile(ours) as tif:
        xml, fused = tif.pages.first.description, tif.pages.first.asarray()
    assert tiff_owner(str(ours))["output_id"] in xml
    theirs = tmp_path / "theirs.ome.tif"
    tifffile.imwrite(theirs, fused // 2, description=xml.encode(), metadata=None)
    assert tiff_owner(str(theirs)) is None
    before = tree_digest(tmp_path)
    for flags in (("--overwrite",), ("--resume",)):
        res = _cli("fuse", src, theirs, "--no-progress", *flags, cwd=tmp_path)
        assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
        assert "fstack_dask did not write; refusing to replace it" in res.stderr
    assert tree_digest(tmp_path) == before


def test_a_tiff_whose_provenance_is_nested_too_deeply_is_not_ours(tmp_path):
    """A TIFF at dst whose OME-XML holds our namespace's annotation with JSON nested 100000
    deep (damaged, or crafted) stopped ``--overwrite`` with 'maximum recursion depth
    exceeded', exit 1 (a review, 2026-12-06): it is not ours, refused, unchanged."""
    theirs = tmp_path / "theirs.ome.tif"
    xml = (
        '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        f'<StructuredAnnotations><CommentAnnotation Namespace="{NAMESPACE}"><Value>'
        + "[" * 100000
        + "</Value></CommentAnnotation></StructuredAnnotations></OME>"
    )
    tifffile.imwrite(theirs, np.zeros((8, 8), np.uint8), description=xml, metadata=None)
    assert tiff_owner(str(theirs)) is None


def test_a_file_left_where_the_tiff_is_written_is_replaced_not_rewritten(tmp_path):
    """After an overwrite killed right after its exchange, the working store's partial TIFF
    is the previous TIFF; a resume wrote the new one into that inode, changing the user's
    hard-linked backup of the old TIFF (a third adversarial run)."""
    from fstack_dask._locations import resolve
    from fstack_dask._outputs.tiff import write_tiff

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=1)
    store = tmp_path / "out.ome.zarr"
    fstack_dask.fuse_zarr(src, store, progress=False)
    backup, partial = tmp_path / "backup.tif", tmp_path / "fused.tif.partial"
    tifffile.imwrite(backup, np.ones((8, 8), np.uint16))
    os.link(backup, partial)
    before = backup.read_bytes()
    write_tiff(resolve(store, name="dst"), str(partial))
    assert backup.read_bytes() == before
    np.testing.assert_array_equal(_levels_of(partial)[0], zarr.open_group(str(store))["0"][...])


def test_overwrite_resume_and_already_exists(tmp_path):
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=1)
    dst = tmp_path / "out.tif"
    assert _cli("fuse", src, dst, "--no-progress", cwd=tmp_path).returncode == 0
    first = dst.read_bytes()
    res = _cli("fuse", src, dst, "--no-progress", cwd=tmp_path)
    assert res.returncode == 2 and "already exists" in res.stderr and "--overwrite" in res.stderr
    res = _cli("fuse", src, dst, "--no-progress", "--resume", cwd=tmp_path)
    assert res.returncode == 0 and "already complete" in res.stderr, res.stderr
    res = _cli("fuse", src, dst, "--no-progress", "--resume", "--nhsize", "5", cwd=tmp_path)
    assert res.returncode == 2 and "was written with different nhsize" in res.stderr
    assert dst.read_bytes() == first
    res = _cli("fuse", src, dst, "--no-progress", "--overwrite", "--nhsize", "5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert tiff_owner(str(dst))["nhsize"] == 5
    assert sorted(os.listdir(tmp_path)) == ["out.tif", "stack.ome.zarr"]


@pytest.mark.parametrize("spelled", ["out.tif/.", "sub/../out.tif", "out.ome.tiff/./"])
def test_a_tiff_dst_spelled_another_way_is_a_tiff(tmp_path, spelled):
    """``out.tif/.`` names the place ``out.tif`` does: it was written as a Zarr folder named
    ``out.tif``, exit 0, that no TIFF reader opens. Now the TIFF, however spelled; a
    rerun so spelled is "already exists" as for the plain name."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=1)
    (tmp_path / "sub").mkdir()
    res = _cli("fuse", src, spelled, "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    name = os.path.normpath(spelled)
    assert os.path.isfile(tmp_path / name)
    assert tiff_owner(str(tmp_path / name)) is not None
    assert sorted(os.listdir(tmp_path)) == sorted([name, "stack.ome.zarr", "sub"])
    res = _cli("fuse", src, name, "--no-progress", "--resume", cwd=tmp_path)
    assert res.returncode == 0 and "already complete" in res.stderr, res.stderr
    # info so spelled describes our output ("a single 2-D image, not a focus stack" until g102)
    res = _cli("info", spelled, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "fstack_dask output, pyramidal OME-TIFF" in res.stdout and "complete" in res.stdout


def test_an_ome_zarr_output_named_like_a_tiff_is_named_ours_and_kept(tmp_path):
    """An OME-Zarr output of ours renamed ``out.tif`` (or written so by ``out.tif/.`` before
    g102) was refused as "a folder fstack_dask did not write": it is ours, and no TIFF
    replaces it, with or without --overwrite or --resume; nothing changes."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=1)
    assert _cli("fuse", src, "out.ome.zarr", "--no-progress", cwd=tmp_path).returncode == 0
    os.rename(tmp_path / "out.ome.zarr", tmp_path / "out.tif")
    before = tree_digest(tmp_path)
    for flags in ([], ["--overwrite"], ["--resume"]):
        res = _cli("fuse", src, "out.tif", "--no-progress", *flags, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert "is an fstack_dask OME-Zarr output (a folder named like a TIFF)" in res.stderr
        assert "rm -r" in res.stderr and "did not write" not in res.stderr
    assert tree_digest(tmp_path) == before


def test_a_failed_overwrite_leaves_the_old_tiff_and_resume_finishes(tmp_path, monkeypatch):
    import fstack_dask._outputs.tiff as tiff_out

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(200, 300), planes=5, channels=1)
    dst = tmp_path / "out.ome.tif"
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    old = dst.read_bytes()
    tiles = tiff_out._tiles

    def failing(array, *, rgb):
        yield from []
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(tiff_out, "_tiles", failing)
    with pytest.raises(OSError, match=r"Input/output error.*is unchanged \(the previous TIFF\); "
                       r"the fused image is kept whole in its working folder .* rerun the same "
                       r"command with resume=True, which writes only the TIFF"):  # fmt: skip
        fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False, overwrite=True, nhsize=5)
    assert dst.read_bytes() == old  # the previous output, untouched
    work = tmp_path / ".out.ome.tif.fstack-work"
    # the fused store is kept for the resume; the half-written TIFF, which a resume writes
    # again, is not (kept, it held the space a full disk needed back: an eighth adversarial run)
    assert work.is_dir() and (work / "0").is_dir() and not (work / "fused.tif.partial").exists()
    monkeypatch.setattr(tiff_out, "_tiles", tiles)
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False, resume=True, nhsize=5)
    assert not work.exists() and tiff_owner(str(dst))["nhsize"] == 5
    ref = fstack_dask.fuse_zarr(src, tmp_path / "ref.tif", chunks=64, progress=False, nhsize=5)
    np.testing.assert_array_equal(_levels_of(dst)[0], ref["0"][:])


_KILL_IN_CONVERSION = """
import os, signal, sys
import fstack_dask._outputs.tiff as tiff_out
tiles = tiff_out._tiles
def die_midway(array, *, rgb):
    for k, tile in enumerate(tiles(array, rgb=rgb)):
        if k == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        yield tile
tiff_out._tiles = die_midway
from fstack_dask._cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_the_conversion_then_resume(tmp_path):
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(600, 700), planes=5, channels=1)
    dst = tmp_path / "out.ome.tif"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILL_IN_CONVERSION), "fuse", str(src), str(dst),
         "--chunks", "128", "--no-progress"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not dst.exists()  # nothing half-written at dst
    assert (tmp_path / ".out.ome.tif.fstack-work" / "fused.tif.partial").exists()
    res = _cli("fuse", src, dst, "--chunks", "128", "--no-progress", cwd=tmp_path)
    assert res.returncode == 2 and "unfinished fstack_dask run" in res.stderr
    res = _cli("fuse", src, dst, "--chunks", "128", "--no-progress", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr and "0 of 30 blocks left" in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.ome.tif", "stack.ome.zarr"]
    ref = fstack_dask.fuse_zarr(src, tmp_path / "ref.ome.zarr", chunks=128, levels=1,
                                progress=False)  # fmt: skip
    for k, level in enumerate(_levels_of(dst)):
        np.testing.assert_array_equal(level, ref[str(k)][:])


@pytest.mark.parametrize("at", [r"fstack-work/0/c/", r"fstack-work/1/"])
def test_a_kill_while_the_working_store_is_removed_then_resume(tmp_path, at):
    """Killed after the TIFF is in place, while its working store (marked complete) is
    removed: after its first chunk, or once level 0 is gone. The old code converted what was
    left again on ``--resume``, the CLI's own advice after SIGTERM, and swapped a TIFF with
    zeros for the good one, exit 0; killed after the id file went, it refused every later
    run (a fifth adversarial run). The store is removed, never converted again."""
    from safety_util import KILLED_WHILE_REMOVING

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(600, 700), planes=5, channels=1)  # 2 levels in the TIFF
    dst = tmp_path / "out.ome.tif"
    args = ("fuse", src, dst, "--chunks", "128", "--no-progress")
    child = [sys.executable, "-c", KILLED_WHILE_REMOVING, at, *map(str, args)]
    proc = subprocess.run(child, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / ".out.ome.tif.fstack-work" / "zarr.json").exists()
    ref = fstack_dask.fuse_zarr(src, tmp_path / "ref.ome.zarr", chunks=128, levels=1,
                                progress=False)  # fmt: skip
    expected = [ref[str(k)][:] for k in range(2)]
    for level, want in zip(_levels_of(dst), expected, strict=True):
        np.testing.assert_array_equal(level, want)  # in place before the removal began
    res = _cli(*args, "--resume", cwd=tmp_path)
    assert res.returncode == 0 and "already complete" in res.stderr, res.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.ome.tif", "ref.ome.zarr", "stack.ome.zarr"]
    for level, want in zip(_levels_of(dst), expected, strict=True):
        np.testing.assert_array_equal(level, want)


def test_a_second_run_while_the_working_store_is_removed_is_refused(tmp_path, monkeypatch):
    """The working store was removed without its lock: a second ``--overwrite`` meanwhile
    removed it too, fused into a new one, and the first run's removal then took that one's
    files (a seventh adversarial run). The removal holds the store's lock now."""
    from fstack_dask._errors import DestinationLockedError
    from fstack_dask._outputs.destination import Destination

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(200, 300), planes=5, channels=1)
    dst = tmp_path / "out.ome.tif"
    kwargs = {"chunks": 64, "levels": 0, "progress": False}
    fstack_dask.fuse_zarr(src, dst, **kwargs)
    real, second = Destination.remove, []

    def remove(self, folder, **kw):
        if folder.name.endswith(".fstack-work") and not second:  # the first run's removal
            second.append("started")
            with pytest.raises(DestinationLockedError, match="being written by"):
                fstack_dask.fuse_zarr(src, dst, overwrite=True, **kwargs)
        return real(self, folder, **kw)

    monkeypatch.setattr(Destination, "remove", remove)
    fstack_dask.fuse_zarr(src, dst, overwrite=True, nhsize=5, **kwargs)
    assert second and sorted(os.listdir(tmp_path)) == ["out.ome.tif", "stack.ome.zarr"]
    ref = fstack_dask.fuse_zarr(src, tmp_path / "ref.ome.zarr", nhsize=5, **kwargs)
    np.testing.assert_array_equal(_levels_of(dst)[0], ref["0"][:])


def test_what_a_tiff_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    data = np.random.default_rng(0).integers(0, 9, (5, 40, 40)).astype(np.int64)
    zarr.save_array(str(tmp_path / "s.zarr"), data)
    before = tree_digest(tmp_path)
    with pytest.raises(ValueError, match=r"an OME-TIFF cannot hold dtype int64"):
        fstack_dask.fuse_zarr(tmp_path / "s.zarr", tmp_path / "o.tif", axes="zyx", progress=False)
    with pytest.raises(ValueError, match=r"a TIFF dst must be a local path"):
        fstack_dask.fuse_zarr(tmp_path / "s.zarr", "memory://o.tif", axes="zyx", progress=False)
    assert tree_digest(tmp_path) == before


def test_the_conversion_holds_a_chunk_at_a_time_not_the_image(tmp_path):
    """tracemalloc's peak while converting a 3072 x 4096 uint16 store (24 MiB, chunks of
    512 x 512) stays within a few chunk rows' worth of tiles, far below the image."""
    import tracemalloc

    from fstack_dask._locations import resolve
    from fstack_dask._outputs.tiff import write_tiff

    store = tmp_path / "work.ome.zarr"
    rng = np.random.default_rng(0)
    group = zarr.create_group(str(store), zarr_format=3)
    image = rng.integers(0, 60000, (3072, 4096), dtype=np.uint16)
    group.create_array("0", data=image, chunks=(512, 512), dimension_names=["y", "x"])
    group.attrs.update({
        "ome": {"version": "0.5", "multiscales": [{"name": "fused", "axes": [
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0]}]}]}]},
        "fstack_dask": {"method": "x", "channels": "independent"},
    })  # fmt: skip
    tracemalloc.start()
    write_tiff(resolve(store, name="dst"), str(tmp_path / "out.tif"), maxworkers=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 6 * 2**20 < image.nbytes / 2, peak  # measured: 2.7 MiB of 24 MiB
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), image)


def test_a_working_folder_on_another_filesystem_is_refused_before_anything_is_written(tmp_path):
    """The working folder a symlink to scratch on another filesystem: the whole fusion ran,
    then the TIFF could not be renamed into place (``Invalid cross-device link``, exit 1), and
    every resume did it all again (an eighth adversarial run). Refused at once now."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(scratch)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        src = tmp_path / "stack.ome.zarr"
        _grey_source(src, shape=(64, 80), planes=5, channels=1)
        (scratch / "work").mkdir()
        (tmp_path / ".out.tif.fstack-work").symlink_to(scratch / "work")
        for flags in ((), ("--resume",)):
            res = _cli("fuse", src, tmp_path / "out.tif", "--no-progress", *flags, cwd=tmp_path)
            assert res.returncode == 2, res.stderr
            assert "leads to another filesystem" in res.stderr and len(res.stderr.splitlines()) == 1
            assert os.listdir(scratch / "work") == [] and not (tmp_path / "out.tif").exists()
    finally:
        subprocess.run(["umount", "-l", str(scratch)], check=False)


def test_a_file_left_in_the_working_folder_is_named_by_the_refusal(tmp_path):
    """A user's file in an interrupted run's working folder is kept when the resume removes
    the store; every later run into the TIFF is then refused, and the refusal said only "a
    folder with other content" (an eighth adversarial run): it names the file now."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=1)
    work = tmp_path / ".out.tif.fstack-work"
    work.mkdir()
    (work / "mine.txt").write_text("the user's")
    res = _cli("fuse", src, tmp_path / "out.tif", "--no-progress", "--overwrite", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "('mine.txt')" in res.stderr and "move out what it holds" in res.stderr
    assert os.listdir(work) == ["mine.txt"]


def _two_stacks(src, shape_yx, *, seed, axes, transforms) -> zarr.Group:
    """An OME-Zarr image of two 5-plane uint16 stacks along its first axis (a synthetic stack
    and the same reversed), with NGFF ``axes`` and ``transforms``."""
    data = np.round(np.moveaxis(synthetic_stack(shape_yx, 5, seed=seed).stack, -1, 0) * 999)
    g = zarr.open_group(src, mode="w")
    a = g.create_array("0", shape=(2, 5, *shape_yx), chunks=(1, 5, *shape_yx), dtype="u2",
                       dimension_names=[ax["name"] for ax in axes])  # fmt: skip
    a[...] = np.stack([data, data[::-1]]).astype(np.uint16)
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": transforms}]}]}  # fmt: skip
    return g


def test_every_ngff_unit_reaches_the_tiff_and_its_resolution_tags(tmp_path):
    """An interop run found pixel sizes in 20 of the 26 NGFF lengths (and 18 of 23 times)
    dropped from the OME-TIFF in silence, the spellings "\u00b5m"/"um"/"micron" of an OME-Zarr
    source carried into the output unread, and TIFF resolution tags of 1/1 without a unit,
    so that readers of plain tags (OpenSlide, tiffslide, Pillow) saw no pixel size."""
    src = tmp_path / "stack.ome.zarr"
    units = {"t": "day", "z": "\u00b5m", "y": "inch", "x": "inch"}
    axes = [{"name": n, "type": "time" if n == "t" else "space", "unit": units[n]} for n in "tzyx"]
    scale = [{"type": "scale", "scale": [0.5, 2.0, 1e-4, 2e-4]}]
    _two_stacks(src, (300, 700), seed=1, axes=axes, transforms=scale)
    zarr_out = fstack_dask.fuse_zarr(src, tmp_path / "o.ome.zarr", progress=False, depth_map=True)
    written = {a["name"]: a.get("unit") for a in zarr_out.attrs["ome"]["multiscales"][0]["axes"]}
    assert written == {"t": "day", "y": "inch", "x": "inch"}
    assert zarr_out["depth"].attrs["fstack_dask"]["unit"] == "micrometer"  # read as NGFF names
    fstack_dask.fuse_zarr(src, tmp_path / "o.ome.tif", progress=False)
    with tifffile.TiffFile(tmp_path / "o.ome.tif") as tif:
        xml = tif.ome_metadata
        pages = [tif.pages.first] + [tif.series[0].levels[1].keyframe]
        found = [(p.resolution, p.resolutionunit) for p in pages]
    assert 'PhysicalSizeX="0.0002"' in xml and 'PhysicalSizeXUnit="in"' in xml
    assert 'PhysicalSizeYUnit="in"' in xml and 'TimeIncrementUnit="d"' in xml
    for level, (resolution, unit) in enumerate(found):  # pixels per centimetre, level by level
        assert unit == tifffile.RESUNIT.CENTIMETER
        expected = (1 / (2e-4 * 2.54 * 2**level), 1 / (1e-4 * 2.54 * 2**level))
        np.testing.assert_allclose(resolution, expected, rtol=1e-6)


def test_every_ome_symbol_written_reads_back_as_its_unit():
    """OME-XML symbols were read without regard to case ("Mm", a megametre, as "mm"), and 30
    of those the writer emits read back as another unit or none (an adversarial run)."""
    from fstack_dask._ngff import OME_LENGTHS, OME_TIMES
    from fstack_dask._sources.common import ngff_unit

    for name, (symbol, _) in OME_LENGTHS.items():
        assert ngff_unit(symbol) == name, symbol
    for name, symbol in OME_TIMES.items():
        assert ngff_unit(symbol) == name, symbol
    assert ngff_unit("um") == ngff_unit("UM") == "micrometer"  # spellings of files stay read


def test_the_stage_position_reaches_the_ome_tiff_and_reads_back(tmp_path):
    """The OME-Zarr output kept a source's translation (its stage position) while the OME-TIFF
    dropped it: OME-TIFF readers (QuPath, Bio-Formats) place tiles by Plane PositionX/Y
    (an interop run, 2026-12-05). Every plane of every image carries it, and fstack_dask
    reads it back as the same translation; an image without one gets no positions."""
    src = tmp_path / "stack.ome.zarr"
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"
    ]
    transforms = [{"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]},
                  {"type": "translation", "translation": [0.0, 7.0, 1500.25, -320.5]}]  # fmt: skip
    g = _two_stacks(src, (96, 128), seed=2, axes=axes, transforms=transforms)
    out = tmp_path / "o.ome.tif"
    fstack_dask.fuse_zarr(src, out, progress=False, depth_map=True, channels="independent")
    with tifffile.TiffFile(out) as tif:
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    for image in ome:  # the fused image (two channels) and the depth map's
        planes = image["Pixels"]["Plane"]
        planes = planes if isinstance(planes, list) else [planes]
        assert len(planes) == image["Pixels"]["SizeC"]
        for plane in planes:
            assert (plane["PositionX"], plane["PositionY"]) == (-320.5, 1500.25)
            assert plane["PositionXUnit"] == plane["PositionYUnit"] == "\u00b5m"
    with pytest.warns(UserWarning, match="2 focus planes"):  # the channels read as planes
        again = fstack_dask.fuse_zarr(f"{out}/0", tmp_path / "again.ome.zarr", progress=False,
                                      channels="independent", axes="zyx")  # fmt: skip
    shift = again.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert shift[1]["translation"][-2:] == [1500.25, -320.5]

    # No translation: no positions.
    g.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"] = transforms[:1]
    g.attrs["ome"] = dict(g.attrs["ome"])
    fstack_dask.fuse_zarr(src, tmp_path / "plain.ome.tif", progress=False)
    with tifffile.TiffFile(tmp_path / "plain.ome.tif") as tif:
        assert "Position" not in tif.ome_metadata


def test_a_channel_name_xml_cannot_hold_leaves_the_ome_xml_readable(tmp_path):
    """A source's channel label holding a control character (an OME-Zarr label "\\x1b...")
    was written into the OME-XML as it was: not well-formed XML, so readers lost the channels
    and pixel sizes (tifffile read "iyx"), and a later --overwrite refused the file as not
    ours (an adversarial run on names, 2026-12-06). Such characters become U+FFFD; XML's
    special characters are escaped and read back as they were."""
    src = tmp_path / "stack.ome.zarr"
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"
    ]
    g = _two_stacks(src, (64, 64), seed=4, axes=axes,
                    transforms=[{"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]}])  # fmt: skip
    label = 'a<b&c]]>"\x1b[2J\x00\ufffe\u202ez'
    g.attrs["ome"] = {**g.attrs["ome"], "omero": {"channels": [{"label": label}, {"label": "b"}]}}
    out = tmp_path / "o.ome.tif"
    fstack_dask.fuse_zarr(src, out, progress=False)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].kind == "ome" and tif.series[0].axes == "CYX"
        names = [c["Name"] for c in tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"][
            "Pixels"]["Channel"]]  # fmt: skip
    assert names == ['a<b&c]]>"\ufffd[2J\ufffd\ufffd\u202ez', "b"]
    assert tiff_owner(str(out)) is not None  # ours, so --overwrite replaces it
    fstack_dask.fuse_zarr(src, out, progress=False, overwrite=True)


def test_the_maps_channels_are_named_and_their_values_described(tmp_path):
    """Bio-Formats (Fiji's and QuPath's reader) showed the depth and selectivity maps of a
    multichannel OME-TIFF with unnamed channels, bioio as "Channel:1:0", and nothing in the
    OME-XML said what a map's values are or their unit (a readers' run): a map's channels now
    carry the fused image's names (not its colours) and its Image a Description, as the map's
    Zarr attributes say."""
    import xml.etree.ElementTree as ET

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 80), planes=5, channels=2)
    root = zarr.open_group(src, mode="r+")
    root.attrs["ome"] = {**root.attrs["ome"], "omero": {"channels": [
        {"label": "DAPI", "color": "0000FF"}, {"label": "GFP", "color": "00FF00"}]}}  # fmt: skip
    dst = tmp_path / "fused.ome.tif"
    fstack_dask.fuse_zarr(src, dst, depth_map=True, selectivity_map=True, progress=False)
    with tifffile.TiffFile(dst) as tif:
        ome = ET.fromstring(tif.ome_metadata)
    ns = {"o": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
    images = ome.findall("o:Image", ns)
    assert [i.get("Name") for i in images] == ["fused", "depth", "selectivity"]
    channels = [i.findall("o:Pixels/o:Channel", ns) for i in images]
    assert [[c.get("Name") for c in cs] for cs in channels] == [["DAPI", "GFP"]] * 3
    # blue and green, opaque (OME's signed RGBA); the maps' none (OME's default: white)
    assert [c.get("Color") for c in channels[0]] == [str(0x0000FFFF), str(0x00FF00FF)]
    assert all(c.get("Color") is None for cs in channels[1:] for c in cs)
    described = [getattr(i.find("o:Description", ns), "text", None) for i in images]
    assert described == [
        None,
        "focus position of the plane with the highest focus measure, in micrometer",
        "selectivity S in dB (Pertuz et al. 2013)",
    ]


def test_a_pixel_size_in_no_ome_unit_is_said_to_be_left_out_of_the_tiff(tmp_path):
    """An OME-Zarr input whose y/x unit is no OME unit ('furlong'): the OME-TIFF had no
    PhysicalSizeX/Y and nothing said so, exit 0 (noticed by g46). Now a warning before the
    run names the sizes left out; micrometres say nothing."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(64, 64), planes=5, channels=1)
    group = zarr.open_group(str(src), mode="r+")
    ome = group.attrs["ome"]
    for axis in ome["multiscales"][0]["axes"]:
        axis["unit"] = "furlong"
    group.attrs["ome"] = ome
    proc = _cli("fuse", src, "out.ome.tif", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        "fstack-dask: warning: dst 'out.ome.tif': the OME-TIFF gets no "
        "pixel size (PhysicalSizeY, PhysicalSizeX): the source's (y 0.5 furlong, x 0.5 "
        "furlong) is in no OME length unit; an OME-Zarr dst keeps the number"
    ) in proc.stderr.splitlines()
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata
    _grey_source(tmp_path / "um.ome.zarr", shape=(64, 64), planes=5, channels=1)
    proc = _cli("fuse", "um.ome.zarr", "um.ome.tif", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0 and "pixel size" not in proc.stderr, proc.stderr


def test_a_tiff_on_exfat_is_written_and_overwritten(tmp_path, exfat):
    """exFAT (the USB drives and SD cards of microscopes, exfat-fuse) has no hard links and no
    renameat2: a TIFF dst there failed on its very first run, "Operation not permitted" at the
    move into place, advising --resume, which failed alike (found by the g52 review). The
    name is claimed exclusively, then the finished TIFF moved over the claim. The working
    store beside it goes: every run there warned that it "could not be removed ([Errno 39]
    Directory not empty)", left empty, exfat-fuse keeping the lock file unlinked while its
    flock was held as a hidden file till it was closed."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    ref = tmp_path / "ref.tif"
    fstack_dask.fuse_zarr(src, ref, chunks=64, progress=False)
    dst = exfat / "out.tif"
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    assert dst.read_bytes() == ref.read_bytes()
    assert sorted(os.listdir(exfat)) == ["out.tif"]  # its working store gone
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False, overwrite=True)
    assert dst.read_bytes() == ref.read_bytes()
    assert sorted(os.listdir(exfat)) == ["out.tif"]
    (exfat / "user.tif").write_bytes(b"a user's file")
    with pytest.raises(FileExistsError):
        fstack_dask.fuse_zarr(src, exfat / "user.tif", chunks=64, progress=False)
    assert (exfat / "user.tif").read_bytes() == b"a user's file"


_KILLED_AT_THE_MOVE = textwrap.dedent("""
    import os, signal, sys
    real = os.replace
    def replace(a, b, *args, **kwargs):  # as power lost, or kill -9, at the move into place
        if str(b) == sys.argv[3]:  # fuse src dst ...
            os.kill(os.getpid(), signal.SIGKILL)
        return real(a, b, *args, **kwargs)
    os.replace = replace
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def _killed_on_exfat(tmp_path, exfat, script: str):
    """A TIFF run into ``exfat/out.tif`` by the CLI under ``script``, which kills it; the
    reference TIFF of the same run, dst, and the CLI's arguments."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    ref = tmp_path / "ref.tif"
    fstack_dask.fuse_zarr(src, ref, chunks=64, progress=False)
    dst = exfat / "out.tif"
    args = ["fuse", str(src), str(dst), "--chunks", "64", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return ref, dst, args


def test_a_run_on_exfat_killed_at_the_move_over_its_claim_is_resumed(tmp_path, exfat):
    """Killed between claiming dst's name and moving the finished TIFF over the claim, a run
    on exFAT left the empty claim at dst: --resume and a plain rerun were refused, 'exists
    and is a file fstack_dask did not write' (found by g56 on 0115d66). The claim says whose
    it is: a plain rerun says the run is unfinished, and --resume moves the TIFF over it."""
    ref, dst, args = _killed_on_exfat(tmp_path, exfat, _KILLED_AT_THE_MOVE)
    assert dst.exists() and tiff_owner(str(dst)) is None  # the claim
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "unfinished" in proc.stderr, proc.stderr
    proc = _cli(*args, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dst.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("at", ["move", "claim"])
def test_an_io_error_at_the_move_over_its_claim_leaves_no_claim(tmp_path, exfat, monkeypatch, at):
    """An I/O error (a USB drive's) moving the finished TIFF over its claimed name on exFAT
    left the claim at dst, and --resume was refused as for a file fstack_dask did not write
    (found by g56 on 0115d66); so did a drive full at the claim's write (its one cluster), an
    empty file left at dst, refusing the --resume its error advised (g59 on 6dce2d9): the
    claim is removed, the error said, and --resume finishes."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    ref = tmp_path / "ref.tif"
    fstack_dask.fuse_zarr(src, ref, chunks=64, progress=False)
    dst = exfat / "out.tif"
    name = "replace" if at == "move" else "write"
    real = getattr(os, name)

    def replace(a, b, *args, **kwargs):
        if str(b) == str(dst):
            raise OSError(5, "Input/output error", str(b))
        return real(a, b, *args, **kwargs)

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") == str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, name, replace if at == "move" else write)
    with pytest.raises(OSError, match="Input/output error" if at == "move" else "resume"):
        fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    assert not dst.exists()
    monkeypatch.setattr(os, name, real)
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False, resume=True)
    assert dst.read_bytes() == ref.read_bytes()


def test_a_run_on_exfat_killed_at_its_claim_is_resumed_under_another_case(tmp_path, exfat):
    """exFAT is case-insensitive: a run into out.tif killed at the move over its claim, resumed
    as OUT.tif (the same file there, and the same working folder), was refused, 'exists and is
    a file fstack_dask did not write' (the claim named .out.tif.fstack-work; g59 on 6dce2d9)."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    ref = tmp_path / "ref.tif"
    fstack_dask.fuse_zarr(src, ref, chunks=64, progress=False)
    args = ["fuse", str(src), str(exfat / "out.tif"), "--chunks", "64", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT_THE_MOVE, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    args[2] = str(exfat / "OUT.tif")
    proc = _cli(*args, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (exfat / "OUT.tif").read_bytes() == ref.read_bytes()


def test_info_of_a_run_on_exfat_killed_at_its_claim_says_how_far_it_got(tmp_path, exfat):
    """info of a TIFF dst whose run on exFAT was killed at the move over its claim said
    "is not a readable TIFF file: not a TIFF file: header=b'fsta'", exit 2 (g59 on 6dce2d9):
    it says the run is unfinished and how far it got, as where dst is absent."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    dst = exfat / "out.tif"
    args = ["fuse", str(src), str(dst), "--chunks", "64", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT_THE_MOVE, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    proc = _cli("info", str(dst), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{dst} (not written yet; its run works in " in proc.stdout, proc.stdout
    assert "6 of 6 blocks of level 0 done" in proc.stdout, proc.stdout


_KILLED_AT_THE_CLAIMS_WRITE = textwrap.dedent("""
    import os, signal, sys
    real = os.write
    def write(fd, data):  # as power lost, or kill -9, between the claim's create and write
        if os.readlink(f"/proc/self/fd/{fd}") == sys.argv[3]:  # fuse src dst ...
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fd, data)
    os.write = write
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_an_empty_claim_left_on_exfat_is_told_for_what_it_may_be(tmp_path, exfat):
    """Killed (or the power lost) between creating its claim of dst's name on exFAT and
    writing it, a run left an empty file at dst, and --resume said "exists and is a file
    fstack_dask did not write ... choose another dst" of the run's own claim. An empty
    file is not taken for ours (a user's looks the same): the refusal says what it may be,
    and that removing it lets --resume finish."""
    ref, dst, args = _killed_on_exfat(tmp_path, exfat, _KILLED_AT_THE_CLAIMS_WRITE)
    assert dst.stat().st_size == 0
    proc = _cli(*args, "--resume", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "is an empty file" in proc.stderr and "remove it and rerun with --resume" in proc.stderr
    assert dst.exists() and dst.stat().st_size == 0  # kept
    dst.unlink()
    proc = _cli(*args, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dst.read_bytes() == ref.read_bytes()


def test_a_users_file_put_at_dst_as_an_overwrite_without_exchange_checks_it_is_kept(
    tmp_path, monkeypatch
):
    """Where the filesystem has no renameat2(RENAME_EXCHANGE) (exFAT, NFS, Lustre), an
    overwrite checked that dst was our TIFF, then os.replace'd the new one over whatever was
    there by then: a user's file saved at dst in between was lost. What is at dst is now moved
    aside and checked there; a file not ours goes back to dst, and the run is refused."""
    import fstack_dask._outputs.tiff as tiff_out

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    dst = tmp_path / "out.tif"
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    real_rename, real_owner = tiff_out.renameat2, tiff_out.tiff_owner

    def no_exchange(a, b, flags):  # (as exFAT or NFS answer)
        return False if flags == tiff_out.RENAME_EXCHANGE else real_rename(a, b, flags)

    def owner(path):  # checked ours, then a user's file is saved over it, as a viewer saves
        found = real_owner(path)
        if path == str(dst) and found is not None:
            (tmp_path / "user.tif").write_bytes(b"a user's own image")
            os.replace(tmp_path / "user.tif", dst)
        return found

    monkeypatch.setattr(tiff_out, "renameat2", no_exchange)
    monkeypatch.setattr(tiff_out, "tiff_owner", owner)
    with pytest.raises(FileExistsError, match="is not a TIFF fstack_dask wrote"):
        fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False, overwrite=True)
    assert dst.read_bytes() == b"a user's own image"


def test_an_overwrite_without_exchange_replaces_our_tiff(tmp_path, monkeypatch):
    """The same overwrite, nothing put at dst meanwhile: the new TIFF takes the old one's place
    and nothing is left beside it."""
    import fstack_dask._outputs.tiff as tiff_out

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    ref, dst = tmp_path / "ref.tif", tmp_path / "out.tif"
    fstack_dask.fuse_zarr(src, ref, chunks=64, alpha=0.3, progress=False)
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    real_rename = tiff_out.renameat2

    def no_exchange(a, b, flags):
        return False if flags == tiff_out.RENAME_EXCHANGE else real_rename(a, b, flags)

    monkeypatch.setattr(tiff_out, "renameat2", no_exchange)
    fstack_dask.fuse_zarr(src, dst, chunks=64, alpha=0.3, progress=False, overwrite=True)
    assert dst.read_bytes() == ref.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["out.tif", "ref.tif", "stack.ome.zarr"]


# The CLI's fuse (argv: where to die, then its arguments) without RENAME_EXCHANGE, as on exFAT
# or NFS, SIGKILLed as it replaces our TIFF: once dst is moved aside into the working store
# ("aside"), or once the new TIFF is in place, before the one aside is removed ("placed").
_KILLED_BETWEEN_THE_MOVES = textwrap.dedent("""
    import os, signal, sys
    import fstack_dask._outputs.tiff as tiff_out
    at = sys.argv.pop(1)
    rename, unlink, renameat2 = os.rename, os.unlink, tiff_out.renameat2
    def moved(b):  # dst moved aside (by a rename, or one without replacing)
        if at == "aside" and str(b).endswith("fused.tif.partial.previous"):
            os.kill(os.getpid(), signal.SIGKILL)
    def renamed(a, b, *args, **kwargs):
        rename(a, b, *args, **kwargs)
        moved(b)
    def no_exchange(a, b, flags):
        if flags == tiff_out.RENAME_EXCHANGE:
            return False
        done = renameat2(a, b, flags)
        moved(b)
        return done
    def unlinked(path, *args, **kwargs):
        if at == "placed" and str(path).endswith("fused.tif.partial.previous"):
            os.kill(os.getpid(), signal.SIGKILL)
        unlink(path, *args, **kwargs)
    os.rename, os.unlink, tiff_out.renameat2 = renamed, unlinked, no_exchange
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize(
    ("at", "then"),
    [("aside", ""), ("aside", "--resume"), ("aside", "--overwrite"), ("placed", "")],
)
def test_an_overwrite_without_exchange_killed_between_its_moves_is_settled_by_the_next_run(
    tmp_path, at, then
):
    """An --overwrite of our TIFF where the filesystem cannot exchange (exFAT, NFS) moves dst
    aside into the working store, then the new TIFF in. Killed between the two, it left dst
    missing and the old TIFF in '.out.tif.fstack-work/fused.tif.partial.previous': info said
    'not written yet', --resume kept it as a file fstack_dask did not write, and every later
    --overwrite was refused, 'move out what it holds'. info names it; the next run, plain,
    --resume or --overwrite, puts it back at dst (or removes it where dst holds the new TIFF,
    killed after the second move) under the working store's lock."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    new, dst = tmp_path / "new.tif", tmp_path / "out.tif"
    fstack_dask.fuse_zarr(src, new, chunks=64, alpha=0.3, progress=False)
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    old = dst.read_bytes()
    args = ["fuse", str(src), str(dst), "--chunks", "64", "--no-progress", "--alpha", "0.3"]
    proc = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_THE_MOVES, at, *args,
                           "--overwrite"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    previous = tmp_path / ".out.tif.fstack-work" / "fused.tif.partial.previous"
    assert previous.read_bytes() == old and dst.exists() == (at == "placed")
    info = _cli("info", dst, cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert str(previous) in info.stdout, info.stdout
    said = (
        "the next fuse run into dst puts it back"
        if at == "aside"
        else "next fuse run into dst removes it"
    )
    assert said in info.stdout, info.stdout
    proc = _cli(*args, *[then][: bool(then)], cwd=tmp_path)
    assert not previous.exists()
    if not then:  # dst is the previous TIFF again, or the new one; the overwrite to finish
        assert proc.returncode == 2 and "already exists" in proc.stderr, proc.stderr
        assert ("put back" in proc.stderr) == (at == "aside"), proc.stderr
        # the warning and the refusal name one command, the one that finishes the overwrite
        # (the refusal said "pass --overwrite", which fuses it all again)
        if at == "aside":
            assert "the same fuse command with --resume (resume=True) finishes the overwrite" in (
                proc.stderr
            )
        assert (
            "an overwrite of it was cut short: its new TIFF is unfinished in its working folder "
            f"'{tmp_path / '.out.tif.fstack-work'}'; rerun the same command with --resume to "
            "finish it, or with --overwrite to start it again"
        ) in proc.stderr, proc.stderr
        assert dst.read_bytes() == (old if at == "aside" else new.read_bytes())
        proc = _cli(*args, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dst.read_bytes() == new.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["new.tif", "out.tif", "stack.ome.zarr"]


def test_an_overwrite_without_exchange_never_moves_dst_over_a_file_kept_in_its_place(
    tmp_path, monkeypatch
):
    """Without an exchange, an overwrite moved dst aside with os.rename into
    'fused.tif.partial.previous', replacing what was there: a user's file that an earlier run
    had kept there (saved at dst while that run replaced it) was lost. The move never
    replaces; the run is refused naming it, dst and the file kept."""
    import fstack_dask._outputs.tiff as tiff_out

    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    dst = tmp_path / "out.tif"
    fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False)
    old = dst.read_bytes()
    kept = tmp_path / ".out.tif.fstack-work" / "fused.tif.partial.previous"
    real_rename, real_owner = tiff_out.renameat2, tiff_out.tiff_owner

    def no_exchange(a, b, flags):  # (as exFAT or NFS answer)
        return False if flags == tiff_out.RENAME_EXCHANGE else real_rename(a, b, flags)

    def owner(path):  # dst checked ours: the file an earlier run kept is there by then
        if path == str(dst) and not kept.exists():
            kept.write_bytes(b"a user's own image, kept by an earlier run")
        return real_owner(path)

    monkeypatch.setattr(tiff_out, "renameat2", no_exchange)
    monkeypatch.setattr(tiff_out, "tiff_owner", owner)
    with pytest.raises(FileExistsError, match="which an earlier run kept there"):
        fstack_dask.fuse_zarr(src, dst, chunks=64, progress=False, overwrite=True, nhsize=5)
    assert kept.read_bytes() == b"a user's own image, kept by an earlier run"
    assert dst.read_bytes() == old


# The CLI's fuse (argv: what fails, then its arguments) with an error injected into a TIFF
# run's last steps: ENOSPC as the TIFF is written ("write"), or EIO syncing dst's folder once
# the TIFF was moved there ("placed").
_FAILING_AT_THE_TIFF = textwrap.dedent("""
    import errno, os, sys
    import fstack_dask._outputs.tiff as tiff_out
    import fstack_dask._runs.tiff_output as tiff_run
    at = sys.argv.pop(1)
    fsync_dir, write_tiff = tiff_out.fsync_dir, tiff_run.write_tiff
    def failing_sync(path):
        if at == "placed":
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        fsync_dir(path)
    def failing_write(store, partial, **kwargs):
        if at == "write":
            with open(partial, "wb") as fh:
                fh.write(b"the first strips")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), partial)
        write_tiff(store, partial, **kwargs)
    tiff_out.fsync_dir, tiff_run.write_tiff = failing_sync, failing_write
    from fstack_dask._cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("at", ["write", "placed"])
def test_a_tiff_run_failing_at_its_tiff_says_where_the_output_is_and_what_finishes_it(tmp_path, at):
    """A full disk as the TIFF was written said "dst 'out.tif' is kept with 6 of 6 blocks
    done; rerun with --resume to continue" of a dst never written; an I/O error once the TIFF
    was in place said the same of a dst holding the new TIFF, complete. Each says where the
    output is, whether it is complete, and that --resume finishes the job, which it does."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    ref, dst = tmp_path / "ref.tif", tmp_path / "out.tif"
    fstack_dask.fuse_zarr(src, ref, chunks=64, progress=False)
    args = ["fuse", str(src), str(dst), "--chunks", "64", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _FAILING_AT_THE_TIFF, at, *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    work = tmp_path / ".out.tif.fstack-work"
    last = proc.stderr.strip().splitlines()[-1]
    assert "blocks done" not in last, last
    if at == "write":
        assert last.startswith(
            f"fstack-dask: error: no space left on device while writing dst '{dst}': "
        ), last
        assert (
            f"dst '{dst}' was not written; the fused image is kept whole in its working folder "
            f"'{work}', and the TIFF, which needs up to about 27.34 kiB there, was removed: "
            "rerun the same command with --resume, which writes only the TIFF"
        ) in last, last
        assert not dst.exists() and not (work / "fused.tif.partial").exists()
    else:
        assert (
            f"; dst '{dst}' holds the new TIFF, complete (moved into place before the error), "
            f"its working folder '{work}' is kept: rerun the same command with --resume, which "
            "writes the TIFF again from it, puts it in place and removes it"
        ) in last, last
        assert dst.read_bytes() == ref.read_bytes()
    proc = _cli(*args, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0 of 6 blocks left" in proc.stderr, proc.stderr
    assert dst.read_bytes() == ref.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["out.tif", "ref.tif", "stack.ome.zarr"]


# The CLI's fuse with the disk full at the fourth chunk file its run writes (ENOSPC).
_FULL_AT_THE_FOURTH_CHUNK = cli_whose_chunk_writes_fail("ENOSPC", at=4)


def test_a_tiff_run_on_a_full_disk_says_where_its_blocks_are(tmp_path):
    """A full disk as a TIFF run fused its blocks said "dst 'out.tif' is kept with 3 of 6
    blocks done" of a dst never written (or holding the previous TIFF): the blocks are in its
    working folder, which it names, saying what dst is; --resume finishes."""
    src = tmp_path / "stack.ome.zarr"
    _grey_source(src, shape=(100, 140), planes=4, channels=1)
    ref, dst = tmp_path / "ref.tif", tmp_path / "out.tif"
    fstack_dask.fuse_zarr(src, ref, chunks=64, progress=False)
    args = ["fuse", str(src), str(dst), "--chunks", "64", "--no-progress"]
    work = tmp_path / ".out.tif.fstack-work"
    for flags, dst_is in (([], "is not written yet"), (["--overwrite"], "is unchanged")):
        proc = subprocess.run([sys.executable, "-c", _FULL_AT_THE_FOURTH_CHUNK, *args,
                               "--scheduler", "synchronous", *flags], cwd=tmp_path,
                              capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert (
            proc.stderr.strip()
            .splitlines()[-1]
            .endswith(
                f"no space left on device while writing dst '{dst}': free space or choose another "
                f"dst; dst '{dst}' {dst_is}; 3 of its 6 blocks are done and kept in its working "
                f"folder '{work}'; rerun with --resume to continue"
            )
        ), proc.stderr
        proc = _cli(*args, "--resume", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "3 of 6 blocks left" in proc.stderr, proc.stderr
        assert dst.read_bytes() == ref.read_bytes()
