"""CZI files written by ZEISS's pylibCZIrw: mosaics with overlapping tiles, Z, C, scenes, RGB.

Every comparison is with the same planes read by pylibCZIrw itself (``read(roi=...,
plane=...)``, the way ZEN composes a mosaic) and fused in memory by ``focus_stack``.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import tree_digest
from readers_util import need, read_concurrently, regions
from vendor_files import write_czi_mosaic

pyczi = need("pylibCZIrw.czi")

import fstack_dask  # noqa: E402
from fstack_dask._sources import czi as czi_reader  # noqa: E402
from fstack_dask._sources.common import MissingExtraError  # noqa: E402
from fstack_dask._sources.open import open_source  # noqa: E402


def _vendor_planes(path, scene, shape_zyx, channels=None, rgb=False):
    """Every plane of a scene as pylibCZIrw reads it: ``[c, z, y, x]`` (RGB: ``[z, y, x, 3]``)."""
    with pyczi.open_czi(str(path)) as r:
        rect = r.scenes_bounding_rectangle_no_pyramid[scene]
        roi = (rect.x, rect.y, rect.w, rect.h)
        if rgb:
            return np.stack(
                [r.read(roi=roi, plane={"Z": z}, scene=scene)[..., ::-1]
                 for z in range(shape_zyx[0])]
            )  # fmt: skip
        return np.stack(
            [
                np.stack([r.read(roi=roi, plane={"Z": z, "C": c}, scene=scene)[..., 0]
                          for z in range(shape_zyx[0])])
                for c in range(channels)
            ]
        )  # fmt: skip


def test_regions_are_read_as_pylibczirw_composes_the_mosaic(tmp_path):
    path = tmp_path / "mosaic.czi"
    written = write_czi_mosaic(path, grid=(3, 4), n_planes=4, n_channels=2,
                               compression="zstd1:ExplicitLevel=1")  # fmt: skip
    src = open_source(path)
    assert (src.axes, src.shape, src.dtype) == ("czyx", (2, 4, 128, 220), np.uint16)
    assert src.kind == "czi" and src.cached_reads and src.unit_shape == (1, 4, 128, 220)
    vendor = _vendor_planes(path, 0, (4,), channels=2)
    np.testing.assert_array_equal(vendor, written[0])  # later tiles drawn over earlier ones
    for ys, xs in regions((128, 220), n=8):
        np.testing.assert_array_equal(src.array[:, :, ys, xs], vendor[:, :, ys, xs])
    keys = [(1, slice(None), ys, xs) for ys, xs in regions((128, 220), n=24, seed=3)]
    for key, got in zip(keys, read_concurrently(src.array, keys), strict=True):
        np.testing.assert_array_equal(got, vendor[key])
    clone = pickle.loads(pickle.dumps(src.array))  # reopens the file by path
    np.testing.assert_array_equal(clone[0, 2, 5:60, 100:219], vendor[0, 2, 5:60, 100:219])


def test_metadata_pixel_sizes_z_step_channel_names_and_colours(tmp_path):
    path = tmp_path / "m.czi"
    write_czi_mosaic(path, n_channels=3, n_planes=3)
    src = open_source(path)
    assert src.scale == pytest.approx({"x": 0.65, "y": 0.65, "z": 2.5})  # metres in the file
    assert src.units == {a: "micrometer" for a in "xyz"}
    assert [c["label"] for c in src.channels] == ["DAPI", "GFP", "mCherry"]
    assert [c["color"] for c in src.channels] == ["0000FF", "00FF00", "FF0000"]


def test_fused_scene_equals_the_vendor_planes_fused_in_memory(tmp_path):
    path = tmp_path / "slide.czi"
    written = write_czi_mosaic(path, scenes=((0, 0), (300, 700)), n_planes=6, n_channels=2)
    with pytest.raises(ValueError, match=r"holds 2 scenes: 0 \(220 x 128 px\), 1 \(220 x 128 "
                       r"px\); name one after the file, e.g\. src '.*slide\.czi/1' \(command "
                       r"line: --scene 1\)$"):  # fmt: skip
        open_source(path)
    with pytest.raises(ValueError, match=r"has no scene '7'; it holds 0 .*, 1 "):
        open_source(f"{path}/7")
    out = fstack_dask.fuse_zarr(f"{path}/1", tmp_path / "out.ome.zarr", chunks=(48, 64),
                                depth_map=True, progress=False)  # fmt: skip
    vendor = _vendor_planes(path, 1, (6,), channels=2)
    np.testing.assert_array_equal(vendor, written[1])
    expected = np.stack([fstack_dask.focus_stack(np.moveaxis(p, 0, -1)) for p in vendor])
    np.testing.assert_array_equal(out["0"][:], expected)
    ome = out.attrs["ome"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == (
        pytest.approx([1.0, 0.65, 0.65])
    )
    assert [c["label"] for c in ome["omero"]["channels"]] == ["DAPI", "GFP"]
    assert out["depth"].attrs["fstack_dask"]["unit"] == "micrometer"  # from the z step


def test_rgb_mosaic_is_fused_as_colour(tmp_path):
    path = tmp_path / "he.czi"
    write_czi_mosaic(path, rgb=True, n_planes=5)
    src = open_source(path)
    assert (src.axes, src.rgb, src.shape) == ("zyxc", True, (5, 128, 220, 3))
    out = fstack_dask.fuse_zarr(path, tmp_path / "out.ome.zarr", chunks=64, progress=False)
    vendor = _vendor_planes(path, 0, (5,), rgb=True)  # R, G, B
    expected = fstack_dask.focus_stack(np.moveaxis(vendor, 0, 2))  # [M, N, P, 3]
    np.testing.assert_array_equal(np.moveaxis(out["0"][:], 0, -1), expected)
    assert out.attrs["fstack_dask"]["channels"] == "rgb"


def test_blocks_read_regions_never_a_whole_plane(tmp_path, monkeypatch):
    """A mosaic wider than a block is read in regions of at most a unit plus the halo."""
    path = tmp_path / "wide.czi"
    write_czi_mosaic(path, grid=(2, 12), n_planes=3, n_channels=1)  # 88 x 636 px
    widths = []
    original = czi_reader._CziArray._read

    def spy(self, reader, region):
        widths.append(region[-1].stop - region[-1].start)
        return original(self, reader, region)

    monkeypatch.setattr(czi_reader, "UNIT", 128)
    monkeypatch.setattr(czi_reader._CziArray, "_read", spy)
    fstack_dask.fuse_zarr(path, tmp_path / "out.ome.zarr", chunks=128, progress=False,
                          scheduler="synchronous")  # fmt: skip
    assert widths and max(widths) <= 128 < 636


def test_cli_scene_option_and_its_refusals(tmp_path):
    path = tmp_path / "slide.czi"
    write_czi_mosaic(path, scenes=((0, 0), (300, 700)), n_planes=3, n_channels=1)

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "fstack_dask", *map(str, args)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
        )  # fmt: skip

    before = tree_digest(tmp_path)
    res = run("fuse", path, tmp_path / "out.ome.zarr", "--no-progress")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "holds 2 scenes" in res.stderr and "--scene 1" in res.stderr
    res = run("info", path, "--scene", "4")
    assert res.returncode == 2 and "has no scene '4'" in res.stderr, res.stderr
    res = run("info", tmp_path / "other.zarr", "--scene", "1")
    assert res.returncode == 2 and "--scene applies to CZI, ND2, LIF and TIFF files" in res.stderr
    assert tree_digest(tmp_path) == before  # nothing written
    res = run("fuse", path, tmp_path / "out.ome.zarr", "--scene", "1", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "(1, 128, 220)" not in res.stdout and "(128, 220)" in res.stdout


def test_missing_pylibczirw_names_the_extra(monkeypatch, tmp_path):
    path = tmp_path / "m.czi"
    write_czi_mosaic(path, n_planes=2, n_channels=1)
    monkeypatch.setitem(sys.modules, "pylibCZIrw", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pylibCZIrw.czi", None)
    with pytest.raises(MissingExtraError, match=r'^reading CZI files needs the package '
                       r"'pylibCZIrw', which is not installed; install it with: pip install "
                       r'"fstack_dask\[czi\]"$'):  # fmt: skip
        open_source(path)


def test_cli_without_pylibczirw_exits_2_naming_the_extra(tmp_path):
    path = tmp_path / "m.czi"
    write_czi_mosaic(path, n_planes=2, n_channels=1)
    code = (
        "import sys; sys.modules['pylibCZIrw'] = None; sys.modules['pylibCZIrw.czi'] = None\n"
        "from fstack_dask._cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    before = tree_digest(tmp_path)
    res = subprocess.run(
        [sys.executable, "-c", code, "fuse", str(path), str(tmp_path / "o.ome.tif")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        "fstack-dask: error: reading CZI files needs the package 'pylibCZIrw', which is not "
        'installed; install it with: pip install "fstack_dask[czi]"'
    ]
    assert tree_digest(tmp_path) == before


def test_a_file_that_is_not_a_czi_is_refused(tmp_path):
    (tmp_path / "notes.czi").write_text("not a CZI")
    with pytest.raises(ValueError, match=r"is not a readable CZI file"):
        open_source(tmp_path / "notes.czi")


def test_a_czi_scene_to_a_pyramidal_ome_tiff(tmp_path):
    """The scanner's file to the slide viewer's: one command, the vendor's planes fused."""
    tifffile = need("tifffile")
    path = tmp_path / "slide.czi"
    write_czi_mosaic(path, scenes=((0, 0), (300, 700)), grid=(3, 11), n_planes=4, n_channels=2)
    dst = tmp_path / "scene1.ome.tif"
    res = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(path), str(dst), "--scene", "1",
         "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    vendor = _vendor_planes(path, 1, (4,), channels=2)  # 2 x 4 x 128 x 584
    expected = np.stack([fstack_dask.focus_stack(np.moveaxis(p, 0, -1)) for p in vendor])
    with tifffile.TiffFile(dst) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        xml = tif.ome_metadata
    np.testing.assert_array_equal(levels[0], expected)
    assert [level.shape for level in levels] == [(2, 128, 584), (2, 64, 292)]  # fits one tile
    assert 'PhysicalSizeX="0.65"' in xml and 'Name="DAPI"' in xml and 'Name="GFP"' in xml
    assert sorted(os.listdir(tmp_path)) == ["scene1.ome.tif", "slide.czi"]


