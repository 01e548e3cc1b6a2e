"""Proof that the output opens (issue 10.4): ome-zarr-py's reader and ome-zarr-models'
validation of fused pyramids, for grey, multichannel, RGB and time-series inputs, with the
metadata carried over (scale, units, translation, channels, time step, depth units)."""

from __future__ import annotations

import os

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


def test_a_multichannel_maps_channels_are_named_and_windowed_by_its_values(tmp_path):
    """A multichannel output's depth and selectivity maps had no ``omero``: napari-ome-zarr
    showed a map's channels as "Image", "Image [1]" in magenta and green, and bioio gave one
    channel name for two (a readers' run). Each map now names its channels as the fused
    image's, in grey, with windows from its own values; an RGB output's maps have no channel
    axis and no ``omero``, as before. ome-zarr-py reads the names, and the maps validate."""
    data = np.stack([_grey(1), _grey(2)])
    src = _write(tmp_path, "two", data, "czyx")
    root = zarr.open_group(src, mode="r+")
    root.attrs["ome"] = {**root.attrs["ome"], "omero": {"channels": [
        {"label": "DAPI", "color": "0000FF"}, {"label": "GFP", "color": "00FF00"}]}}  # fmt: skip
    dst = tmp_path / "fused.ome.zarr"
    out = fuse_zarr(src, dst, chunks=64, depth_map=True, selectivity_map=True, progress=False)
    from ome_zarr.io import parse_url
    from ome_zarr_models import open_ome_zarr

    for name in ("depth", "selectivity"):
        channels = out[name].attrs["ome"]["omero"]["channels"]
        assert [(c["label"], c["color"]) for c in channels] == [("DAPI", "FFFFFF"),
                                                                ("GFP", "FFFFFF")]  # fmt: skip
        values = out[name]["0"][:]
        for k, channel in enumerate(channels):
            finite = values[k][np.isfinite(values[k])]
            window = channel["window"]
            assert (window["min"], window["max"]) == (float(finite.min()), float(finite.max()))
            assert window["min"] <= window["start"] < window["end"] <= window["max"]
        (node,) = list(ome_zarr_reader.Reader(parse_url(str(dst / name)))())
        assert node.metadata["channel_names"] == ["DAPI", "GFP"]
        assert type(open_ome_zarr(zarr.open_group(str(dst / name), mode="r"))).__name__ == "Image"
    depth = out["depth"].attrs["ome"]["omero"]["channels"][0]["window"]
    assert 10.0 <= depth["min"] and depth["max"] <= 22.0  # in um: z from 10, 7 planes 2 apart
    rgb_src = _write(tmp_path, "colour", CASES["czyx-rgb"][0](), "czyx")
    rgb = fuse_zarr(rgb_src, tmp_path / "rgb.ome.zarr", channels="rgb", depth_map=True,
                    progress=False)  # fmt: skip
    assert "omero" not in rgb["depth"].attrs["ome"]


