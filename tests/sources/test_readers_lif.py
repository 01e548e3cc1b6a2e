"""A LIF file written by Leica LAS X (readlif's test file, GPL-3.0: tests/data/README.md),
read through liffile's memory map; compared with the planes liffile reads into memory
(``asarray()``, its other code path) fused in memory."""

from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
from readers_util import need, regions

liffile = need("liffile")

import fstack_dask  # noqa: E402
from fstack_dask._sources.common import MissingExtraError  # noqa: E402
from fstack_dask._sources.open import open_source  # noqa: E402

LIF = (
    pathlib.Path(__file__).resolve().parents[1] / "data" / "LeicaLASX_wavelength-sweep_example.lif"
)


def _planes(index):
    with liffile.LifFile(LIF) as lif:
        return lif.images[index].asarray()  # T, lambda, Z, Y, X read into memory


def test_the_only_z_stack_is_read_and_images_are_named_by_index_name_or_path():
    """Two lambda scans (no focus axis) beside one z-stack: the file was refused, listing
    all three as if each were a stack (an adversarial run on metadata); the z-stack is read,
    and the run's log and info say which."""
    only = open_source(LIF)
    assert only.axes == "tczyx" and only.shape == (2, 10, 11, 64, 64)
    assert only.notes == (
        "image 2 'x_y_z_t_lambdaEmi' (2T x 10\u03bb x 11Z x 64Y x 64X) of 3, the only one "
        "holding a z-stack",
    )
    by_index = open_source(f"{LIF}/2")
    by_name = open_source(f"{LIF}/x_y_z_t_lambdaEmi")
    assert by_index.axes == by_name.axes == "tczyx"  # the wavelengths are the channels
    assert by_index.shape == (2, 10, 11, 64, 64) and by_index.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\(image 0 'x_y_lambdaEmi'\) has dimensions "
                       r"'\u03bbYX' without a focus axis Z"):  # fmt: skip
        open_source(f"{LIF}/0")


def test_regions_equal_liffile_and_metadata_is_carried():
    src = open_source(f"{LIF}/2")
    planes = _planes(2)
    for ys, xs in regions((64, 64), n=8):
        np.testing.assert_array_equal(src.array[1, 3:7, :, ys, xs], planes[1, 3:7, :, ys, xs])
    clone = pickle.loads(pickle.dumps(src.array))
    np.testing.assert_array_equal(clone[0, 9, 10], planes[0, 9, 10])
    assert src.scale == pytest.approx({"t": 80.91, "z": 0.50020, "y": 0.104814, "x": 0.104814},
                                      rel=1e-4)  # fmt: skip
    assert src.units == {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert [c["label"] for c in src.channels][:2] == ["550 nm", "555 nm"]


def test_fused_image_equals_the_planes_fused_in_memory(tmp_path):
    out = fstack_dask.fuse_zarr(f"{LIF}/2", tmp_path / "out.ome.zarr", chunks=32,
                                progress=False)  # fmt: skip
    planes = _planes(2)
    expected = np.stack([
        np.stack([fstack_dask.focus_stack(np.moveaxis(planes[t, c], 0, -1)) for c in range(10)])
        for t in range(2)
    ])  # fmt: skip
    np.testing.assert_array_equal(out["0"][:], expected)
    ome = out.attrs["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["t", "c", "y", "x"]
    assert ome["omero"]["channels"][0]["label"] == "550 nm"


def test_cli_fuses_the_image_named_by_scene(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(LIF), str(tmp_path / "o.ome.zarr"),
         "--scene", "x_y_z_t_lambdaEmi", "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "tcyx (2, 10, 64, 64) uint8" in res.stdout


def test_missing_liffile_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "liffile", None)
    with pytest.raises(MissingExtraError, match=r'pip install "fstack_dask\[lif\]"$'):
        open_source(f"{LIF}/2")


def test_the_z_positions_are_the_depth_maps(tmp_path):
    """The z-stack's coordinates run from -2.5 um: its depth map held distances from the
    first plane, 0 to 5 um, as if it began at 0 (the position dropped; an adversarial run on
    metadata). Now positions: -2.5 + k x the step."""
    src = open_source(f"{LIF}/2")
    assert src.translation == {"z": -2.5}
    out = fstack_dask.fuse_zarr(f"{LIF}/2", tmp_path / "out.ome.zarr", chunks=32,
                                depth_map=True, progress=False)  # fmt: skip
    depth = out["depth"]["0"][:]
    k = (depth - -2.5) / src.scale["z"]
    assert np.nanmin(depth) < 0 and np.allclose(k, np.round(k), atol=1e-4, equal_nan=True)


def test_several_z_stacks_are_listed_without_the_lambda_scans():
    """No file with two z-stacks could be shipped: liffile's images stood in for by their
    dims. Two z-stacks beside a lambda scan: the refusal lists the z-stacks only; an image
    named is read whatever it holds."""
    from types import SimpleNamespace

    from fstack_dask._sources.lif import _choose
    from fstack_dask._sources.vendor import Scene

    dims = [("\u03bb", "Y", "X"), ("Z", "Y", "X"), ("T", "Z", "Y", "X")]
    images = [SimpleNamespace(dims=d) for d in dims]
    scenes = [Scene(k, f"s{k}", "".join(d)) for k, d in enumerate(dims)]
    with pytest.raises(ValueError, match=r"^LIF 'f\.lif' holds 2 z-stacks: 1 's1' \(ZYX\), "
                       r"2 's2' \(TZYX\); name one after the file"):  # fmt: skip
        _choose(scenes, images, None, "f.lif", "LIF 'f.lif'")
    assert _choose(scenes, images, "0", "f.lif", "LIF 'f.lif'") == (scenes[0], ())


def test_decreasing_coordinates_are_said_to_leave_out_the_position():
    """A z-stack whose z coordinates decrease (taken top down): the depth map held each
    plane's distance from the first, the position left out without a word, where an
    OME-TIFF's decreasing planes are warned of (noticed by g46). Now a warning; the shipped
    file's increasing ones say nothing. (No such LIF could be shipped: liffile's coordinates
    stood in for.)"""
    from fstack_dask._sources.lif import _scale

    coords = {"Z": np.array([4e-6, 2e-6, 0.0]), "Y": np.arange(3) * 2e-7 + 1e-6}
    scale, units, translation, told = _scale(("Z", "Y"), "zy", coords)
    assert scale == pytest.approx({"z": 2.0, "y": 0.2}) and translation == {"y": 1.0}
    assert told == [
        "its z coordinates decrease (4, 2 micrometer, ...): its z position is left out, and a "
        "depth map holds each plane's distance from the first"
    ]
    assert not [w for w in open_source(f"{LIF}/2").warnings if "decrease" in w]