def test_each_scene_keeps_its_offset_in_the_slide(tmp_path):
    """A scene's top-left pixel in the file's subblock coordinates (as pylibCZIrw reports it)
    times the pixel size (the file's Scaling, metres) is the output's translation in
    micrometres: the image's, the depth map's, and the OME-TIFF's PositionX/PositionY. The
    offsets were dropped, so fused scenes could not be laid back where they lay."""
    tifffile = need("tifffile")
    path = tmp_path / "slide.czi"
    write_czi_mosaic(path, scenes=((-1000, 2000), (300, 700)), n_planes=5, n_channels=1)
    with pyczi.open_czi(str(path)) as r:
        rects = r.scenes_bounding_rectangle_no_pyramid
        items = r.metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
        metres = {d["@Id"]: float(d["Value"]) for d in items}
    for scene in (0, 1):
        expected = [rects[scene].y * metres["Y"] * 1e6, rects[scene].x * metres["X"] * 1e6]
        assert open_source(f"{path}/{scene}").translation == pytest.approx(
            {"y": expected[0], "x": expected[1]}
        )
        out = fstack_dask.fuse_zarr(f"{path}/{scene}", tmp_path / f"s{scene}.ome.zarr", chunks=64,
                                    depth_map=True, progress=False)  # fmt: skip
        for group in (out, out["depth"]):
            shift = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
            assert shift[1]["translation"] == pytest.approx(expected)
    assert expected == pytest.approx([195.0, 455.0])  # scene 1: (700, 300) px of 0.65 um
    dst = tmp_path / "scene1.ome.tif"
    res = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(path), str(dst), "--scene", "1",
         "--depth-map", "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    with tifffile.TiffFile(dst) as tif:
        xml = tif.ome_metadata
    planes = re.findall(r"<Plane [^>]*>", xml)
    assert len(planes) == 2, xml  # the fused image's and the depth map's
    assert all('PositionX="455.0" PositionXUnit="µm" PositionY="195.0"' in p for p in planes)


