"""open_tiff on real TIFF files written with tifffile: OME-TIFF, ImageJ hyperstacks, plain."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import tree_digest
from readers_util import need, patch_tiff_tag, read_concurrently, regions

tifffile = need("tifffile")

from fstack_dask._sources.common import MissingExtraError  # noqa: E402
from fstack_dask._sources.tiff import open_tiff  # noqa: E402


def _data(shape, dtype="uint16", seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


def _check_regions(opened, reference, lead=()):
    """Sub-regions read through the reader equal the same regions of the whole file."""
    yx = tuple(reference.shape[opened.axes.index(a)] for a in "yx")
    y, x = opened.axes.index("y"), opened.axes.index("x")
    for ys, xs in regions(yx):
        key = [slice(None)] * reference.ndim
        key[y], key[x] = ys, xs
        for i, s in enumerate(lead):
            key[i] = s
        np.testing.assert_array_equal(opened.array[tuple(key)], reference[tuple(key)])


def test_ome_tiff_axes_sizes_channels(tmp_path):
    data = _data((2, 5, 3, 70, 90))  # TZCYX
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        tile=(32, 32),
        compression="zlib",
        metadata={
            "axes": "TZCYX",
            "PhysicalSizeX": 0.325,
            "PhysicalSizeY": 0.325,
            "PhysicalSizeXUnit": "\u00b5m",
            "PhysicalSizeYUnit": "\u00b5m",
            "PhysicalSizeZ": 250.0,
            "PhysicalSizeZUnit": "nm",
            "TimeIncrement": 1.5,
            "TimeIncrementUnit": "ms",
            "Channel": {"Name": ["DAPI", "GFP", "mCherry"], "Color": [65535, -16776961, -1]},
        },
    )
    opened = open_tiff(path)
    assert opened.kind == "ome-tiff"
    assert opened.axes == "tzcyx"
    assert opened.array.shape == data.shape
    assert opened.array.dtype == np.uint16
    assert opened.array.chunks == (1, 1, 1, 32, 32)  # the file's tiles
    assert opened.scale == {"x": 0.325, "y": 0.325, "z": 250.0, "t": 1.5}
    assert opened.units == {
        "x": "micrometer",
        "y": "micrometer",
        "z": "nanometer",
        "t": "millisecond",
    }
    assert opened.channel_names == ("DAPI", "GFP", "mCherry")
    # OME colours are signed RGBA integers: 65535 = 0x0000FFFF (blue, opaque),
    # -16776961 = 0xFF0000FF (red), -1 = white.
    assert opened.channel_colors == ("0000FF", "FF0000", "FFFFFF")
    assert opened.rgb is False
    assert opened.files == (str(path),)
    assert "OME-TIFF" in opened.description and "series 0" in opened.description
    whole = tifffile.imread(path)
    _check_regions(opened, whole, lead=(slice(1, 2), slice(1, 4)))
    _check_regions(opened, whole)


def test_imagej_hyperstack_spacing_unit_interval_luts(tmp_path):
    data = _data((3, 6, 2, 40, 50))  # TZCYX
    path = tmp_path / "hyper.tif"
    red = np.zeros((3, 256), np.uint8)
    red[0] = np.arange(256)
    green = np.zeros((3, 256), np.uint8)
    green[1] = np.arange(256)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={
            "axes": "TZCYX",
            "spacing": 0.75,
            "unit": "micron",
            "finterval": 30.0,
            "LUTs": [red, green],
        },
    )
    opened = open_tiff(path)
    assert opened.kind == "imagej-tiff"
    assert opened.axes == "tzcyx"
    assert opened.array.shape == data.shape
    # ImageJ writes one uncompressed strip per page: memory-mapped, read by region
    assert opened.array.chunks == (1, 6, 1, 40, 50)
    assert opened.scale == pytest.approx({"x": 0.2, "y": 0.2, "z": 0.75, "t": 30.0})
    assert opened.units == {"x": "micrometer", "y": "micrometer", "z": "micrometer", "t": "second"}
    assert opened.channel_colors == ("FF0000", "00FF00")
    _check_regions(opened, tifffile.imread(path))


def test_imagej_frames_need_axes(tmp_path):
    """A z-stack that ImageJ saved as frames (a common mistake) is refused, then relabelled."""
    data = _data((7, 30, 40))
    path = tmp_path / "frames.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX", "finterval": 2.0})
    with pytest.raises(ValueError, match=r"^axes of ImageJ TIFF .*'TYX'.*pass axes="):
        open_tiff(path)
    opened = open_tiff(path, axes="zyx")
    assert opened.axes == "zyx"
    assert "axes 'zyx' given; the file's axes read 'tyx'" in opened.description
    assert opened.scale == {"z": 2.0} and opened.units == {"z": "second"}  # as the file says
    np.testing.assert_array_equal(opened.array[2:5, 3:9, :], data[2:5, 3:9, :])
    # but a frame interval is no focus step: the source has no z scale, and says why (it
    # had z = 2 seconds, and a depth map in seconds: an interop run)
    from fstack_dask._sources.open import open_source

    source = open_source(path, axes="zyx")
    assert "z" not in source.scale and "z" not in source.units and "z" not in source.translation
    assert any("the axis read as 'z' has a step of 2 second, which is not a length" in w
               for w in source.warnings)  # fmt: skip


def test_plain_multipage_tiff_is_a_page_sequence(tmp_path):
    data = _data((9, 33, 47), dtype="float32")
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for plane in data:  # separate pages without shape metadata: tifffile's axes 'IYX'
            tw.write(plane, metadata=None, resolution=(2000, 2000), resolutionunit="CENTIMETER")
    opened = open_tiff(path)
    assert opened.kind == "tiff"
    assert opened.axes == "zyx"
    assert opened.array.dtype == np.float32
    assert "page sequence axis 'I' read as the focus axis z" in opened.description
    assert opened.scale == pytest.approx({"x": 5.0, "y": 5.0})  # 2000 px/cm = 5 um
    assert opened.units == {"x": "micrometer", "y": "micrometer"}
    _check_regions(opened, tifffile.imread(path))


def test_rgb_and_rgba_pages(tmp_path):
    rgba = _data((4, 20, 30, 4), dtype="uint8")
    tifffile.imwrite(tmp_path / "rgb.tif", rgba[..., :3], photometric="rgb", metadata=None)
    tifffile.imwrite(
        tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"], metadata=None
    )
    for name in ("rgb.tif", "rgba.tif"):
        opened = open_tiff(tmp_path / name)
        assert (opened.axes, opened.rgb, opened.array.shape) == ("zyxc", True, (4, 20, 30, 3))
        np.testing.assert_array_equal(opened.array[1:3, 5:9], rgba[1:3, 5:9, :, :3])
        np.testing.assert_array_equal(opened.array[...], rgba[..., :3])
    assert "alpha" in open_tiff(tmp_path / "rgba.tif").description


def test_pyramid_levels(tmp_path):
    data = _data((4, 256, 192))
    path = tmp_path / "pyramid.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, subifds=2, tile=(64, 64), metadata=meta)
        tw.write(data[:, ::2, ::2], subfiletype=1, tile=(64, 64))
        tw.write(data[:, ::4, ::4], subfiletype=1, tile=(64, 64))
    for level in range(3):
        opened = open_tiff(path, level=level)
        f = 2**level
        assert opened.array.shape == (4, 256 // f, 192 // f)
        assert opened.scale == {"x": 0.5 * f, "y": 0.5 * f, "z": 2.0}
        _check_regions(opened, data[:, ::f, ::f])
    with pytest.raises(ValueError, match=r"^level=3 is out of range.*3 pyramid level"):
        open_tiff(path, level=3)
    with pytest.raises(ValueError, match=r"^series=1 is out of range"):
        open_tiff(path, series=1)


def test_multifile_ome_tiff_lists_every_file(tmp_path):
    """A multi-file OME-TIFF (its OME-XML points at planes in other files): resume must
    fingerprint every file."""
    data = _data((4, 16, 20))
    ns = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
    tiffdata = "".join(
        f'<TiffData FirstZ="{2 * i}" IFD="0" PlaneCount="2">'
        f'<UUID FileName="part{i}.ome.tif">urn:uuid:{i}</UUID></TiffData>'
        for i in range(2)
    )
    for i in range(2):
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{ns}" UUID="urn:uuid:{i}">'
            '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
            'SizeX="20" SizeY="16" SizeZ="4" SizeC="1" SizeT="1" PhysicalSizeZ="1.5">'
            f'<Channel ID="Channel:0:0" SamplesPerPixel="1"/>{tiffdata}</Pixels></Image></OME>'
        )
        tifffile.imwrite(
            tmp_path / f"part{i}.ome.tif",
            data[2 * i : 2 * i + 2],
            description=xml,
            metadata=None,
            photometric="minisblack",
        )
    opened = open_tiff(tmp_path / "part0.ome.tif")
    assert (opened.kind, opened.axes, opened.array.shape) == ("ome-tiff", "zyx", (4, 16, 20))
    assert opened.files == (str(tmp_path / "part0.ome.tif"), str(tmp_path / "part1.ome.tif"))
    assert opened.scale == {"z": 1.5}
    _check_regions(opened, data)


def test_small_strips_are_read_as_whole_pages(tmp_path):
    data = _data((3, 64, 80))
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, data, rowsperstrip=1, photometric="minisblack", compression="zlib",
                     metadata={"axes": "ZYX"})  # fmt: skip
    opened = open_tiff(path)
    assert opened.array.chunks == (1, 64, 80)  # not 64 one-row chunks per page
    _check_regions(opened, data)


def test_reads_are_thread_safe_and_arrays_pickle(tmp_path):
    data = _data((6, 96, 128))
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, data, compression="zlib", tile=(32, 32), metadata={"axes": "ZYX"})
    opened = open_tiff(path)
    keys = [(slice(None), ys, xs) for ys, xs in regions((96, 128), n=40, seed=1)]
    for key, got in zip(keys, read_concurrently(opened.array, keys), strict=True):
        np.testing.assert_array_equal(got, data[key])
    clone = pickle.loads(pickle.dumps(opened.array))  # reopens the file by path
    np.testing.assert_array_equal(clone[2:4, 10:50, 7:9], data[2:4, 10:50, 7:9])
    np.testing.assert_array_equal(opened.array[3], data[3])  # integer index drops the axis


def test_dask_reads_regions(tmp_path):
    da = pytest.importorskip("dask.array")
    from dask.base import tokenize

    data = _data((5, 64, 64))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, tile=(32, 32), metadata={"axes": "ZYX"})
    opened = open_tiff(path)
    lazy = da.from_array(opened.array, chunks=(5, 32, 32))
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), data)
    assert tokenize(opened.array) == tokenize(open_tiff(path).array)


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^path .* does not exist"):
        open_tiff(tmp_path / "missing.tif")
    (tmp_path / "notes.tif").write_text("not a TIFF")
    with pytest.raises(ValueError, match=r"^path .* is not a readable TIFF file"):
        open_tiff(tmp_path / "notes.tif")
    with pytest.raises(ValueError, match=r"^path .* is not a file"):
        open_tiff(tmp_path)
    tifffile.imwrite(tmp_path / "s.tif", _data((5, 8, 8)), metadata={"axes": "ZYX"})
    with pytest.raises(TypeError, match=r"^series must be an integer"):
        open_tiff(tmp_path / "s.tif", series="0")
    with pytest.raises(ValueError, match=r"^level must be an integer >= 0"):
        open_tiff(tmp_path / "s.tif", level=-1)
    with pytest.raises(ValueError, match=r"^axes 'zy' has 2 letters"):
        open_tiff(tmp_path / "s.tif", axes="zy")
    tifffile.imwrite(tmp_path / "one.tif", _data((8, 6)))
    for axes in (None, "zyx"):  # no axes make one image a stack: say what to give instead
        with pytest.raises(ValueError, match=r"^TIFF .* single 2-D image \(8 x 6 px\), not a "
                           r"focus stack: give the folder of the planes"):  # fmt: skip
            open_tiff(tmp_path / "one.tif", axes=axes)


def test_missing_tifffile_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tifffile", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "fstack_dask\[tiff\]"'):
        open_tiff(tmp_path / "any.tif")


def test_old_tifffile_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(tifffile, "__version__", "2025.5.10")  # before its Zarr 3 store
    with pytest.raises(MissingExtraError, match=r"needs tifffile >= 2025\.5\.26 .*found 2025"):
        open_tiff(tmp_path / "any.tif")


# ------------------------------------------------------ headers that claim more than the file


def _write_for(case, path):
    """Write a sound TIFF for `case` (see below); return its data."""
    data = _data((5, 256, 200))
    zyx = {"axes": "ZYX"}
    if case in ("image length", "image length short", "truncated contiguous"):
        tifffile.imwrite(path, data, rowsperstrip=16, metadata=zyx)
    elif case == "ome image length":
        tifffile.imwrite(path, data, ome=True, tile=(64, 64), compression="zlib", metadata=zyx)
    elif case == "imagej image length":
        tifffile.imwrite(path, data, imagej=True, metadata=zyx)
    elif case == "tile byte count":
        tifffile.imwrite(path, data, tile=(64, 64), metadata=zyx)
    elif case in ("zero byte count", "truncated compressed"):
        tifffile.imwrite(path, data, rowsperstrip=16, compression="zlib", metadata=zyx)
    return data


def _lie(case, path):
    """Make the header disagree with the data: patch a tag in place, or cut the file."""
    if case in ("image length", "ome image length", "imagej image length"):
        patch_tiff_tag(path, "ImageLength", 60000)
    elif case == "image length short":  # the rest would be dropped unseen
        patch_tiff_tag(path, "ImageLength", 100)
    elif case == "tile byte count":
        patch_tiff_tag(path, "TileByteCounts", 8000, pages=[0], index=5)
    elif case == "zero byte count":
        patch_tiff_tag(path, "StripByteCounts", 0, pages=[1], index=3)
    else:  # the last 30000 bytes lost, as an interrupted copy leaves it
        os.truncate(path, os.path.getsize(path) - 30000)


LIES = {
    "image length": r"page 0: the header describes 60000 x 200 px in strips of 16 rows, "
    r"3750 strips, but the page lists 16 strip offsets and 16 byte counts",
    "image length short": r"page 0: the header describes 100 x 200 px in strips of 16 rows, "
    r"7 strips, but the page lists 16 strip offsets and 16 byte counts",
    "ome image length": r"page 0: the header describes 60000 x 200 px in tiles of 64 x 64 px, "
    r"3752 tiles, but the page lists 16 tile offsets",
    "imagej image length": r"page 0: the header describes 60000 x 200 px in strips of "
    r"256 rows, 235 strips, but the page lists 1 strip offsets",
    "tile byte count": r"page 0: uncompressed tile 5 of 16 holds 8000 bytes, but a 64 x 64 px "
    r"tile of uint16 need 8192",
    "zero byte count": r"page 1: strip 3 of 16 has no data \(byte count 0\)",
    "truncated compressed": r"page 4: strip \d+ of 16 lies at bytes \d+ to \d+, beyond the end "
    r"of the file \(\d+ bytes\)",
    "truncated contiguous": r"the header describes shape \(5, 256, 200\) stored from byte \d+ "
    r"on, which would end at byte 512\d+, beyond the end of the file",
}


@pytest.mark.parametrize("case", list(LIES))
def test_a_header_that_does_not_match_the_data_is_refused(tmp_path, case):
    """tifffile only warns, and reads what is missing as zeros (a 60000-row image from 256)."""
    path = tmp_path / "lie.tif"
    data = _write_for(case, path)
    sound = open_tiff(path)  # every page checked, and nothing refused while the file is whole
    _check_regions(sound, data)
    sound.array.close()
    _lie(case, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"TIFF '{re.escape(str(path))}' \(series 0\)") as info:
        open_tiff(path)
    assert re.search(LIES[case], str(info.value)), str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


def test_a_missing_companion_file_of_a_multifile_ome_tiff_is_refused(tmp_path):
    """Its planes would be read as zeros."""
    test_multifile_ome_tiff_lists_every_file(tmp_path)
    os.remove(tmp_path / "part1.ome.tif")
    with pytest.raises(ValueError, match=r"page 2 of the series is missing from the file"):
        open_tiff(tmp_path / "part0.ome.tif")


def test_cli_refuses_a_lying_tiff_and_writes_nothing(tmp_path):
    """``fuse`` and ``info``: exit 2, one line naming the file and the page, nothing written."""
    src = tmp_path / "lie.tif"
    _write_for("image length", src)
    _lie("image length", src)
    before = tree_digest(tmp_path)
    for args in (("fuse", src, tmp_path / "out.ome.zarr", "--no-progress"), ("info", src)):
        res = subprocess.run(
            [sys.executable, "-m", "fstack_dask", *map(str, args)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        )  # fmt: skip
        lines = res.stderr.splitlines()
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith(f"fstack-dask: error: TIFF '{src}' (series 0), page 0: ")
        assert res.stdout == ""
    assert tree_digest(tmp_path) == before


def test_a_page_of_another_shape_is_refused_not_dropped(tmp_path):
    """Without ImageJ, OME or shaped metadata tifffile groups pages by shape: page 3 of six,
    64 x 48 among 48 x 64, became a series of its own, and the other five were fused with
    exit 0 and no word (an adversarial run). Now refused, naming the page and both shapes; a
    reduced-resolution page (a thumbnail) is still left out."""
    from PIL import Image

    planes = [_data((64, 48) if i == 3 else (48, 64), dtype="uint8", seed=i) for i in range(6)]
    pil, tf = tmp_path / "pillow.tif", tmp_path / "tifffile.tif"
    images = [Image.fromarray(p) for p in planes]
    images[0].save(pil, save_all=True, append_images=images[1:])
    with tifffile.TiffWriter(tf) as tw:
        for plane in planes:
            tw.write(plane, metadata=None)
    for path in (pil, tf):
        with pytest.raises(ValueError, match=rf"^TIFF '{re.escape(str(path))}': page 3 is "
                           r"64 x 48 px uint8, but the 5 pages of the stack beside it are "
                           r"48 x 64 px uint8; every plane"):  # fmt: skip
            open_tiff(path)
    res = subprocess.run([sys.executable, "-m", "fstack_dask", "fuse", str(pil),
                          str(tmp_path / "o.ome.zarr"), "--no-progress"],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"fstack-dask: error: TIFF '{pil}': page 3 is 64 x 48 "
                                       "px uint8, but the 5 pages of the stack beside it are "
                                       "48 x 64 px uint8; every plane of a stack must have one "
                                       "shape and type (the stack is not fused without one of "
                                       "its planes)"]  # fmt: skip
    assert not (tmp_path / "o.ome.zarr").exists()
    thumb = tmp_path / "thumb.tif"
    stack = np.stack([p for p in planes if p.shape == (48, 64)])
    with tifffile.TiffWriter(thumb) as tw:
        for plane in stack:
            tw.write(plane, metadata=None)
        tw.write(stack[0, ::4, ::4], subfiletype=1, metadata=None)  # reduced resolution
    np.testing.assert_array_equal(open_tiff(thumb).array[...], stack)


def test_pages_written_one_by_one_are_one_stack(tmp_path):
    """``TiffWriter.write`` once per plane, tifffile's defaults: each page is a 'shaped' series
    of its own, and the file was refused as "a single 2-D image" (an adversarial run; Fiji
    opens it as a stack). Its pages are read as z, in page order, region by region."""
    from fstack_dask._sources.open import open_source

    data = _data((6, 48, 64), dtype="uint8")
    path = tmp_path / "loop.tif"
    with tifffile.TiffWriter(path) as tw:
        for plane in data:
            tw.write(plane)
    opened = open_tiff(path)
    assert (opened.kind, opened.axes, opened.array.shape) == ("tiff", "zyx", (6, 48, 64))
    assert "its 6 pages, saved as a series each, read as one" in opened.description
    _check_regions(opened, data)
    again = pickle.loads(pickle.dumps(opened.array))
    np.testing.assert_array_equal(again[2:5, 7:30], data[2:5, 7:30])
    np.testing.assert_array_equal(np.asarray(open_source(path).array[...]), data)
    with pytest.raises(ValueError, match=r"\(series 4\) is a single 2-D image"):
        open_tiff(path, series=4)  # one page chosen: a plane
    # pages of two shapes are no such stack: the first one is read, and refused, as before
    with tifffile.TiffWriter(tmp_path / "two.tif") as tw:
        tw.write(data[0])
        tw.write(data[1, :40])
    with pytest.raises(ValueError, match=r"\(series 0\) is a single 2-D image"):
        open_tiff(tmp_path / "two.tif")


@pytest.mark.parametrize("where", ["thumbnail last", "thumbnail first", "a level per page"])
def test_pages_written_one_by_one_beside_reduced_pages_are_one_stack(tmp_path, where):
    """Planes written one by one, with a thumbnail (``subfiletype=1``) after or before them,
    or each with its own reduced level (``subifds=1``): tifffile makes the reduced page a
    level of a plane's series, or a series of its own, and the stack was refused as "a single
    2-D image (32 x 40 px)", though reduced pages are left out of any other stack (an
    adversarial run on inputs). The planes are read as z, in page order; the levels too."""
    data = _data((5, 32, 40))
    path = tmp_path / "planes.tif"
    with tifffile.TiffWriter(path) as tw:
        if where == "thumbnail first":
            tw.write(data[0, ::4, ::4], subfiletype=1)
        for plane in data:
            tw.write(plane, subifds=int(where == "a level per page"))
            if where == "a level per page":
                tw.write(plane[::2, ::2], subfiletype=1)
        if where == "thumbnail last":
            tw.write(data[0, ::4, ::4], subfiletype=1)
    opened = open_tiff(path)
    assert (opened.axes, opened.array.shape) == ("zyx", (5, 32, 40))
    np.testing.assert_array_equal(opened.array[...], data)
    if where == "a level per page":
        level = open_tiff(path, level=1)
        np.testing.assert_array_equal(level.array[...], data[:, ::2, ::2])


def test_a_tiff_of_several_stacks_is_refused_until_one_is_chosen(tmp_path):
    """A two-position OME-TIFF was fused from its first position in silence, and no option
    chose the other (an interop run): now its stacks are named, as a CZI's scenes are, and
    one is chosen by index or name, after the file or with --scene."""
    from fstack_dask._sources.open import open_source

    a, b = _data((6, 40, 50), seed=1), _data((4, 30, 20), seed=2)
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(a, metadata={"axes": "ZYX", "Name": "pos0"})
        tif.write(b, metadata={"axes": "ZYX", "Name": "pos1"})
    with pytest.raises(ValueError, match=r"holds 2 series: 0 'pos0' \(ZYX 6x40x50\), 1 'pos1'"):
        open_source(path)
    for spec in ("1", "pos1"):
        source = open_source(f"{path}/{spec}")
        np.testing.assert_array_equal(np.asarray(source.array[...]), b)
    with pytest.raises(ValueError, match=r"has no series '2'"):
        open_source(f"{path}/2")
    res = subprocess.run([sys.executable, "-m", "fstack_dask", "fuse", str(path),
                          str(tmp_path / "o.ome.zarr"), "--scene", "pos1", "--no-progress"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    import zarr

    import fstack_dask

    expected = fstack_dask.focus_stack(np.moveaxis(b, 0, -1))
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "o.ome.zarr")["0"][...], expected)
    # one stack beside a 2-D image (a thumbnail, a label) is read without asking
    one = tmp_path / "thumb_first.ome.tif"
    with tifffile.TiffWriter(one, ome=True) as tif:
        tif.write(b[0], metadata={"axes": "YX", "Name": "thumbnail"})
        tif.write(a, metadata={"axes": "ZYX", "Name": "stack"})
    np.testing.assert_array_equal(np.asarray(open_source(one).array[...]), a)
    # and said, in the run's log and by info (the thumbnail was passed over in silence)
    assert open_source(one).notes == ("series 1 'stack' of 2, the only one holding a stack",)
    res = subprocess.run([sys.executable, "-m", "fstack_dask", "info", str(one)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert "series 1 'stack' of 2, the only one holding a stack" in res.stdout, res.stderr
    assert open_source(f"{one}/1").notes == ()  # chosen: nothing to say


def test_a_series_name_that_two_series_share_is_refused(tmp_path):
    """Two positions of one name (a name left at its default): --scene NAME fused the first
    in silence (an adversarial run on inputs). Now both are named by index, and the index
    chooses."""
    from fstack_dask._sources.open import open_source

    a, b = _data((6, 20, 30), seed=1), _data((6, 20, 30), seed=2)
    path = tmp_path / "same.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(a, metadata={"axes": "ZYX", "Name": "stack"})
        tif.write(b, metadata={"axes": "ZYX", "Name": "stack"})
    with pytest.raises(ValueError) as info:
        open_source(f"{path}/stack")
    assert str(info.value) == (
        f"TIFF '{path}' holds 2 series named 'stack' (0, 1); name one by its index, e.g. src "
        f"'{path}/1' (command line: --scene 1)"
    )
    np.testing.assert_array_equal(np.asarray(open_source(f"{path}/1").array[...]), b)


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_uncompressed_tiffs_are_read_by_region_not_by_page(tmp_path, byteorder):
    """tifffile's default, one uncompressed strip per page, was one unit of a whole plane
    that every block decoded (an adversarial run: 50 reads of the whole stack at 4096^2,
    memory growing with the image). Its samples lie contiguous in the file: memory-mapped,
    a block reads its region of every plane. Big-endian samples go the decoding way."""
    data = _data((5, 1100, 1300))
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data, byteorder=byteorder, metadata={"axes": "ZYX"})
    opened = open_tiff(path)
    mapped = byteorder == "<" or sys.byteorder == "big"
    assert opened.array.chunks == ((5, 512, 512) if mapped else (1, 1100, 1300))
    _check_regions(opened, data)
    clone = pickle.loads(pickle.dumps(opened.array))  # maps the file again in a new process
    got = clone[:, 600:700, 1250:]
    assert type(got) is np.ndarray and got.dtype == np.dtype("uint16")  # a copy, not a map
    np.testing.assert_array_equal(got, data[:, 600:700, 1250:])
    rgba = tmp_path / "rgba.tif"
    colours = np.random.default_rng(1).integers(0, 255, (5, 600, 700, 4), dtype=np.uint8)
    tifffile.imwrite(rgba, colours, photometric="rgb", extrasamples=["unassalpha"],
                     metadata={"axes": "ZYXS"})  # fmt: skip
    opened = open_tiff(rgba)
    assert opened.axes == "zyxc" and opened.array.chunks == (5, 512, 512, 3)
    np.testing.assert_array_equal(opened.array[:, 500:, 10:20], colours[:, 500:, 10:20, :3])


def test_a_contiguous_hdf5_dataset_is_read_by_region(tmp_path):
    """h5py's default layout (no chunks) was one unit of the whole stack, read by every
    block (the same adversarial run)."""
    h5py = pytest.importorskip("h5py")
    from fstack_dask._sources.hdf5 import open_hdf5

    data = _data((2, 5, 700, 900))
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("stack", data=data)
    opened = open_hdf5(tmp_path / "s.h5", axes="tzyx")
    assert opened.array.chunks == (1, 5, 512, 512)
    _check_regions(opened, data, lead=(1,))


def test_a_series_index_wins_over_a_name_of_digits(tmp_path):
    """Positions named "1", "2", "3" (numbered from 1): src 'f.ome.tif/2' fused the series
    named "2", index 1, where the refusal had named index 2 (an adversarial run)."""
    from fstack_dask._sources.open import open_source

    stacks = [_data((5, 20, 30), seed=k) for k in range(3)]
    path = tmp_path / "multi.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for k, stack in enumerate(stacks):
            tif.write(stack, metadata={"axes": "ZYX", "Name": str(k + 1)})
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(open_source(f"{path}/{k}").array[...]), stacks[k])
    with tifffile.TiffWriter(tmp_path / "named.ome.tif", ome=True) as tif:
        for k, stack in enumerate(stacks[:2]):
            tif.write(stack, metadata={"axes": "ZYX", "Name": f"pos{k}"})
    got = open_source(f"{tmp_path / 'named.ome.tif'}/pos1").array[...]
    np.testing.assert_array_equal(np.asarray(got), stacks[1])  # a name where no index is


def test_scene_on_a_pattern_and_a_remote_tiff_say_what_they_cannot(tmp_path):
    """Both gave messages that pointed elsewhere ("matches no files", "expected a Zarr
    array or group")."""
    for args, message in (
        (["info", str(tmp_path / "*.tif"), "--scene", "1"], "is a pattern of plane files"),
        (["info", "https://example.org/d/s.ome.tif"], ".tif files are read from a local path"),
    ):
        res = subprocess.run([sys.executable, "-m", "fstack_dask", *args], capture_output=True,
                             text=True, check=False)  # fmt: skip
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_an_ome_tiff_whose_ome_xml_cannot_be_read_is_refused_until_axes_are_given(tmp_path):
    """tifffile writes a channel name as it is, a control character too: the OME-XML is then
    not well-formed, tifffile reads the file as one generic series of all its pages, and its
    2 channels of 6 planes were fused as 12 focus planes of one stack, in silence (an
    adversarial run on names, 2026-12-06). Refused, naming the file and why; axes say what
    the pages are."""
    data = _data((2, 6, 32, 40))  # CZYX
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CZYX", "Channel": {"Name": ["DAPI\x1b[2J", "GFP"]}})  # fmt: skip
    with pytest.raises(ValueError) as info:
        open_tiff(str(path))
    message = str(info.value)
    assert f"OME-TIFF {str(path)!r}: its OME-XML cannot be read (not well-formed" in message
    assert "12 pages" in message and "axes='zyx'" in message and "\n" not in message
    opened = open_tiff(str(path), axes="zyx")  # every page a plane, as the user says
    assert opened.axes == "zyx" and opened.array.shape == (12, 32, 40)
    # A well-formed OME-TIFF is read by its OME-XML, as before.
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CZYX"})
    assert open_tiff(str(path)).axes == "czyx"


def test_tifffile_s_log_is_held_for_the_opening_thread_only(tmp_path):
    """Two threads opening TIFFs at once (two fuse_zarr calls in a user's pipeline) left
    tifffile's logger with ``propagate`` off for good, so every later tifffile warning in the
    process was lost; and a record another thread logged meanwhile was held with the file's."""
    import logging
    import threading

    from fstack_dask._sources.tiff_checks import held_log

    log = logging.getLogger("tifffile")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with held_log():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with held_log():
            b_in.set()
            a_out.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (log.propagate, log.handlers, log.filters) == (True, [], [])

    seen: list[str] = []
    catch = logging.Handler()
    catch.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(catch)
    try:
        with held_log():  # this thread's record waits for the file's verdict ...
            log.warning("from the opening thread")
            other = threading.Thread(target=log.warning, args=("from another thread",))
            other.start()
            other.join()
            assert seen == ["from another thread"]  # ... another thread's goes out at once
        assert seen == ["from another thread", "from the opening thread"]
    finally:
        logging.getLogger().removeHandler(catch)


def test_pyramid_level_of_odd_size_keeps_the_whole_factor(tmp_path):
    """A level halving 65 x 97 px to 33 x 49 (rounded up, as tifffile's and most writers'
    pyramids) or 32 x 48 (rounded down) has pixels twice the size, exactly: the sizes' ratio
    made them 0.985 and 0.990 um of a 0.5 um image, y unlike x (an adversarial run on
    metadata); a level 4 times smaller is 4 times, whatever the rounding."""
    data = _data((3, 65, 97))
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    for name, reduce in (("up.ome.tif", slice(None, None, 2)), ("down.ome.tif", slice(0, -1, 2))):
        with tifffile.TiffWriter(tmp_path / name) as tw:
            tw.write(data, subifds=2, tile=(16, 16), metadata=meta)
            tw.write(data[:, reduce, reduce], subfiletype=1, tile=(16, 16))
            tw.write(data[:, ::4, ::4], subfiletype=1, tile=(16, 16))
        for level, f in ((1, 2), (2, 4)):
            assert open_tiff(tmp_path / name, level=level).scale == {"x": 0.5 * f, "y": 0.5 * f}


def test_imagej_axis_units_origin_and_a_pixel_of_one_unit(tmp_path):
    """ImageJ writes ``yunit=``/``zunit=`` where an axis's unit differs from ``unit=``, its
    escaped micro sign among them, and the origin in pixels: a z step of 200 nm was read as
    200 um, a pixel height of 250 mm as 250 um, the origin dropped, and a pixel of 1 um (its
    resolution 1) written without its unit (an adversarial run on metadata)."""
    data = _data((5, 20, 30))
    path = tmp_path / "units.tif"
    meta = {"axes": "ZYX", "unit": "\\u00B5m", "yunit": "mm", "zunit": "nm", "spacing": 200.0,
            "xorigin": 10.0, "yorigin": -4.0}  # fmt: skip
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 0.004), metadata=meta)
    opened = open_tiff(path)
    assert opened.scale == pytest.approx({"x": 0.5, "y": 250.0, "z": 200.0})
    assert opened.units == {"x": "micrometer", "y": "millimeter", "z": "nanometer"}
    assert opened.translation == pytest.approx({"x": -5.0, "y": 1000.0})
    tifffile.imwrite(path, data, imagej=True, resolution=(1.0, 1.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 2.0})  # fmt: skip
    opened = open_tiff(path)
    assert opened.scale == {"x": 1.0, "y": 1.0, "z": 2.0}
    assert opened.units == {a: "micrometer" for a in "xyz"}