def test_an_integer_images_contrast_follows_its_values_not_its_dtype(tmp_path):
    """A multichannel uint16 output of a 12-bit camera (values up to ~3000) had the window
    0..65535, which napari-ome-zarr shows as the contrast: nearly black, where the source had
    been shown by its values (a readers' run). Its start/end now span the coarsest level's
    values and min/max stay the dtype's range; a constant channel keeps the dtype's range (a
    window of no width shows nothing), and an RGB image keeps 0..255 (its colours as they
    are)."""
    twelve_bit = np.round(_grey(1).astype(np.float64) / 65535 * 3000).astype(np.uint16)
    data = np.stack([twelve_bit, np.full_like(twelve_bit, 700)])
    src = _write(tmp_path, "camera", data, "czyx")
    dst = tmp_path / "fused.ome.zarr"
    out = fuse_zarr(src, dst, chunks=64, progress=False)
    coarsest = out[out.attrs["ome"]["multiscales"][0]["datasets"][-1]["path"]][0]
    low, high = float(coarsest.min()), float(coarsest.max())
    assert 0 < low < high <= 3000
    windows = [c["window"] for c in out.attrs["ome"]["omero"]["channels"]]
    assert windows == [
        {"min": 0.0, "max": 65535.0, "start": low, "end": high},
        {"min": 0.0, "max": 65535.0, "start": 0.0, "end": 65535.0},  # constant: as it was
    ]
    from ome_zarr.io import parse_url

    (node,) = list(ome_zarr_reader.Reader(parse_url(str(dst)))())
    assert node.metadata["contrast_limits"][0] == [low, high]
    rgb_src = _write(tmp_path, "colour", CASES["czyx-rgb"][0](), "czyx")
    rgb = fuse_zarr(rgb_src, tmp_path / "rgb.ome.zarr", channels="rgb", progress=False)
    assert all(c["window"] == {"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}
               for c in rgb.attrs["ome"]["omero"]["channels"])  # fmt: skip


# A CLI run that SIGKILLs itself once its argv[1]-th block is marked done (the CLI's arguments
# follow): a run killed midway, at a chosen block.
KILLED_AT_BLOCK = """
import os, signal, sys
from fstack_dask._outputs import state

mark, count = state.OutputState.mark_done, [0]

def mark_then_die(self, *args, **kwargs):
    mark(self, *args, **kwargs)
    count[0] += 1
    if count[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

state.OutputState.mark_done = mark_then_die
from fstack_dask._cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _begun_before_2026_12_06(dst):
    """Make an unfinished output what the code before 2026-12-06 wrote: ``ome`` from the start."""
    import json

    from fstack_dask._outputs.write import PENDING

    for meta in (dst / "zarr.json", dst / "depth" / "zarr.json"):
        body = json.loads(meta.read_text())
        body["attributes"]["ome"] = body["attributes"]["fstack_dask"].pop(PENDING)
        meta.write_text(json.dumps(body))


@pytest.mark.parametrize("begun", ["now", "before 2026-12-06"])
def test_a_killed_run_leaves_no_image_to_readers_and_resumes_to_the_same_bits(
    tmp_path, capsys, begun
):
    """A viewer (ome-zarr-py, napari-ome-zarr, ome-zarr-models) opening an output while it was
    written, or one a killed run left, saw a complete-looking multiscale image, mostly fill
    values (only our private ``complete: false`` said otherwise). The NGFF metadata is now
    the run's last write: an unfinished output is a plain Zarr group, no image; a resume
    finishes it (one begun by the code before, with ``ome`` from the start, too), with the
    bits and metadata of an uninterrupted run."""
    import json
    import subprocess
    import sys

    from ome_zarr.io import parse_url
    from ome_zarr_models import open_ome_zarr

    src = _write(tmp_path, "s", _grey(seed=6), "zyx")
    dst, whole = tmp_path / "killed.ome.zarr", tmp_path / "whole.ome.zarr"
    args = ["fuse", src, dst, "--chunks", "50", "--scheduler", "synchronous", "--depth-map",
            "--no-progress"]  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_BLOCK, "3", *map(str, args)],
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert len(list((dst / ".fstack_dask" / "done").iterdir())) == 3  # of 12 blocks
    if begun == "now":
        for path in (dst, dst / "depth"):
            attrs = json.loads((path / "zarr.json").read_text())["attributes"]
            assert "ome" not in attrs and "multiscales" not in attrs
            assert not [n for n in ome_zarr_reader.Reader(parse_url(str(path)))() if n.specs]
            with pytest.raises(Exception):  # noqa: B017 (any refusal: no image there)
                open_ome_zarr(zarr.open_group(str(path), mode="r"))
        from fstack_dask._cli.main import main

        assert main(["info", str(dst)]) == 0
        info = capsys.readouterr()
        assert "levels:" in info.out, info.out + info.err  # read from the unpublished metadata
        assert "3 of 12 blocks of level 0 done" in info.out
        assert "unfinished: a plain Zarr group" in info.out
        with pytest.raises(ValueError, match="is an unfinished fstack_dask output, not an image"):
            fuse_zarr(dst, tmp_path / "again.ome.zarr", progress=False)  # no half image fused
    else:
        _begun_before_2026_12_06(dst)
    resumed = subprocess.run([sys.executable, "-m", "fstack_dask", *map(str, args), "--resume"],
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    ref = fuse_zarr(src, whole, chunks=50, depth_map=True, progress=False)
    out = zarr.open_group(str(dst), mode="r")
    for key in ("0", "1", "2", "depth/0", "depth/2"):
        np.testing.assert_array_equal(out[key][...], ref[key][...])
    assert out.attrs["ome"] == ref.attrs["ome"]
    assert out["depth"].attrs.asdict() == ref["depth"].attrs.asdict()
    assert out.attrs["fstack_dask"]["complete"] is True
    assert "pending_ome" not in out.attrs["fstack_dask"]
    for path in ("", "depth"):
        assert type(open_ome_zarr(out[path] if path else out)).__name__ == "Image"
    (node,) = list(ome_zarr_reader.Reader(parse_url(str(dst)))())
    assert [level.shape for level in node.data] == [(200, 150), (100, 75), (50, 38)]


def _unfinished_output(tmp_path):
    """A complete output with a depth map, its root and map group made as a killed run leaves
    them (``complete: false``, their NGFF metadata pending)."""
    import json

    src = _write(tmp_path, "s", _grey(seed=7), "zyx")
    dst = tmp_path / "out.ome.zarr"
    fuse_zarr(src, dst, chunks=64, depth_map=True, progress=False)
    for path, key in ((dst, "ome"), (dst / "depth", None)):
        meta = path / "zarr.json"
        doc = json.loads(meta.read_text())
        ome = doc["attributes"].pop("ome")
        if key:
            doc["attributes"]["fstack_dask"].update(complete=False, pending_ome=ome)
        meta.write_text(json.dumps(doc))
    return dst


@pytest.mark.parametrize("inside", ["0", "depth", "depth/0", "depth/1"])
def test_a_path_inside_an_unfinished_output_is_refused_as_a_source(tmp_path, capsys, inside):
    """Only the root of an unfinished output says it is unfinished (``complete: false``, its
    NGFF metadata waiting under ``pending_ome``): its group was refused, but its arrays and
    its map group were opened (a fourth adversarial run, 2026-12-06) and a half-written
    output, mostly fill values, could be fused. Any path inside it is refused, naming it."""
    from fstack_dask._sources.zarr import open_zarr

    dst = _unfinished_output(tmp_path)
    with pytest.raises(ValueError, match=r"is inside '.*out\.ome\.zarr', an unfinished fstack"):
        open_zarr(dst / inside, axes=None if inside == "depth" else "zyx")
    with pytest.raises(ValueError, match="an unfinished fstack_dask output.*resume=True"):
        fuse_zarr(dst / inside, tmp_path / "again.ome.zarr", progress=False)
    from fstack_dask._cli.main import main

    assert main(["fuse", str(dst / inside), str(tmp_path / "again.ome.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert "an unfinished fstack_dask output" in err and "with --resume first" in err, err
    assert not (tmp_path / "again.ome.zarr").exists()
    # through a link: the output it leads into is named, not the link's folder ('.' once)
    os.symlink(dst / inside, tmp_path / "link")
    with pytest.raises(ValueError, match=r"is inside '.*out\.ome\.zarr', an unfinished fstack"):
        open_zarr(tmp_path / "link", axes=None if inside == "depth" else "zyx")


@pytest.mark.parametrize("inside", ["0", "depth/0"])
def test_an_array_opened_inside_an_unfinished_output_is_refused_as_its_path_is(tmp_path, inside):
    """``zarr.open_array("out.ome.zarr/0")`` of an unfinished output, passed as an object,
    was taken by ``fuse`` (a (t, y, x) output's, axes="zyx", fused its unwritten blocks as
    fill values), where its path was refused; ``fuse_zarr`` refused it only by its dimension
    names. Both refuse it as unfinished, first."""
    from fstack_dask import fuse

    dst = _unfinished_output(tmp_path)
    array = zarr.open_array(dst / inside, mode="r")
    message = r"'.*out\.ome\.zarr', an unfinished fstack_dask output.*resume=True"
    with pytest.raises(ValueError, match=r"^stack '.*' is inside " + message):
        fuse(array, axes="zyx")  # refused before its axes are looked at
    with pytest.raises(ValueError, match=r"^src '.*' is inside " + message):
        fuse_zarr(array, tmp_path / "again.ome.zarr", axes="zyx", progress=False)
    assert not (tmp_path / "again.ome.zarr").exists()
    whole = zarr.open_array(tmp_path / "s.ome.zarr" / "0", mode="r")  # not an output: fused
    assert fuse(whole, axes="zyx").shape == whole.shape[1:]


# A CLI run that SIGKILLs itself as it creates the output's array argv[1] (the CLI's
# arguments follow): the groups' metadata lists every level, some are not written yet.
KILLED_CREATING_ARRAY = """
import os, signal, sys
import zarr

create = zarr.Group.create_array

def die_at(self, name, *args, **kwargs):
    if name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return create(self, name, *args, **kwargs)

zarr.Group.create_array = die_at
from fstack_dask._cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_info_of_a_run_killed_while_creating_its_arrays_says_how_far_it_got(
    tmp_path, capsys, overwrite
):
    """A run killed as it created its arrays (the depth map's group written, listing levels
    0 and 1, level 1 not yet), fresh or an overwrite staged beside the previous output:
    ``info`` of dst failed "KeyError: '1'", where it should say what is there and
    that --resume continues."""
    import subprocess
    import sys

    from fstack_dask._cli.main import main

    src = _write(tmp_path, "s", _grey(seed=6), "zyx")
    dst = tmp_path / "out.ome.zarr"
    args = ["fuse", src, dst, "--chunks", "50", "--depth-map", "--no-progress"]
    if overwrite:
        assert main([*map(str, args), "--nhsize", "5"]) == 0
        args.append("--overwrite")
    killed = subprocess.run([sys.executable, "-c", KILLED_CREATING_ARRAY, "depth/1",
                             *map(str, args)], capture_output=True, text=True, timeout=300,
                            check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    capsys.readouterr()
    assert main(["info", str(dst)]) == 0
    info = capsys.readouterr()
    assert "error" not in info.err, info.err
    assert "0 of 12 blocks of level 0 done" in info.out, info.out
    assert "resumable" in info.out, info.out
    resumed = subprocess.run([sys.executable, "-m", "fstack_dask", *map(str, args), "--resume"],
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    whole = tmp_path / "whole.ome.zarr"
    fuse_zarr(src, whole, chunks=50, depth_map=True, progress=False)
    for name in ("0", "1", "depth/0", "depth/1"):
        np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")[name][...],
                                      zarr.open_group(str(whole), mode="r")[name][...])  # fmt: skip