def test_a_resume_of_an_output_begun_before_scene_offsets_says_why_it_is_refused(
    tmp_path, monkeypatch
):
    """An output begun (or finished) by a version that dropped a scene's offset, resumed by
    one that reads it: the file is the one it was, but the resume said "the source changed
    since the run began (its metadata changed)", or "was computed from another source" (g78's
    notes). Still refused (the output holds no position), now in one line that says
    the file's sizes and times are unchanged and this version reads it otherwise, and asks
    for --overwrite;
    nothing is written. A file rewritten since is still "changed"."""
    from safety_util import cli, one_line_error

    from fstack_dask._runs.blocks import FuseJob

    path, dst, done = tmp_path / "slide.czi", tmp_path / "s1.ome.zarr", tmp_path / "done.ome.zarr"
    write_czi_mosaic(path, scenes=((0, 0), (300, 700)), n_planes=5, n_channels=1)
    monkeypatch.setattr(czi_reader, "_translation", lambda *args: {})  # as before 58ddc8c
    fstack_dask.fuse_zarr(f"{path}/1", done, chunks=64, progress=False)
    real = FuseJob.fuse_and_write
    calls = []

    def stop_after_two(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        fstack_dask.fuse_zarr(f"{path}/1", dst, chunks=64, scheduler="synchronous",
                              progress=False)  # fmt: skip
    monkeypatch.undo()
    for out, said in ((dst, "when the run began"), (done, "when it was computed")):
        before = tree_digest(out)
        proc = cli("fuse", f"{path}/1", out, "--resume", "--chunks", "64", "--no-progress")
        line = one_line_error(proc)
        assert proc.returncode == 2 and tree_digest(out) == before
        assert "another source" not in line and "source changed" not in line, line
        assert "have the sizes and times they had" in line and said in line, line
        assert "--overwrite and without --resume" in line, line
    os.utime(path, ns=(1, 1))  # the file touched: it may have been rewritten
    proc = cli("fuse", f"{path}/1", dst, "--resume", "--chunks", "64", "--no-progress")
    assert "sizes and times they had" not in one_line_error(proc)


def test_info_of_the_output_shows_the_scene_s_position(tmp_path):
    """``info`` of a CZI scene's source showed its translation, ``info`` of the output fused
    from it did not (neither OME-Zarr nor OME-TIFF), so a user could not check where the
    output lies without reading its JSON or OME-XML."""
    from safety_util import cli

    path = tmp_path / "slide.czi"
    write_czi_mosaic(path, scenes=((-1000, 2000), (300, 700)), n_planes=5, n_channels=1)
    for dst, unit in (("s0.ome.zarr", "micrometer"), ("s0.ome.tif", "µm")):
        assert cli("fuse", f"{path}/0", tmp_path / dst, "--no-progress").returncode == 0
        proc = cli("info", tmp_path / dst)
        assert proc.returncode == 0, proc.stderr
        assert f"\ntranslation: y=-650 {unit}, x=1300 {unit}\n" in proc.stdout, proc.stdout