def test_imagej_unit_spelled_the_british_way_or_unknown(tmp_path):
    """ImageJ's unit is free text: "micrometre" (UDUNITS', British) was not known, and the
    pixel size went out as a bare number, as "furlong"'s does, without a word (an
    adversarial run on metadata): the first is micrometer; the second is named in a
    warning."""
    data = _data((5, 20, 30))
    for unit, expected in (("micrometre", "micrometer"), ("Nanometres", "nanometer")):
        tifffile.imwrite(tmp_path / "a.tif", data, imagej=True, resolution=(2.0, 2.0),
                         metadata={"axes": "ZYX", "unit": unit})  # fmt: skip
        opened = open_tiff(tmp_path / "a.tif")
        assert opened.units == {"x": expected, "y": expected} and not opened.warnings
    tifffile.imwrite(tmp_path / "a.tif", data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "furlong", "spacing": 3.0})  # fmt: skip
    opened = open_tiff(tmp_path / "a.tif")
    assert opened.scale == {"x": 0.5, "y": 0.5, "z": 3.0} and opened.units == {}
    assert [w for w in opened.warnings if "unit" in w] == [
        f"ImageJ TIFF {str(tmp_path / 'a.tif')!r} (series 0) states the pixel size of z, y, x in "
        "a unit that is not an OME-NGFF unit: written as a number without a unit"
    ]


