"""``channels="auto"`` on 3 uint8 channels: colour where the format says colour (or says
nothing), separate channels where it says they are (an interop run found fluorescence fused
as an RGB photograph, its DAPI shown red and its Cy5 blue)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import fstack_dask

tifffile = pytest.importorskip("tifffile")

STACK = np.random.default_rng(0).integers(0, 256, (6, 3, 48, 56), dtype=np.uint8)  # z c y x
MAGENTA_BLUE_GREEN = ("FF00FF", "0000FF", "00FF00")


def _lut(colour: str) -> np.ndarray:
    lut = np.zeros((3, 256), np.uint8)
    for k in range(3):
        lut[k] = np.arange(256) * (int(colour[2 * k : 2 * k + 2], 16) // 255)
    return lut


def _ome_zarr(path, *, rdefs=None, colours=None):
    g = zarr.open_group(path, mode="w")
    a = g.create_array("0", shape=(3, 6, 48, 56), chunks=(1, 6, 48, 56), dtype="u1",
                       dimension_names=list("czyx"))  # fmt: skip
    a[...] = np.moveaxis(STACK, 1, 0)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space"} for n in "zyx"]
    scale = [{"type": "scale", "scale": [1, 1, 1, 1]}]
    ome = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": scale}]}]}  # fmt: skip
    omero = {}
    if colours:
        omero["channels"] = [{"label": f"ch{k}", "color": c} for k, c in enumerate(colours)]
    if rdefs:
        omero["rdefs"] = {"model": rdefs}
    if omero:
        ome["omero"] = omero
    g.attrs["ome"] = ome
    return path


def _write(kind, d):
    if kind == "imagej composite":
        p = d / "composite.tif"
        luts = [_lut(c) for c in MAGENTA_BLUE_GREEN]
        tifffile.imwrite(p, STACK, imagej=True, metadata={"axes": "ZCYX", "mode": "composite",
                                                          "LUTs": luts})  # fmt: skip
        return p
    if kind == "ome-tiff channels":
        p = d / "named.ome.tif"
        tifffile.imwrite(
            p, STACK, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP", "Cy5"]}}
        )
        return p
    if kind == "ome-tiff red, green, blue":  # as an omero of those colours is read
        p = d / "rgb.ome.tif"
        colours = [-16776961, 16711935, 65535]  # OME's RGBA integers of FF0000, 00FF00, 0000FF
        tifffile.imwrite(p, STACK, metadata={"axes": "ZCYX", "Channel": {"Color": colours}})
        return p
    if kind == "ome-zarr greyscale":
        return _ome_zarr(d / "grey.ome.zarr", rdefs="greyscale")
    if kind == "ome-zarr coloured":
        return _ome_zarr(d / "colours.ome.zarr", colours=MAGENTA_BLUE_GREEN)
    if kind == "ome-zarr rgb, #rrggbb":  # (read as RGB before; then independent: a '#' slip)
        return _ome_zarr(
            d / "rgbh.ome.zarr", rdefs="color", colours=("#ff0000", "#00ff00", "#0000ff")
        )
    if kind == "ome-zarr rgb":
        return _ome_zarr(d / "rgb.ome.zarr", rdefs="color", colours=("FF0000", "00FF00", "0000FF"))
    if kind == "ome-zarr silent":
        return _ome_zarr(d / "silent.ome.zarr")
    if kind == "rgb samples":
        p = d / "rgb.tif"
        tifffile.imwrite(p, np.moveaxis(STACK, 1, -1), photometric="rgb")
        return p
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, mode, colours",
    [
        ("imagej composite", "independent", MAGENTA_BLUE_GREEN),
        ("ome-tiff channels", "independent", None),
        ("ome-zarr greyscale", "independent", None),
        ("ome-zarr coloured", "independent", MAGENTA_BLUE_GREEN),
        # what says colour, or says nothing, stays RGB (the reference's colour path)
        ("ome-zarr rgb", "rgb", ("FF0000", "00FF00", "0000FF")),
        ("ome-zarr rgb, #rrggbb", "rgb", ("FF0000", "00FF00", "0000FF")),
        ("ome-tiff red, green, blue", "rgb", ("FF0000", "00FF00", "0000FF")),
        ("ome-zarr silent", "rgb", ("FF0000", "00FF00", "0000FF")),
        ("rgb samples", "rgb", ("FF0000", "00FF00", "0000FF")),
    ],
)
def test_auto_fuses_channels_the_format_says_are_separate_independently(tmp_path, kind, mode,
                                                                         colours):  # fmt: skip
    src = _write(kind, tmp_path)
    dst = tmp_path / "out.ome.zarr"
    fstack_dask.fuse_zarr(src, dst, scheduler="synchronous", progress=False, levels=0)
    g = zarr.open_group(dst, mode="r")
    assert g.attrs["fstack_dask"]["channels"] == mode
    omero = g.attrs["ome"]["omero"]
    if colours is not None:
        assert tuple(c["color"] for c in omero["channels"]) == colours
    if kind == "ome-tiff channels":
        assert [c["label"] for c in omero["channels"]] == ["DAPI", "GFP", "Cy5"]
    assert ("rdefs" in omero) == (mode == "rgb")
    # the numbers are those of the mode chosen, as if it had been asked for
    forced = tmp_path / "forced.ome.zarr"
    fstack_dask.fuse_zarr(src, forced, channels=mode, scheduler="synchronous", progress=False,
                          levels=0)  # fmt: skip
    np.testing.assert_array_equal(g["0"][...], zarr.open_group(forced, mode="r")["0"][...])


def test_rgb_asked_for_on_named_channels_keeps_their_colours(tmp_path):
    """``channels="rgb"`` on fluorescence blends with one weight map, but each output channel
    is still the input's channel: its label and colour are kept, not renamed R, G, B."""
    src = _write("ome-zarr coloured", tmp_path)
    dst = tmp_path / "out.ome.zarr"
    fstack_dask.fuse_zarr(src, dst, channels="rgb", scheduler="synchronous", progress=False)
    omero = zarr.open_group(dst, mode="r").attrs["ome"]["omero"]
    assert [(c["label"], c["color"]) for c in omero["channels"]] == [
        (f"ch{k}", c) for k, c in enumerate(MAGENTA_BLUE_GREEN)
    ]
