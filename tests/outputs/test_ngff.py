"""Proof that the output opens (issue 10.4): ome-zarr-py's reader and ome-zarr-models'
validation of fused pyramids, for grey, multichannel, RGB and time-series inputs, with the
metadata carried over (scale, units, translation, channels, time step, depth units)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack, write_stack

ome_zarr_models = pytest.importorskip(
    "ome_zarr_models", reason="needs ome-zarr-models (test extra)"
)
ome_zarr_reader = pytest.importorskip("ome_zarr.reader", reason="needs ome-zarr (test extra)")

SHAPE, PLANES = (200, 150), 7


def _grey(seed=0, dtype="uint16"):
    return synthetic_stack(SHAPE, PLANES, dtype=dtype, seed=seed).stack.transpose(2, 0, 1)


CASES = {
    # axes: (data, channels option, expected output axes)
    "zyx": (lambda: _grey(), "auto", "yx"),
    "czyx": (lambda: np.stack([_grey(1), _grey(2)]), "independent", "cyx"),
    "czyx-rgb": (
        lambda: synthetic_stack(SHAPE, PLANES, rgb=True, dtype="uint8", seed=3).stack.transpose(
            3, 2, 0, 1
        ),
        "rgb",
        "cyx",
    ),
    "tczyx": (lambda: np.stack([np.stack([_grey(4)]), np.stack([_grey(5)])]), "auto", "tcyx"),
}


def _write(tmp_path, name, data, axes):
    scale = {"z": 2.0, "y": 0.325, "x": 0.325} | ({"t": 30.0} if "t" in axes else {})
    units = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    if "t" in axes:
        units["t"] = "second"
    path = tmp_path / f"{name}.ome.zarr"
    write_stack(path, data, axes=axes, scale=scale, units=units,
                translation={"y": 100.0, "x": -50.0, "z": 10.0})  # fmt: skip
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_output_opens_in_ome_zarr_readers_and_validates(tmp_path, case):
    make, channels, out_axes = CASES[case]
    axes = case.split("-")[0]
    data = make()
    src = _write(tmp_path, case, data, axes)
    dst = tmp_path / "fused.ome.zarr"
    out = fuse_zarr(src, dst, channels=channels, chunks=64, depth_map=True,
                    selectivity_map=True, progress=False)  # fmt: skip
    assert out.attrs["fstack_dask"]["levels"] == 2  # 200 px in 64 px chunks: 200, 100, 50

    # ome-zarr-models validates the image and each map as NGFF 0.5 images
    from ome_zarr_models import open_ome_zarr

    for path in ("", "depth", "selectivity"):
        group = zarr.open_group(str(dst / path) if path else str(dst), mode="r")
        model = open_ome_zarr(group)
        assert type(model).__name__ == "Image", (path, type(model))

    # ome-zarr-py reads every level, with the metadata we wrote
    from ome_zarr.io import parse_url

    (node,) = list(ome_zarr_reader.Reader(parse_url(str(dst)))())
    levels = node.data
    assert [tuple(level.shape[-2:]) for level in levels] == [(200, 150), (100, 75), (50, 38)]
    assert [a["name"] for a in node.metadata["axes"]] == list(out_axes)
    transforms = node.metadata["coordinateTransformations"]
    y = out_axes.index("y")
    assert [t[0]["scale"][y] for t in transforms] == [0.325, 0.65, 1.3]
    assert transforms[0][1]["translation"][y] == 100.0  # the source's offset, carried
    units = {a["name"]: a.get("unit") for a in node.metadata["axes"]}
    assert units["y"] == "micrometer" and units.get("t", "second") == "second"
    if "t" in out_axes:
        assert transforms[0][0]["scale"][0] == 30.0  # the time step, carried
    fused = np.asarray(levels[0])
    if case == "zyx":
        np.testing.assert_array_equal(fused, focus_stack(data.transpose(1, 2, 0)))
    if case == "czyx-rgb":
        np.testing.assert_array_equal(
            np.moveaxis(fused, 0, -1), focus_stack(data.transpose(2, 3, 1, 0))
        )
        omero = out.attrs["ome"]["omero"]
        assert [c["color"] for c in omero["channels"]] == ["FF0000", "00FF00", "0000FF"]
        assert omero["rdefs"]["model"] == "color"
    if case == "czyx":
        labels = [c["label"] for c in out.attrs["ome"]["omero"]["channels"]]
        assert labels == ["c0", "c1"]
    # the depth map is in the source's z units: 10 um + 2 um per plane
    depth = zarr.open_group(str(dst / "depth"), mode="r")
    assert depth.attrs["fstack_dask"]["unit"] == "micrometer"
    values = depth["0"][...]
    finite = values[np.isfinite(values)]
    assert finite.size and np.all(np.isin(finite, 10.0 + 2.0 * np.arange(PLANES)))


def test_pyramid_is_bit_identical_across_chunkings_and_schedulers(tmp_path):
    data = _grey(seed=7)
    src = _write(tmp_path, "s", data, "zyx")
    runs = {}
    for chunks, scheduler in ((64, "threads"), (50, "synchronous"), ((200, 30), "threads")):
        dst = tmp_path / f"out-{chunks}-{scheduler}.zarr"
        out = fuse_zarr(src, dst, chunks=chunks, levels=2, depth_map=True,
                        scheduler=scheduler, progress=False)  # fmt: skip
        runs[(chunks, scheduler)] = [out[str(k)][...] for k in range(3)] + [
            out["depth"][str(k)][...] for k in range(3)
        ]
    first, *rest = runs.values()
    for other in rest:
        for a, b in zip(first, other, strict=True):
            np.testing.assert_array_equal(a, b)
    level1 = first[0].astype(float)
    expected = np.round(
        (level1[0::2, 0::2] + level1[1::2, 0::2] + level1[0::2, 1::2] + level1[1::2, 1::2]) / 4
    )
    np.testing.assert_array_equal(first[1], expected)


def test_levels_zero_writes_one_level(tmp_path):
    src = _write(tmp_path, "s", _grey(), "zyx")
    out = fuse_zarr(src, tmp_path / "o.zarr", levels=0, chunks=64, progress=False)
    assert sorted(out.keys()) == ["0"]
    assert len(out.attrs["ome"]["multiscales"][0]["datasets"]) == 1
    with pytest.raises(ValueError, match="levels must be"):
        fuse_zarr(src, tmp_path / "p.zarr", levels=-1)


@pytest.mark.parametrize(
    ("given", "unit", "planes"),
    [
        ({"scale": 1e38}, None, True),  # float32: inf
        ({"scale": 1e-300}, None, True),  # float32: all 0
        ({"scale": 2.0, "focus": [0.0, 0.5, 1.5, 2.0, 3.5, 4.0]}, None, False),
        ({"scale": 2.0}, "micrometer", False),
    ],
    ids=["z scale 1e38", "z scale 1e-300", "focus given", "z scale"],
)
def test_the_depth_maps_unit_is_what_its_values_are(tmp_path, given, unit, planes):
    """A z scale float32 cannot hold apart gave a depth map of inf or of zeros, silently;
    with ``focus`` given, the depth (in its units) was labelled with the source's z unit
    (adversarial runs). Plane numbers, with a warning; no unit where it is not known."""
    import warnings

    data = _grey(seed=3)[:6]
    path = tmp_path / "in.ome.zarr"
    write_stack(path, data, axes="zyx", scale={"z": given["scale"], "y": 1.0, "x": 1.0},
                units={"z": "micrometer", "y": "micrometer", "x": "micrometer"})  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fuse_zarr(path, tmp_path / "out.zarr", depth_map=True, focus=given.get("focus"),
                        progress=False, levels=0)  # fmt: skip
    said = [str(w.message) for w in caught if "float32 cannot hold apart" in str(w.message)]
    assert bool(said) == planes
    assert out["depth"].attrs["fstack_dask"]["unit"] == unit
    values = out["depth"]["0"][...]
    finite = values[np.isfinite(values)]
    assert finite.size and np.isfinite(values[~np.isnan(values)]).all()
    if planes:
        assert np.all(np.isin(finite, np.arange(6)))


def test_selectivity_of_few_planes_stays_inf_in_every_level(tmp_path):
    """With fewer than 5 planes the selectivity is +inf everywhere (documented); its 2 x 2
    means left +inf out as if it were NaN: level 1 and above were NaN (an adversarial run)."""
    data = _grey(seed=4)[:4]
    path = tmp_path / "in.ome.zarr"
    write_stack(path, data, axes="zyx")
    out = fuse_zarr(path, tmp_path / "out.zarr", selectivity_map=True, chunks=64, levels=2,
                    progress=False)  # fmt: skip
    for level in ("0", "1", "2"):
        assert np.isposinf(out["selectivity"][level][...]).all(), level


@pytest.mark.parametrize(("levels", "ok"), [(7, True), (8, False), (40, False)])
def test_levels_beyond_a_1_px_level_are_refused(tmp_path, levels, ok):
    """levels=40 on a 64 px image wrote 34 levels of 1 x 1, with translations far outside
    the image (an adversarial run). A 100 px image halves to 1 px at level 7."""
    data = _grey(seed=5)[:, :100, :100]
    path = tmp_path / "in.ome.zarr"
    write_stack(path, data, axes="zyx")
    if ok:
        out = fuse_zarr(path, tmp_path / "out.zarr", levels=levels, progress=False)
        assert out[str(levels)].shape == (1, 1)
    else:
        with pytest.raises(ValueError, match="levels must be at most 7 for a 100 x 100 image"):
            fuse_zarr(path, tmp_path / "out.zarr", levels=levels, progress=False)
        assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("levels", [None, 0])
def test_a_float_images_display_windows_come_from_its_data(tmp_path, levels):
    """A float image's ``omero`` window was 0..1 whatever its values, so that napari showed
    a fused image of values in the thousands saturated white (an interop run). Each channel's
    window now spans its coarsest level's values (the image itself with ``levels=0``, read a
    few chunks at a time), except where the source gave one; ome-zarr-py reads it as the
    channel's contrast limits, and the output still validates."""
    data = np.stack([_grey(1).astype(np.float32) * 5e4, _grey(2).astype(np.float32) * 3.0 - 1])
    src = _write(tmp_path, "floats", data, "czyx")
    root = zarr.open_group(src, mode="r+")
    ome = dict(root.attrs["ome"])  # the source gives channel 1's window, not channel 0's
    ome["omero"] = {"channels": [{"label": "a"}, {"label": "b", "window": {
        "min": -5.0, "max": 5.0, "start": -1.0, "end": 2.0}}]}  # fmt: skip
    root.attrs["ome"] = ome
    dst = tmp_path / "fused.ome.zarr"
    out = fuse_zarr(src, dst, chunks=64, levels=levels, progress=False)
    windows = [c["window"] for c in out.attrs["ome"]["omero"]["channels"]]
    coarsest = out[out.attrs["ome"]["multiscales"][0]["datasets"][-1]["path"]][0]
    low, high = float(np.nanmin(coarsest)), float(np.nanmax(coarsest))
    full = out["0"][0]  # the slider spans every value, bright spots too (an adversarial run)
    assert windows[0] == {"min": float(full.min()), "max": float(full.max()), "start": low,
                          "end": high}  # fmt: skip
    assert high > 1e3  # the values, not 0..1
    assert windows[1] == {"min": -5.0, "max": 5.0, "start": -1.0, "end": 2.0}  # as given
    from ome_zarr.io import parse_url
    from ome_zarr_models import open_ome_zarr

    assert type(open_ome_zarr(zarr.open_group(str(dst), mode="r"))).__name__ == "Image"
    (node,) = list(ome_zarr_reader.Reader(parse_url(str(dst)))())
    assert node.metadata["contrast_limits"][0] == [low, high]
    if levels == 0:
        assert (low, high) == (float(full.min()), float(full.max()))