def test_ome_planes_whose_z_positions_decrease(tmp_path):
    """A stack taken top down: planes at z = 10, 8, 6 ... um with PhysicalSizeZ 2. The first
    plane's position with the positive step made the depth map say 16 um for the plane at
    4 um (an adversarial run on metadata). Now no z translation, with a warning that the
    depth map holds distances from the first plane; increasing positions are the
    translation."""
    data = _data((4, 20, 30))
    n = len(data)

    def write(positions):
        planes = {"PositionZ": positions, "PositionZUnit": ["\u00b5m"] * n}
        meta = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                "PhysicalSizeZ": 2.0, "Plane": planes}  # fmt: skip
        tifffile.imwrite(tmp_path / "z.ome.tif", data, metadata=meta)
        return open_tiff(tmp_path / "z.ome.tif")

    down = write([10.0, 8.0, 6.0, 4.0])
    assert "z" not in down.translation
    assert [w for w in down.warnings if "decrease" in w] == [
        f"OME-TIFF {str(tmp_path / 'z.ome.tif')!r} (series 0): its planes' z positions "
        "decrease (10, 8 micrometer, ...): a depth map holds each plane's distance from the "
        "first, not its position"
    ]
    up = write([-3.0, -1.0, 1.0, 3.0])
    assert up.translation == {"z": -3.0} and not up.warnings


