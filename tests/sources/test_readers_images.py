"""open_image_files on real plane files (TIFF, PNG, JPEG) and on the real stacks."""

from __future__ import annotations

import os
import pickle
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import tree_digest
from readers_util import need, patch_tiff_tag, read_concurrently, realdata, regions

tifffile = need("tifffile")
Image = need("PIL.Image")

from fstack_dask._sources.images import natural_key, open_image_files  # noqa: E402


def _planes(n, shape, dtype="uint16", seed=0):
    top = 255 if dtype == "uint8" else 60000
    return np.random.default_rng(seed).integers(0, top, (n, *shape)).astype(dtype)


def _write_shuffled(folder, planes, name, write):
    """Write plane k as name.format(k + 1), in a shuffled order (so mtime order is no help)."""
    folder.mkdir(exist_ok=True)
    order = list(range(len(planes)))
    random.Random(0).shuffle(order)
    for k in order:
        write(folder / name.format(k + 1), planes[k])
    return folder


def _pillow(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _check_regions(array, whole):
    for ys, xs in regions(whole.shape[1:3]):
        np.testing.assert_array_equal(array[:, ys, xs], whole[:, ys, xs])
        np.testing.assert_array_equal(array[2:4, ys, xs], whole[2:4, ys, xs])


def test_tiff_planes_folder_natural_order_and_decodes(tmp_path):
    planes = _planes(12, (40, 56))
    folder = _write_shuffled(tmp_path / "stack", planes, "plane{}.tif", tifffile.imwrite)
    (folder / "README.txt").write_text("not a plane: ignored in a folder")
    opened = open_image_files(folder)
    assert opened.kind == "tiff files"
    assert (opened.axes, opened.rgb) == ("zyx", False)
    assert opened.array.shape == (12, 40, 56) and opened.array.dtype == np.uint16
    assert opened.array.chunks == (1, 40, 56)  # one strip per file: the plane is the read unit
    names = [f.rsplit("/", 1)[1] for f in opened.files]
    assert names == [f"plane{k}.tif" for k in range(1, 13)]  # plane2 before plane10
    assert opened.array.decodes == 0  # opening reads headers only
    whole = np.stack([tifffile.imread(f) for f in opened.files])
    np.testing.assert_array_equal(whole, planes)
    _check_regions(opened.array, whole)
    # Region after region, every file was decoded once: the cache held the stack.
    assert opened.array.decodes == 12


def test_without_cache_each_region_decodes_each_file(tmp_path):
    planes = _planes(5, (20, 30))
    folder = _write_shuffled(tmp_path / "s", planes, "z{}.tif", tifffile.imwrite)
    opened = open_image_files(folder, cache_bytes=0)
    opened.array[:, :10, :10]
    opened.array[:, 10:, 10:]
    assert opened.array.decodes == 10
    # A cache smaller than the stack still helps when regions are read plane by plane.
    small = open_image_files(folder, cache_bytes=2 * planes[0].nbytes)
    for z in range(5):
        for ys, xs in regions((20, 30), n=3):
            np.testing.assert_array_equal(small.array[z, ys, xs], planes[z, ys, xs])
    assert small.array.decodes == 5


def test_tiled_tiff_planes_are_read_by_region(tmp_path):
    planes = _planes(4, (96, 128))
    folder = tmp_path / "tiled"
    folder.mkdir()
    for k, plane in enumerate(planes):
        tifffile.imwrite(folder / f"t_{k:03d}.tiff", plane, tile=(32, 32), compression="zlib")
    opened = open_image_files(folder)
    assert opened.array.chunks == (1, 32, 32)  # the tiles are the read unit
    opened.array[:, 40:50, 40:50]
    opened.array[:, 40:50, 40:50]
    assert opened.array.decodes == 8  # region reads through tifffile, nothing cached
    _check_regions(opened.array, planes)


def test_png16_planes_by_glob(tmp_path):
    planes = _planes(11, (33, 45))
    folder = _write_shuffled(
        tmp_path / "png", planes, "focus_{}.png", lambda p, a: Image.fromarray(a).save(p)
    )
    Image.fromarray(planes[0]).save(folder / "other_1.png")  # not matched by the pattern
    opened = open_image_files(str(folder / "focus_*.png"))
    assert opened.kind == "png files"
    assert opened.array.shape == (11, 33, 45) and opened.array.dtype == np.uint16
    assert opened.array.chunks == (1, 33, 45)
    assert [f.rsplit("_", 1)[1] for f in opened.files] == [f"{k}.png" for k in range(1, 12)]
    whole = np.stack([_pillow(f) for f in opened.files])
    np.testing.assert_array_equal(whole, planes)  # PNG is lossless: the written values
    _check_regions(opened.array, whole)


def test_jpeg_rgb_planes(tmp_path):
    planes = _planes(10, (48, 64, 3), dtype="uint8")
    folder = _write_shuffled(
        tmp_path / "jpg", planes, "IMG_{}.JPG", lambda p, a: Image.fromarray(a).save(p, "JPEG")
    )
    opened = open_image_files(folder)
    assert opened.kind == "jpeg files"
    assert (opened.axes, opened.rgb) == ("zyxc", True)
    assert opened.array.shape == (10, 48, 64, 3) and opened.array.chunks == (1, 48, 64, 3)
    assert [f.rsplit("_", 1)[1] for f in opened.files] == [f"{k}.JPG" for k in range(1, 11)]
    whole = np.stack([_pillow(f) for f in opened.files])  # lossy: compare with the decoder
    _check_regions(opened.array, whole)
    np.testing.assert_array_equal(opened.array[3, 5:9, 7:20, 1], whole[3, 5:9, 7:20, 1])


def _with_orientation(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_exif_orientation_turns_planes_upright(tmp_path):
    """Planes as viewers show them: a camera's portrait JPEGs (orientation 6: turn the
    stored pixels a quarter clockwise) and 16-bit PNGs stored upside down (3)."""
    stored = _planes(4, (24, 40, 3), dtype="uint8", seed=3)
    for k, plane in enumerate(stored):
        Image.fromarray(plane).save(tmp_path / f"p{k}.jpg", exif=_with_orientation(6), quality=95)
    opened = open_image_files(str(tmp_path / "p*.jpg"))
    assert opened.array.shape == (4, 40, 24, 3)  # rows and columns swapped
    assert "turned upright by their EXIF orientation" in opened.description
    raw = np.stack([_pillow(f) for f in opened.files])  # the stored (lossy) pixels
    np.testing.assert_array_equal(opened.array[...], np.rot90(raw, k=-1, axes=(1, 2)))

    grey = _planes(3, (20, 30), seed=4)
    for k, plane in enumerate(grey):
        Image.fromarray(plane).save(tmp_path / f"g{k}.png", exif=_with_orientation(3))
    for k in range(2):  # a stack has at least two planes
        Image.fromarray(grey[k]).save(tmp_path / f"h{k}.png", exif=_with_orientation(1))
    upside_down = open_image_files(str(tmp_path / "g*.png"))
    assert upside_down.array.dtype == np.uint16 and upside_down.array.shape == (3, 20, 30)
    np.testing.assert_array_equal(upside_down.array[:, 2:9, 5:], grey[:, ::-1, ::-1][:, 2:9, 5:])
    plain = open_image_files(str(tmp_path / "h*.png"))  # orientation 1: as stored, no note
    np.testing.assert_array_equal(plain.array[0], grey[0])
    assert "EXIF" not in plain.description
    # Pixels stored turned by software (the tag reset to 1) are upright by their own tag.
    Image.fromarray(np.ascontiguousarray(np.rot90(stored[0], k=-1))).save(tmp_path / "p4.jpg")
    turned = open_image_files(str(tmp_path / "p*.jpg"))
    assert turned.array.shape == (5, 40, 24, 3) and not turned.warnings


@pytest.mark.parametrize(("ours", "odd", "turn"), [(1, 3, 0), (1, 6, 0), (6, 1, -1), (8, 3, 1)])
def test_a_plane_whose_exif_orientation_differs_is_turned_as_the_first(tmp_path, ours, odd, turn):
    """One camera lays its pixels out alike in every plane; an orientation sensor flipping
    between frames changes only the tag. Turned by its own tag, plane 3 of 6 was fused a half
    or quarter turn against the others (its detail in the opposite corner), silently: now
    every plane is turned by the first plane's orientation, and plane 3 is named."""
    stored = _planes(6, (24, 40), dtype="uint8", seed=5)
    for k, plane in enumerate(stored):
        tag = _with_orientation(odd if k == 2 else ours)
        Image.fromarray(plane).save(tmp_path / f"p{k + 1:02d}.png", exif=tag)
    opened = open_image_files(tmp_path)
    np.testing.assert_array_equal(opened.array[...], np.rot90(stored, k=turn, axes=(1, 2)))
    (warning,) = opened.warnings
    assert warning.startswith(f"spec folder '{tmp_path}': the EXIF orientation of 'p03.png' ")
    assert f"({odd}: " in warning and f"from that of 'p01.png' ({ours}: " in warning
    assert "\n" not in warning
    again = pickle.loads(pickle.dumps(opened.array))  # workers turn it alike
    np.testing.assert_array_equal(again[2], opened.array[2])


def test_planes_turned_by_software_are_each_turned_by_their_own_tag(tmp_path):
    """Software that turns a JPEG (Explorer, Preview, ``jpegtran -rotate``) stores the turned
    pixels and resets the tag: the first plane, as the camera left it (stored 24 x 40, tag 6),
    and the others turned (stored 40 x 24, tag 1) are all upright by their own tags. Turned
    all by the first's, the stack was refused (a review, 2026-12-05)."""
    upright = _planes(4, (40, 24), dtype="uint8", seed=7)
    for k, plane in enumerate(upright):
        stored, tag = (np.rot90(plane, k=1), 6) if k == 0 else (plane, 1)  # the camera's: a
        # quarter turn that tag 6 undoes
        Image.fromarray(stored).save(tmp_path / f"p{k + 1:02d}.png", exif=_with_orientation(tag))
    opened = open_image_files(tmp_path)
    np.testing.assert_array_equal(opened.array[...], upright)
    assert not opened.warnings
    again = pickle.loads(pickle.dumps(opened.array))
    np.testing.assert_array_equal(again[...], upright)


def test_alpha_is_dropped(tmp_path):
    rgba = _planes(3, (16, 20, 4), dtype="uint8")
    for k, plane in enumerate(rgba):
        Image.fromarray(plane, "RGBA").save(tmp_path / f"c{k}.png")
        Image.fromarray(plane[..., :2], "LA").save(tmp_path / f"g{k}.png")
    colour = open_image_files(str(tmp_path / "c*.png"))
    assert (colour.axes, colour.rgb, colour.array.shape) == ("zyxc", True, (3, 16, 20, 3))
    assert "alpha channel dropped" in colour.description
    np.testing.assert_array_equal(colour.array[...], rgba[..., :3])
    grey = open_image_files(str(tmp_path / "g*.png"))
    assert (grey.axes, grey.rgb, grey.array.shape) == ("zyx", False, (3, 16, 20))
    np.testing.assert_array_equal(grey.array[:, 2:5], rgba[:, 2:5, :, 0])


def test_list_keeps_its_order_and_arrays_pickle(tmp_path):
    planes = _planes(3, (8, 9))
    files = []
    for k, plane in enumerate(planes):
        files.append(tmp_path / f"p{k}.tif")
        tifffile.imwrite(files[-1], plane)
    opened = open_image_files([files[2], files[0], files[1]])
    np.testing.assert_array_equal(opened.array[...], planes[[2, 0, 1]])
    clone = pickle.loads(pickle.dumps(opened.array))
    assert clone.decodes == 0  # the cache does not travel
    np.testing.assert_array_equal(clone[1], planes[0])


def test_concurrent_reads_decode_each_file_once(tmp_path):
    planes = _planes(6, (64, 64), dtype="uint8")
    for k, plane in enumerate(planes):
        Image.fromarray(plane).save(tmp_path / f"s{k}.png")
    opened = open_image_files(tmp_path)
    keys = [(slice(None), ys, xs) for ys, xs in regions((64, 64), n=30, seed=2)]
    for key, got in zip(keys, read_concurrently(opened.array, keys), strict=True):
        np.testing.assert_array_equal(got, planes[key])
    assert opened.array.decodes == 6


def test_refusals_name_the_offending_file(tmp_path):
    base = _planes(3, (10, 12))
    for k, plane in enumerate(base):
        tifffile.imwrite(tmp_path / f"a{k}.tif", plane)
    tifffile.imwrite(tmp_path / "a3.tif", base[0][:, :11])
    with pytest.raises(ValueError, match=r"^file '.*a3\.tif' has shape \(10, 11\)"):
        open_image_files(tmp_path)
    tifffile.imwrite(tmp_path / "a3.tif", base[0].astype("uint8"))
    with pytest.raises(ValueError, match=r"^file '.*a3\.tif' has shape .* dtype uint8"):
        open_image_files(tmp_path)
    tifffile.imwrite(tmp_path / "a3.tif", np.stack([base[:3]] * 2), photometric="minisblack")
    with pytest.raises(ValueError, match=r"^file '.*a3\.tif' holds .* not one plane; a multi"):
        open_image_files(tmp_path)
    (tmp_path / "a3.tif").unlink()
    Image.fromarray(base[0].astype("uint8")).save(tmp_path / "a4.png")
    with pytest.raises(ValueError, match=r"^spec folder .* mixes formats: .*a4\.png"):
        open_image_files(tmp_path)

    mode = tmp_path / "mode"
    mode.mkdir()
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(mode / "m1.jpg")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(mode / "m2.jpg")
    with pytest.raises(ValueError, match=r"^file .*m2\.jpg' has shape \(6, 6, 3\)"):
        open_image_files(mode)
    Image.fromarray(np.zeros((6, 6), np.uint8)).convert("P").save(mode / "m0.png")
    with pytest.raises(ValueError, match=r"^file .*m0\.png' has Pillow mode 'P'"):
        open_image_files(str(mode / "*.png"))
    imagecodecs = need("imagecodecs")
    (mode / "deep.png").write_bytes(imagecodecs.png_encode(np.zeros((6, 6, 3), np.uint16)))
    with pytest.raises(ValueError, match=r"^file .*deep\.png' is a 16-bit colour PNG"):
        open_image_files([mode / "deep.png"])


@pytest.mark.parametrize(
    "how",
    [{}, {"compression": "zlib", "rowsperstrip": 64}, {"tile": (64, 64)}, {"alpha": True}],
    ids=["uncompressed", "strips", "tiles", "rgba"],
)
def test_planar_rgb_plane_files_are_read_as_rgb(tmp_path, how):
    """RGB planes saved with their colours as planes of their own (PlanarConfiguration
    separate, as some scanners and libtiff tools write) were refused (5ba8294), where the
    same planes stored interleaved are fused as colour. They are read as RGB, by
    region, and fuse to the same output bit for bit."""
    how = dict(how)
    alpha = how.pop("alpha", False)
    rgb = _planes(5, (3 + alpha, 700, 600), dtype="uint8")
    extra = {"extrasamples": ["unassalpha"]} if alpha else {}
    for folder, planar in (("planar", "separate"), ("contig", "contig")):
        (tmp_path / folder).mkdir()
        for k, plane in enumerate(rgb):
            plane = plane if planar == "separate" else np.moveaxis(plane, 0, -1)
            tifffile.imwrite(tmp_path / folder / f"p{k}.tif", plane, photometric="rgb",
                             planarconfig=planar, **how, **extra)  # fmt: skip
    expected = np.moveaxis(rgb, 1, -1)[..., :3]
    for cache in (0, 2**26):  # by region; decoded whole
        opened = open_image_files(tmp_path / "planar", cache_bytes=cache)
        assert opened.axes == "zyxc" and opened.rgb and opened.array.shape == expected.shape
        assert not opened.array.whole  # read by region, strip or tile
        np.testing.assert_array_equal(
            opened.array[1:4, 100:650, 590:, 1:], expected[1:4, 100:650, 590:, 1:]
        )
        np.testing.assert_array_equal(opened.array[...], expected)
    outs = []
    for folder in ("planar", "contig"):
        done = subprocess.run(
            [sys.executable, "-m", "fstack_dask", "fuse", str(tmp_path / folder),
             str(tmp_path / f"{folder}.zarr"), "--no-progress", "--levels", "0"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outs.append(zarr.open_group(str(tmp_path / f"{folder}.zarr"), mode="r")["0"][...])
    np.testing.assert_array_equal(outs[0], outs[1])


def _plane_folder(folder, planes, **kw):
    folder.mkdir()
    for k, plane in enumerate(planes):
        tifffile.imwrite(folder / f"p{k + 1}.tif", plane, **kw)
    return folder


@pytest.mark.parametrize(
    ("how", "write", "message"),
    [
        ("image length", {"rowsperstrip": 8},  # every plane, so their shapes agree
         r"^file '.*p1\.tif', page 0: the header describes 60000 x 56 px in strips of 8 rows, "
         r"7500 strips, but the page lists 5 strip offsets"),
        ("truncated", {},  # one strip, read whole
         r"^file '.*p3\.tif', page 0: strip 0 of 1 lies at bytes 256 to 4736, beyond the end "
         r"of the file \(4236 bytes\)"),
        ("truncated", {"tile": (16, 16), "compression": "zlib"},  # read by region
         r"^file '.*p3\.tif', page 0: tile \d+ of 12 lies at bytes \d+ to \d+, beyond the end"),
        ("byte count", {"rowsperstrip": 8},
         r"^file '.*p3\.tif', page 0: uncompressed strip 1 of 5 holds 100 bytes, but its 8 "
         r"row\(s\) of 56 px of uint16 need 896"),
    ],
)  # fmt: skip
def test_plane_files_whose_header_does_not_match_their_data_are_refused(
    tmp_path, how, write, message
):
    """Checked from the tags every plane's header probe parses: tifffile reads what a plane
    lacks as zeros (or fails mid-run, reading that region)."""
    planes = _planes(4, (40, 56))
    folder = _plane_folder(tmp_path / "s", planes, **write)
    np.testing.assert_array_equal(open_image_files(folder).array[...], planes)  # sound
    if how == "image length":
        for f in folder.iterdir():
            patch_tiff_tag(f, "ImageLength", 60000)
    elif how == "truncated":
        os.truncate(folder / "p3.tif", os.path.getsize(folder / "p3.tif") - 500)
    else:
        patch_tiff_tag(folder / "p3.tif", "StripByteCounts", 100, index=1)
    before = tree_digest(folder)
    with pytest.raises(ValueError, match=message) as info:
        open_image_files(folder)
    assert "\n" not in str(info.value)
    assert tree_digest(folder) == before


def test_cli_refuses_a_truncated_tiff_plane_and_writes_nothing(tmp_path):
    folder = _plane_folder(tmp_path / "s", _planes(4, (40, 56)), tile=(16, 16))
    os.truncate(folder / "p2.tif", os.path.getsize(folder / "p2.tif") - 500)
    before = tree_digest(tmp_path)
    for args in (("fuse", folder, tmp_path / "out.ome.zarr", "--no-progress"), ("info", folder)):
        res = subprocess.run(
            [sys.executable, "-m", "fstack_dask", *map(str, args)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        )  # fmt: skip
        lines = res.stderr.splitlines()
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1, res.stderr
        assert re.match(
            r"fstack-dask: error: file '.*p2\.tif', page 0: tile \d+ of 12 lies", lines[0]
        )
        assert res.stdout == ""
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("kind", ["FIFO", "folder", "socket"])
@pytest.mark.parametrize("by", ["folder", "glob"])
def test_a_plane_name_that_is_no_file_is_refused_naming_it(tmp_path, kind, by):
    """p3.tif a FIFO, a folder or a socket (a copy gone wrong) was left out in silence and the
    stack fused without its plane, exit 0; it is refused, naming it, without opening
    it (a FIFO would block the open), and nothing is written."""
    import socket

    folder = _plane_folder(tmp_path / "s", _planes(5, (8, 9)))
    (folder / "p3.tif").unlink()
    if kind == "FIFO":
        os.mkfifo(folder / "p3.tif")
    elif kind == "folder":
        (folder / "p3.tif").mkdir()
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(folder / "p3.tif"))
    src = folder if by == "folder" else folder / "p*.tif"
    before = sorted(os.listdir(folder))  # (reading a FIFO's content would block)
    res = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(tmp_path / "o.zarr"),
         "--no-progress"], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1
    word = {"FIFO": "a FIFO (named pipe)", "folder": "a folder", "socket": "a socket"}[kind]
    assert f"'p3.tif' is {word}, not a file, so its plane would be left out" in res.stderr
    assert sorted(os.listdir(folder)) == before and not (tmp_path / "o.zarr").exists()


_TOLD = {
    "square pixels": ({"ome": True, "metadata": {"axes": "YX", "PhysicalSizeX": 0.5}},
                      "it states PhysicalSizeX (0.5 micrometer) but no PhysicalSizeY: pixels are "
                      "taken as square, y given the same size"),
    # (and "its y position is left out", of a folder that has none)
    "inverty": ({"imagej": True, "resolution": (2, 2),
                 "metadata": {"unit": "um", "inverty": True, "yorigin": 3}},
                "its y axis is inverted (ImageJ's inverty=true: y runs up); the output's y runs "
                "down from the top row"),
    "inches": ({"imagej": True, "resolution": (300, 300), "metadata": {"unit": "inch"}},
               "it states its pixel size in inches, which is left out"),
}  # fmt: skip


@pytest.mark.parametrize("which", sorted(_TOLD))
@pytest.mark.parametrize("planes", ["all", "one"])
def test_what_a_single_tiff_warns_about_is_said_once_for_a_folder(tmp_path, which, planes):
    """Square pixels assumed from an OME PhysicalSizeX alone, ImageJ's inverty, a pixel size
        in inches: a single TIFF's warnings, which a folder of such planes dropped in silence
    . Said once for the folder, naming the planes that say it."""
    write, text = _TOLD[which]
    folder = tmp_path / "s"
    folder.mkdir()
    for k, plane in enumerate(_planes(6, (8, 9), "uint8")):
        kw = write if planes == "all" or k == 0 else {}
        tifffile.imwrite(folder / f"z{k:02d}.tif", plane, **kw)
    said = [w for w in open_image_files(folder).warnings if text in w]
    who = "each of its 6 plane files" if planes == "all" else "plane file 'z00.tif'"
    assert len(said) == 1 and said[0].startswith(f"spec folder '{folder}', {who}: "), said
    assert said[0].endswith(text) or which == "inches", said  # nothing of a y position


def test_refusals_of_spec(tmp_path):
    with pytest.raises(ValueError, match=r"^spec folder .* holds no TIFF, PNG or JPEG files"):
        open_image_files(tmp_path)
    with pytest.raises(ValueError, match=r"^spec pattern .* matches no files"):
        open_image_files(str(tmp_path / "*.png"))
    with pytest.raises(FileNotFoundError, match=r"^spec .* does not exist"):
        open_image_files(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"^file .*notes\.txt' of spec pattern .* is not a TIFF"):
        open_image_files(str(tmp_path / "*"))
    with pytest.raises(ValueError, match=r"^spec .* is a file; expected a folder"):
        open_image_files(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"^spec is an empty list"):
        open_image_files([])
    with pytest.raises(FileNotFoundError, match=r"^file .*gone\.png' listed in spec"):
        open_image_files([tmp_path / "gone.png"])
    with pytest.raises(TypeError, match=r"^spec must be a folder"):
        open_image_files(3)
    with pytest.raises(TypeError, match=r"^cache_bytes must be an integer"):
        open_image_files(tmp_path, cache_bytes=1.5)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "bad.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"^file .*bad\.png' is not a readable image"):
        open_image_files([tmp_path / "bad.png"])


def test_natural_key():
    names = ["z10.tif", "z9.tif", "z1.tif", "Z2.tif", "z2b.tif", "a.tif"]
    assert sorted(names, key=natural_key) == [
        "a.tif",
        "z1.tif",
        "Z2.tif",
        "z2b.tif",
        "z9.tif",
        "z10.tif",
    ]


@pytest.mark.parametrize(
    ("names", "warned"),
    [
        (["img_z0.5um", "img_z1um", "img_z1.5um", "img_z2um", "img_z2.5um", "img_z10um"], False),
        (["z-3", "z-2", "z-1", "z0", "z1", "z2", "z3"], False),
        (["stack_z-02um", "stack_z-01um", "stack_z+00um", "stack_z+01um", "stack_z+02um"], False),
        (["z-1.5", "z-1", "z-0.5", "z0", "z0.5", "z1", "z1.5"], False),
        (["stack-7", "stack-8", "stack-9", "stack-10", "stack-11"], False),  # separators
        (["2024-05-01_p003", "2024-05-01_p010", "2024-05-02_p001", "2024-12-01_p002"], False),
        (["scan_2024.05.01_z1", "scan_2024.05.01_z2", "scan_2024.05.01_z10"], False),
        # (t-2 once held z-1 and z1 again: two time points, refused as two stacks since)
        (["cell_t-1_z-1", "cell_t-1_z0", "cell_t-1_z1", "cell_t-2_z2", "cell_t-2_z3"], False),
        (["x1.1", "x1.10", "x1.2", "x1.9"], True),  # sections, or decimals? said
    ],
)  # fmt: skip
def test_plane_files_in_focus_order_signs_and_decimals(tmp_path, names, warned):
    """Focus positions written with %g ("0.5um", "1um") and signed ones ("z-3" ... "z3", a
    stack centred on focus) were fused out of order (0.5, 1.5, 1, ...; z0 ... z3, z-1 ...
    z-3), silently or with a warning suggesting a glob that selected the same files. A "-"
    in every name at its place is a separator (a date, "stack-1"), not a sign."""
    planes = _planes(len(names), (6, 7))
    order = list(range(len(names)))
    random.Random(1).shuffle(order)
    for k in order:  # written shuffled: the directory order is no help
        tifffile.imwrite(tmp_path / f"{names[k]}.tif", planes[k])
    opened = open_image_files(tmp_path)
    assert [os.path.basename(f)[:-4] for f in opened.files] == names
    np.testing.assert_array_equal(opened.array[...], planes)
    assert len(opened.warnings) == warned
    if warned:
        assert opened.warnings[0].startswith(
            f"spec folder '{tmp_path}': 'x1.10.tif' is ordered before 'x1.2.tif', reading 1.10 "
            "and 1.2 as decimal numbers; if the digits after the dot count on instead"
        )


@pytest.mark.parametrize(
    ("names", "said"),
    [
        ([f"cell_ch{c}_z{z:02d}" for c in (0, 1) for z in range(1, 6)],
         " holds more than one stack: 'cell_ch0_z01.tif' and 'cell_ch1_z01.tif' are both "
         "numbered 1 in stacks of 5 planes (channels, time points, tiles or series apart), and "
         "would be fused as one stack of 10 planes; select one stack with a glob such as "
         "'{folder}/cell_ch0_z*.tif'"),
        ([f"{s}_z{z:02d}" for s in "ab" for z in range(1, 5)],
         " holds more than one stack: 'a_z01.tif' and 'b_z01.tif' are both numbered 1 in "
         "stacks of 4 planes"),
        ([f"tile_x{x}_y{y}_z{z}" for x in (0, 1) for y in (0, 1) for z in range(3)],
         " holds more than one stack: 'tile_x0_y0_z0.tif' and 'tile_x0_y1_z0.tif' are both "
         "numbered 0 in stacks of 3 planes"),
        (["z1", "z01", "z2", "z3"],
         ": 'z01.tif' and 'z1.tif' are numbered alike, so their order in the stack is a guess"),
        (["z-1", "z0", "z1", "z+1"],  # (both fused, one position twice)
         ": 'z+1.tif' and 'z1.tif' are numbered alike, so their order in the stack is a guess"),
        (["z-1", "z-0", "z0", "z1"],  # (%g writes -0.0 so: both fused, one position twice)
         ": 'z-0.tif' and 'z0.tif' are numbered alike, so their order in the stack is a guess"),
        (["z-0.5", "z-0.0", "z0.0", "z0.5"],
         ": 'z-0.0.tif' and 'z0.0.tif' are numbered alike, so their order in the stack is a "
         "guess"),
    ],
)  # fmt: skip
def test_a_folder_of_several_stacks_is_refused(tmp_path, names, said):
    """Two channels (``_ch0_``/``_ch1_``), two series (``a_``/``b_``) or mosaic tiles saved as
    planes in one folder were fused as one stack, the second's planes taken for further focus
    positions, and two files numbered alike (``z1``, ``z01``) fused in a guessed order: a wrong
    image, exit 0 (an adversarial run on inputs). A list is the user's own order."""
    folder = tmp_path / "planes"
    folder.mkdir()
    planes = _planes(len(names), (6, 7), dtype="uint8")
    for name, plane in zip(names, planes, strict=True):
        tifffile.imwrite(folder / f"{name}.tif", plane)
    with pytest.raises(ValueError) as info:
        open_image_files(folder)
    assert str(info.value).startswith(f"spec folder '{folder}'" + said.format(folder=folder))
    with pytest.raises(ValueError, match="more than one stack|numbered alike"):
        open_image_files(str(folder / "*.tif"))
    listed = open_image_files([folder / f"{n}.tif" for n in names])
    np.testing.assert_array_equal(listed.array[...], planes)
    if names[0].startswith("cell"):  # the CLI: one line, exit 2, nothing written
        before = tree_digest(tmp_path)
        res = subprocess.run(
            [sys.executable, "-m", "fstack_dask", "fuse", str(folder), str(tmp_path / "o.zarr")],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert res.stderr.splitlines() == [
            f"fstack-dask: error: src folder '{folder}'" + said.format(folder=folder)
        ]
        assert tree_digest(tmp_path) == before


def test_a_glob_over_two_folders_of_one_numbering_is_refused(tmp_path):
    """``"cells/**/*.tif"`` over cell1/z0..z4 and cell2/z0..z4: two stacks fused as one of 10
    planes (an adversarial run on inputs); folders that continue one numbering are one."""
    planes = _planes(5, (6, 7), dtype="uint8")
    for cell in ("cell1", "cell2"):
        (tmp_path / cell).mkdir()
        for k, plane in enumerate(planes):
            tifffile.imwrite(tmp_path / cell / f"z{k}.tif", plane)
    with pytest.raises(ValueError) as info:
        open_image_files(str(tmp_path / "**" / "*.tif"))
    assert str(info.value).endswith(
        f": '{tmp_path}/cell1/z0.tif' and '{tmp_path}/cell2/z0.tif' are both numbered 0 in "
        "stacks of 5 planes (channels, time points, tiles or series apart), and would be "
        f"fused as one stack of 10 planes; select one stack with a glob such as "
        f"'{tmp_path}/cell1/z*.tif'"
    )
    for k in range(5):  # part2 numbered on from part1: one stack
        (tmp_path / "cell2" / f"z{k}.tif").rename(tmp_path / "cell2" / f"z{k + 5}.tif")
    assert open_image_files(str(tmp_path / "**" / "*.tif")).array.shape == (10, 6, 7)


@pytest.mark.parametrize(
    ("names", "said"),
    [
        (["IMG_9997", "IMG_9998", "IMG_9999", "IMG_0001", "IMG_0002"],
         "run from 0001 to 0002 ('IMG_0002.tif'), then from 9997 to 9999 ('IMG_9999.tif'): "
         "if a camera's counter passed 9999 and began again"),
        (["DSC_998", "DSC_999", "DSC_000", "DSC_001"],
         "run from 000 to 001 ('DSC_001.tif'), then from 998 to 999 ('DSC_999.tif'): if a "
         "camera's counter passed 999 and began again"),
        (["z001", "z002", "z004", "z005"], None),  # a plane missing: the order holds
        (["IMG_9997", "IMG_9998", "IMG_9999", "IMG_10000"], None),  # counted on
        (["z0", "z5", "z10", "z15", "z20"], None),
    ],
)  # fmt: skip
def test_a_restarted_counter_in_the_planes_names_is_said(tmp_path, names, said):
    """A camera's counter that passed 9999 (IMG_9998, IMG_9999, IMG_0001 ...) sorts its later
    planes first: fused in that order in silence (an adversarial run on inputs); now a
    warning says where the numbers restart. A list is taken as given."""
    planes = _planes(len(names), (6, 7), dtype="uint8")
    for name, plane in zip(names, planes, strict=True):
        tifffile.imwrite(tmp_path / f"{name}.tif", plane)
    opened = open_image_files(tmp_path)
    restarts = [w for w in opened.warnings if "the planes' numbers run from" in w]
    if said is None:
        assert restarts == []
    else:
        assert restarts == [
            f"spec folder '{tmp_path}': the planes' numbers {said}, its later planes come "
            "first; the planes are fused in name order: rename them if that is not the focus "
            "order"
        ]
    listed = open_image_files(sorted(tmp_path.iterdir()))
    assert not [w for w in listed.warnings if "numbers run" in w]  # a list: as given


def test_names_spelled_with_combining_accents_sort_as_they_read(tmp_path):
    """The name "cafe\u0301_2" (macOS's spelling of "café_2") sorted before "café_1" ("e" before
    "é") and was warned about as named unlike the others, in a message that showed the same
    name: plane 2 fused as plane 1 (an adversarial run on names, 2026-12-06)."""
    planes = _planes(5, (6, 7))
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    names = [f"{nfd if k == 2 else nfc}_{k}" for k in range(1, 6)]
    for k, name in enumerate(names):
        tifffile.imwrite(tmp_path / f"{name}.tif", planes[k])
    opened = open_image_files(tmp_path)
    assert [os.path.basename(f)[:-4] for f in opened.files] == names  # as spelled on disk
    np.testing.assert_array_equal(opened.array[...], planes)
    assert not opened.warnings


def test_one_plane_name_spelled_both_ways_in_one_folder_is_refused(tmp_path):
    """'caf\u00e9_1.tif' and 'cafe\u0301_1.tif' (one name, composed and decomposed: Linux keeps
    both, a macOS copy synced beside the original) were both fused, one plane twice, exit 0
    (a review, 2026-12-06): the CLI refuses the folder and a glob, exit 2, naming both; a list
    is the user's own order."""
    planes = _planes(4, (6, 7))
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    names = [f"{nfc}_1", f"{nfd}_1", f"{nfc}_2", f"{nfc}_3"]
    for k, name in enumerate(names):
        tifffile.imwrite(tmp_path / f"{name}.tif", planes[k])
    done = subprocess.run([sys.executable, "-m", "fstack_dask", "info", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "caf\\xe9_1.tif" in done.stderr and "cafe\\u0301_1.tif" in done.stderr
    assert "spelled two ways" in done.stderr
    with pytest.raises(ValueError, match="spelled two ways"):
        open_image_files(str(tmp_path / "*.tif"))
    listed = [str(tmp_path / f"{n}.tif") for n in names]
    assert open_image_files(listed).array.shape[0] == 4


def test_odd_names_warning_keeps_signed_planes_in_its_pattern():
    """The glob suggested for the planes once dropped the negative ones (z+01um, z-01um)."""
    from fstack_dask._sources.plane_names import _glob_for, odd_names

    names = [f"/d/stack_z{z:+03d}um.tif" for z in range(-3, 4)]
    assert odd_names([*names, "/d/MAX_stack.tif"]) == ["/d/MAX_stack.tif"]
    assert _glob_for(names) == "/d/stack_z*um.tif"
    assert _glob_for(["/d/stack-001.tif", "/d/stack-002.tif"]) == "/d/stack-*.tif"


def test_the_glob_suggested_for_decomposed_names_matches_them(tmp_path):
    """Planes macOS named with a combining accent ('cafe\u0301_1.tif') beside a file named
    unlike them: the warning suggested 'caf\u00e9_*.tif', spelled composed, which matches none
    of them on Linux (a review, 2026-12-06, of the NFC ordering). It is spelled as on disk."""
    import glob

    nfd = "cafe\u0301"
    for k in range(1, 6):
        tifffile.imwrite(tmp_path / f"{nfd}_{k}.tif", np.full((6, 7), k, np.uint8))
    tifffile.imwrite(tmp_path / "expected.tif", np.zeros((6, 7), np.uint8))
    (warning,) = open_image_files(tmp_path).warnings
    pattern = re.search(r"such as '(.*)'$", warning).group(1)
    assert sorted(glob.glob(pattern)) == sorted(glob.glob(str(tmp_path / f"{nfd}_*.tif")))
    assert len(glob.glob(pattern)) == 5


def test_the_glob_suggested_for_names_spelled_apart_leaves_the_odd_file_out(tmp_path):
    """Planes whose names vary in case ('plane_1.tif' ... 'Plane_10.tif', one pattern) beside
    'result.tif': the text spelled two ways became a bare '*' (787b616), and the suggested
    '**.tif' selected the odd file the warning is about too."""
    import glob

    names = [f"plane_{k}.tif" for k in range(1, 10)] + ["Plane_10.tif"]
    for k, name in enumerate(names):
        tifffile.imwrite(tmp_path / name, np.full((6, 7), k, np.uint8))
    tifffile.imwrite(tmp_path / "result.tif", np.zeros((6, 7), np.uint8))
    (warning,) = open_image_files(tmp_path).warnings
    pattern = re.search(r"such as '(.*)'$", warning).group(1)
    assert sorted(os.path.basename(p) for p in glob.glob(pattern)) == sorted(names)


def test_real_lightsheet_tiff_planes():
    folder = realdata("dfnn_mitochondria_lightsheet")
    opened = open_image_files(folder)  # LICENSE and the text files are ignored
    assert opened.kind == "tiff files"
    assert (opened.axes, opened.array.shape, opened.array.dtype) == ("zyx", (34, 800, 512), "u2")
    assert opened.array.chunks == (1, 800, 512)
    assert [f[-8:-4] for f in opened.files] == [f"{k:04d}" for k in range(32, 66)]
    assert opened.scale == {}  # ImageJ 'unit=' is empty: uncalibrated
    whole = np.stack([tifffile.imread(f) for f in opened.files])
    _check_regions(opened.array, whole)
    assert opened.array.decodes == 34


def test_real_pcb_jpeg_planes():
    folder = realdata("petteri_pcb")
    # A glob: the folder also holds expected.jpg, the other tool's fused result.
    opened = open_image_files(str(folder / "pcb_*.jpg"))
    assert opened.kind == "jpeg files" and opened.rgb
    assert (opened.axes, opened.array.shape, opened.array.dtype) == (
        "zyxc",
        (7, 1536, 2048, 3),
        "u1",
    )
    assert [f.rsplit("/", 1)[1] for f in opened.files] == [f"pcb_{k:03d}.jpg" for k in range(1, 8)]
    whole = np.stack([_pillow(f) for f in opened.files])
    _check_regions(opened.array, whole)
    assert opened.array.decodes == 7


def test_missing_pillow_names_the_extra(monkeypatch, tmp_path):
    import sys

    from fstack_dask._sources.common import MissingExtraError

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(MissingExtraError, match=r"'pillow'.*pip install \"fstack_dask\[images\]\""):
        open_image_files(tmp_path)


# ------------------------------------------------- the first hour (issue 18): what was used


def test_real_pcb_folder_names_the_other_tools_result():
    """The real folder holds expected.jpg, focus-stack's own fused result, beside the seven
    planes: it is read as a plane (a user may want it), and named in a warning."""
    opened = open_image_files(realdata("petteri_pcb"))
    assert [os.path.basename(f) for f in opened.files][:2] == ["expected.jpg", "pcb_001.jpg"]
    assert opened.notes == (
        "8 JPEG files, in this order: first 'expected.jpg', last 'pcb_007.jpg'",
    )
    (warning,) = opened.warnings
    assert warning.startswith(f"spec folder '{realdata('petteri_pcb')}': ")
    assert "'expected.jpg' is not named like the other 7 files ('pcb_001.jpg' ... " in warning
    assert "is fused as plane 1 of 8" in warning
    assert f"'{realdata('petteri_pcb')}/pcb_*.jpg'" in warning  # the pattern that selects them
    assert open_image_files(str(realdata("petteri_pcb") / "pcb_*.jpg")).warnings == ()


def test_odd_names_need_a_pattern_most_files_share():
    from fstack_dask._sources.plane_names import odd_names

    name = "/d/cell2G2Dz0p3um_ch0_stack0001_488nm_0003524msec_0002913748msecAbs{:04d}.tif"
    lightsheet = [name.format(k) for k in range(32, 41)]
    assert odd_names(lightsheet) == []  # many numbers, one varies: one pattern
    assert odd_names([*lightsheet, "/d/MAX_projection.tif"]) == ["/d/MAX_projection.tif"]
    assert odd_names(["/d/near.tif", "/d/far.tif", "/d/mid.tif"]) == []  # no pattern to break
    assert odd_names(["/d/a1.tif", "/d/b.tif"]) == []  # one against one: no majority


def test_the_odd_names_warning_of_a_huge_folder_is_linear():
    """30 000 planes, 13 500 named another way (two acquisitions in one folder): the warning
    rebuilt a set of the odd names for each file, 34 s (20 000: 15 s) before it said
    anything. Counted, not timed: the odd names are gone through a few times, not a file."""
    from fstack_dask._sources.plane_names import odd_names, odd_names_warning

    class Counted(list):
        passes = 0

        def __iter__(self):
            Counted.passes += 1
            return super().__iter__()

    k = 1350
    files = [f"/d/Pos0_z{i:05d}.tif" for i in range(3000 - k)]
    files += [f"/d/scan_z{i:05d}_b.tif" for i in range(k)]
    odd = Counted(odd_names(files))
    warning = odd_names_warning(files, odd, "src")
    assert len(odd) == k and "and 1345 more are not named like the other 1650 files" in warning
    assert Counted.passes <= 3, Counted.passes  # (once a file: 1650)


def test_platform_litter_is_skipped_and_said(tmp_path):
    planes = _planes(3, (10, 12), dtype="uint8")
    for k, plane in enumerate(planes):
        Image.fromarray(plane).save(tmp_path / f"step{k}.png")
    # what macOS and Windows leave behind when a folder is copied
    (tmp_path / "._step0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))  # AppleDouble
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "desktop.ini").write_text("[.ShellClassInfo]\n")
    for spec in (tmp_path, str(tmp_path / "*")):  # a folder, and a glob that matches them all
        opened = open_image_files(spec)
        assert [os.path.basename(f) for f in opened.files] == [f"step{k}.png" for k in range(3)]
        np.testing.assert_array_equal(opened.array[...], planes)
        assert opened.warnings == ()
    (note,) = open_image_files(tmp_path).notes
    assert note.endswith("; skipped 1 hidden or system file ('._step0.png')")


def test_axes_and_a_single_file_are_refused_for_plane_files(tmp_path):
    for k, plane in enumerate(_planes(3, (10, 12))):
        tifffile.imwrite(tmp_path / f"z{k}.tif", plane)
    assert open_image_files(tmp_path, axes="ZYX").axes == "zyx"  # the planes' own order
    for axes in ("yxz", "zxy", "tzyx"):
        with pytest.raises(ValueError, match=rf"^axes '{axes}' cannot apply to spec folder .*"
                           r"always read as 'zyx' .*omit axes="):  # fmt: skip
            open_image_files(tmp_path, axes=axes)
    for spec in (str(tmp_path / "z1*"), [tmp_path / "z1.tif"]):
        with pytest.raises(ValueError, match=r"gives one file, .*z1\.tif'; a focus stack needs"):
            open_image_files(spec)


def test_a_truncated_plane_is_named_when_it_is_read(tmp_path):
    from fstack_dask._errors import SourceReadError
    from fstack_dask._sources.fetch import BlockRegion, fetch_block
    from fstack_dask._sources.open import open_source

    for k, plane in enumerate(_planes(3, (64, 80, 3), dtype="uint8")):
        Image.fromarray(plane).save(tmp_path / f"p{k}.jpg", quality=90)
    whole = (tmp_path / "p1.jpg").read_bytes()
    (tmp_path / "p1.jpg").write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    source = open_source(tmp_path)  # the header is whole: opening succeeds
    region = BlockRegion((), (0, 64), (0, 80), True)
    with pytest.raises(SourceReadError, match=r"^cannot read file '.*p1\.jpg' of src '.*' \("
                       r"OSError: image file is truncated.*the file is corrupt"):  # fmt: skip
        fetch_block(source, region, None)


def test_pillow_is_a_dependency_of_the_plain_install():
    """A folder of JPEG or PNG planes is a first-hour input: the plain install reads it."""
    import pathlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    names = [re.split(r"[<>=!~;\[ ]", d)[0].lower() for d in project["dependencies"]]
    assert "pillow" in names


@pytest.mark.parametrize("rgb", [False, True])
def test_a_fused_tiff_saved_beside_the_planes_is_not_read_as_one(tmp_path, rgb):
    """``fuse planes planes/fused.ome.tif``, then another run on ``planes``: the fused
    image (our provenance in its OME-XML) is skipped with a warning, not fused as plane 1 of
    6 (found by an adversarial run, 2026-12-05); listed by name, it is refused."""
    from fstack_dask import fuse_zarr
    from fstack_dask._errors import FstackDaskWarning
    from fstack_dask._outputs.tiff import NAMESPACE
    from fstack_dask._sources.image_headers import FUSED_MARK

    assert FUSED_MARK == NAMESPACE  # the reader knows what the writer writes
    shape = (48, 40, 3) if rgb else (48, 40)
    planes = _planes(5, shape, dtype="uint8" if rgb else "uint16")
    folder = tmp_path / "planes"
    folder.mkdir()
    for k, plane in enumerate(planes):
        tifffile.imwrite(folder / f"z{k}.tif", plane, photometric="rgb" if rgb else None)
    expected = fuse_zarr(folder, tmp_path / "first.zarr", levels=0, progress=False)["0"][...]
    fuse_zarr(folder, folder / "fused.ome.tif", levels=0, progress=False)
    opened = open_image_files(str(folder))
    assert opened.array.shape[0] == 5 and "fused.ome.tif" not in " ".join(opened.files)
    assert any("skipped 'fused.ome.tif'" in w for w in opened.warnings)
    with pytest.warns(FstackDaskWarning, match="skipped 'fused.ome.tif', an all-in-focus"):
        again = fuse_zarr(f"{folder}/*.tif", tmp_path / "again.zarr", levels=0, progress=False)
    np.testing.assert_array_equal(again["0"][...], expected)
    listed = [folder / f"z{k}.tif" for k in range(5)] + [folder / "fused.ome.tif"]
    with pytest.raises(ValueError, match="is an all-in-focus image fstack_dask wrote"):
        open_image_files(listed)


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_planes_named_through_a_link_and_dots_are_the_ones_the_os_names(tmp_path, monkeypatch,
                                                                       scheduler):  # fmt: skip
    """``home/exp1 -> data/exp1``: from ``home``, ``exp1/../planes/*.tif`` is ``data/planes``
    to the OS. The files were made absolute lexically (``home/planes``, a decoy of the same
    names here) and the decoy was fused (found by an adversarial run, 2026-12-05)."""
    from fstack_dask import fuse_zarr

    (tmp_path / "data" / "exp1").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    os.symlink(tmp_path / "data" / "exp1", tmp_path / "home" / "exp1")
    meant, decoy = _planes(5, (48, 40)), np.full((5, 48, 40), 7, np.uint16)
    for folder, planes in ((tmp_path / "data" / "planes", meant),
                           (tmp_path / "home" / "planes", decoy)):  # fmt: skip
        folder.mkdir()
        for k, plane in enumerate(planes):
            tifffile.imwrite(folder / f"p{k}.tif", plane)
    expected = fuse_zarr(tmp_path / "data" / "planes", tmp_path / "expected.zarr", levels=0,
                         progress=False)["0"][...]  # fmt: skip
    monkeypatch.chdir(tmp_path / "home")
    for k, src in enumerate(
        ("exp1/../planes/*.tif", [f"exp1/../planes/p{k}.tif" for k in range(5)])
    ):
        out = fuse_zarr(src, tmp_path / f"out{k}.zarr", levels=0, scheduler=scheduler,
                        progress=False)  # fmt: skip
        np.testing.assert_array_equal(out["0"][...], expected)


def test_a_folder_of_folders_of_planes_names_them(tmp_path):
    """A microscope's export folder, the planes one folder down, was refused as "not a Zarr
    array or group; expected zarr.json", which pointed nowhere (a documentation run)."""
    from fstack_dask._sources.open import open_source

    for stack in ("stack_b", "stack_a"):
        (tmp_path / "export" / stack).mkdir(parents=True)
        for k, plane in enumerate(_planes(3, (10, 12))):
            tifffile.imwrite(tmp_path / "export" / stack / f"z{k}.tif", plane)
    (tmp_path / "export" / "notes").mkdir()
    expected = rf"src '{re.escape(str(tmp_path / 'export'))}' holds neither plane files nor "
    with pytest.raises(ValueError, match=expected + r".* folder\(s\) 'stack_a', 'stack_b' hold"):
        open_source(tmp_path / "export")
    assert open_source(tmp_path / "export" / "stack_a").shape == (3, 10, 12)
    with pytest.raises(ValueError, match=r"is not a Zarr array or group"):  # nothing below
        open_source(tmp_path / "export" / "notes")


def test_ome_tiff_planes_give_their_pixel_size(tmp_path):
    """A folder of single-plane OME-TIFFs (an image sequence's export) lost the pixel size of
    their OME-XML, which the same planes as one OME-TIFF kept (an interop run)."""
    for k, plane in enumerate(_planes(3, (10, 12))):
        tifffile.imwrite(tmp_path / f"z{k}.ome.tif", plane, metadata={
            "axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.5,
            "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})  # fmt: skip
    opened = open_image_files(tmp_path)
    assert opened.scale == {"y": 0.5, "x": 0.65}
    assert opened.units == {"y": "nanometer", "x": "nanometer"}


@pytest.mark.parametrize("colour", ["grey", "rgba"])
def test_uncompressed_tiff_planes_are_read_by_region(tmp_path, colour):
    """One uncompressed strip per file (tifffile's default, the demo's planes) was decoded
    whole, so a stack larger than the plane cache decoded every file again for every block
    (an adversarial run: 548 decodes of 21 files). Their rows are read alone now."""
    rng = np.random.default_rng(3)
    shape = (700, 600) if colour == "grey" else (700, 600, 4)
    planes = [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(3)]
    for k, plane in enumerate(planes):
        tifffile.imwrite(tmp_path / f"z{k}.tif", plane,
                         photometric="minisblack" if colour == "grey" else "rgb")  # fmt: skip
    opened = open_image_files(tmp_path, cache_bytes=0)
    stack = np.stack(planes)[..., :3] if colour == "rgba" else np.stack(planes)
    assert opened.array.chunks == (1, 512, 512) + stack.shape[3:]
    assert not opened.array.whole
    got = opened.array[:, 100:650, 590:]
    np.testing.assert_array_equal(got, stack[:, 100:650, 590:])


def test_a_plane_replaced_after_opening_is_refused_on_the_region_path(tmp_path):
    """Rows read by region skipped the check a decoded plane gets: a narrower or another
    dtype's file was read at its new layout (an adversarial run)."""
    planes = _planes(3, (300, 700))
    for k, plane in enumerate(planes):
        tifffile.imwrite(tmp_path / f"z{k}.tif", plane)
    opened = open_image_files(tmp_path, cache_bytes=0)
    for replacement in (planes[2][:, :350].copy(), planes[2].astype(np.uint8)):
        tifffile.imwrite(tmp_path / "z2.tif", replacement)
        with pytest.raises(ValueError, match=r"z2\.tif' now decodes to shape"):
            opened.array[2:3, 0:100, 0:512]


def test_a_plane_stating_another_pixel_size_is_named_in_a_warning(tmp_path):
    """The output is given the first plane's pixel size; a plane whose resolution tags say
    0.25 um where the first's say 0.5 um (or that say none) was passed over in silence (an
    adversarial run on metadata). 500 nm in ImageJ's description is 0.5 um: no warning."""
    planes = _planes(4, (20, 30), "uint8")

    def folder(name, last):
        where = tmp_path / name
        where.mkdir()
        for k, plane in enumerate(planes):
            path = where / f"z{k}.tif"
            if k < 3:
                tifffile.imwrite(path, plane, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
            elif last == "nm":
                tifffile.imwrite(path, plane, imagej=True, resolution=(1 / 500, 1 / 500),
                                 metadata={"unit": "nm"})  # fmt: skip
            elif last is None:
                tifffile.imwrite(path, plane)
            else:
                tifffile.imwrite(path, plane, resolution=(1e4 / last, 1e4 / last),
                                 resolutionunit="CENTIMETER")  # fmt: skip
        return open_image_files(str(where))

    for name, last, said in (("quarter", 0.25, "a pixel of 0.25 x 0.25 micrometer"),
                             ("none", None, "no pixel size")):  # fmt: skip
        opened = folder(name, last)
        assert opened.scale == {"y": 0.5, "x": 0.5}
        (warning,) = [w for w in opened.warnings if "pixel" in w]
        first = r"a pixel of 0\.5 x 0\.5 micrometer \(y x\): the output is given the first"
        assert re.search(rf"z3\.tif' of .* states {said}.* but '.*z0\.tif' {first}", warning)
    assert not [w for w in folder("nm", "nm").warnings if "pixel" in w]