def test_resolution_tags_follow_the_page_when_the_series_names_its_axes_zxy(tmp_path):
    """XResolution is the page's columns. A stack saved with tifffile's ``axes="ZXY"`` (its
    x the page's rows) had the two pixel sizes swapped, 0.5 um for x where it is 0.25 (an
    adversarial run on metadata)."""
    data = _data((5, 30, 20))  # z, x, y: pages of 30 rows, 20 columns
    path = tmp_path / "zxy.tif"
    tifffile.imwrite(path, data, metadata={"axes": "ZXY"}, resolution=(1e4 / 0.5, 1e4 / 0.25),
                     resolutionunit="CENTIMETER", photometric="minisblack")  # fmt: skip
    opened = open_tiff(path)
    assert opened.axes == "zxy"
    assert opened.scale == pytest.approx({"y": 0.5, "x": 0.25})
    assert opened.units == {"x": "micrometer", "y": "micrometer"}


def test_ome_plane_position_in_another_length_unit(tmp_path):
    """A stage position in mm beside pixels in um (as stage controllers report it) was
    dropped in silence (an adversarial run on metadata): now converted, 0.1 mm = 100 um;
    a position in the stage's "reference frame" (OME's default) is still none."""
    data = _data((4, 20, 30))
    n = len(data)
    planes = {"PositionX": [0.1] * n, "PositionXUnit": ["mm"] * n, "PositionY": [-0.25] * n,
              "PositionYUnit": ["cm"] * n, "PositionZ": [3.0] * n}  # fmt: skip
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0,
            "Plane": planes}  # fmt: skip
    tifffile.imwrite(tmp_path / "p.ome.tif", data, metadata=meta)
    opened = open_tiff(tmp_path / "p.ome.tif")
    assert opened.translation == {"x": 100.0, "y": -2500.0}


@pytest.mark.parametrize("stated", ["X", "Y"])
def test_an_ome_physical_size_of_one_axis_is_given_to_both(tmp_path, stated):
    """An OME-TIFF with PhysicalSizeX 0.5 um and no PhysicalSizeY: the output's y was written
    as 1.0 without a unit beside x's 0.5 um, a pixel twice as high as wide in a viewer, exit
    0 and no word (noticed by g46). Now square pixels, with a warning naming both."""
    meta = {"axes": "ZYX", f"PhysicalSize{stated}": 0.5, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(tmp_path / "s.ome.tif", _data((4, 20, 30)), metadata=meta)
    opened = open_tiff(tmp_path / "s.ome.tif")
    assert opened.scale == {"z": 2.0, "y": 0.5, "x": 0.5}
    assert opened.units == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    lack = "Y" if stated == "X" else "X"
    assert [w for w in opened.warnings if "square" in w] == [
        f"OME-TIFF {str(tmp_path / 's.ome.tif')!r} (series 0): it states PhysicalSize{stated} "
        f"(0.5 micrometer) but no PhysicalSize{lack}: pixels are taken as square, "
        f"{lack.lower()} given the same size"
    ]


def test_an_imagej_inverted_y_axis_leaves_out_the_y_position_and_says_so(tmp_path):
    """ImageJ's ``inverty=true``: y runs up from ``yorigin`` (or from the bottom row). The
    output was given y = -yorigin x pixel height, its rows running down from there, a
    mirrored position, exit 0 and no word (noticed by g46). Now the y position is left out,
    with a warning; x's is kept."""
    path = tmp_path / "inv.tif"
    meta = {"axes": "ZYX", "unit": "um", "spacing": 2.0, "yorigin": 10, "xorigin": 4,
            "inverty": True}  # fmt: skip
    tifffile.imwrite(path, _data((4, 20, 30)), imagej=True, resolution=(2.0, 2.0), metadata=meta)
    opened = open_tiff(path)
    assert opened.translation == {"x": -2.0}
    assert opened.scale == {"z": 2.0, "y": 0.5, "x": 0.5}
    assert opened.warnings == (
        f"ImageJ TIFF {str(path)!r} (series 0): its y axis is inverted (ImageJ's inverty=true: "
        "y runs up); the output's y runs down from the top row, and its y position is left out",
    )
    tifffile.imwrite(path, _data((4, 20, 30)), imagej=True, resolution=(2.0, 2.0),
                     metadata={**meta, "yorigin": 0})  # fmt: skip
    assert (
        open_tiff(path)
        .warnings[0]
        .endswith("y runs up); the output's y runs down from the top row")
    )  # no y position, none said left out


@pytest.mark.parametrize("unit", ["inch", "inches"])
def test_an_imagej_pixel_size_in_inches_is_left_out_with_a_warning(tmp_path, unit):
    """ImageJ writes unit=inch for an image whose resolution is a print density (300 dpi):
    left out without a word, `info` saying the scale is unknown (noticed by g46); 'inches'
    (a known unit since g46) was taken as a pixel of 1/300 inch. Now both are left out, with
    a warning."""
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, _data((4, 20, 30)), imagej=True, resolution=(300.0, 300.0),
                     metadata={"axes": "ZYX", "unit": unit})  # fmt: skip
    opened = open_tiff(path)
    assert opened.scale == {} and opened.units == {}
    assert opened.warnings == (
        f"ImageJ TIFF {str(path)!r} (series 0): it states its pixel size in inches, which is "
        "left out: ImageJ writes that for an image whose resolution is a print density (dpi), "
        "not a calibration",
    )
