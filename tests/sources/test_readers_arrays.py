"""array_source (NumPy, dask, xarray), open_hdf5, and the OpenedStack contract."""

from __future__ import annotations

import pickle
import sys

import dask.array as da
import numpy as np
import pytest
from readers_util import need, read_concurrently, regions

from fstack_dask._sources.arrays import array_source
from fstack_dask._sources.common import MissingExtraError, ngff_unit
from fstack_dask._sources.stack_meta import OpenedStack


def _stack(shape=(2, 5, 24, 30), dtype="uint16"):
    return (np.arange(np.prod(shape)) % 4093).reshape(shape).astype(dtype)


def test_numpy_needs_axes():
    data = _stack()
    with pytest.raises(ValueError, match=r"^axes is required for a numpy array"):
        array_source(data)
    with pytest.raises(ValueError, match=r"^axes 'zyx' has 3 letters"):
        array_source(data, axes="zyx")
    opened = array_source(data, axes="CZYX")
    assert (opened.kind, opened.axes, opened.files, opened.rgb) == ("numpy", "czyx", (), False)
    assert opened.array.chunks == data.shape
    np.testing.assert_array_equal(opened.array[1, 2:4, 3:9], data[1, 2:4, 3:9])
    with pytest.raises(TypeError, match=r"^obj must be a numpy.ndarray"):
        array_source([[1, 2]], axes="yx")


def test_dask_regions_and_chunks():
    data = _stack()
    lazy = da.from_array(data, chunks=(1, 5, 10, 16))
    opened = array_source(lazy, axes="czyx")
    assert opened.kind == "dask"
    assert opened.array.chunks == (1, 5, 10, 16)
    assert opened.array.dask_array is lazy
    keys = [(slice(None), slice(None), ys, xs) for ys, xs in regions((24, 30), n=20)]
    for key, got in zip(keys, read_concurrently(opened.array, keys, threads=4), strict=True):
        np.testing.assert_array_equal(got, data[key])
    np.testing.assert_array_equal(opened.array[0, 1], data[0, 1])
    # Reading inside a task of another threaded computation must not deadlock.
    outer = da.from_array(opened.array, chunks=(2, 5, 12, 15))
    np.testing.assert_array_equal(outer.compute(scheduler="threads"), data)


def test_xarray_dims_scale_units_channel_names():
    xr = need("xarray")
    data = _stack()
    arr = xr.DataArray(
        data,
        dims=("channel", "focus", "y", "x"),
        coords={
            "channel": ["DAPI", "GFP"],
            "focus": 10.0 + 0.25 * np.arange(5),
            "y": 0.1 * np.arange(24),
            "x": 5 + 0.1 * np.arange(30),
        },
        name="raw",
    )
    arr.coords["focus"].attrs["units"] = "\u00b5m"
    arr.coords["y"].attrs["units"] = "micrometers"
    arr.coords["x"].attrs["units"] = "um"
    opened = array_source(arr)
    assert (opened.kind, opened.axes) == ("xarray", "czyx")
    assert opened.scale == pytest.approx({"z": 0.25, "y": 0.1, "x": 0.1})
    assert opened.translation == pytest.approx({"z": 10.0, "y": 0.0, "x": 5.0})
    assert opened.units == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert opened.channel_names == ("DAPI", "GFP")
    assert "'raw'" in opened.description
    np.testing.assert_array_equal(opened.array[:, 1:3, 4:20, 2:3], data[:, 1:3, 4:20, 2:3])
    assert array_source(arr, axes="czyx").axes == "czyx"  # agreeing axes are fine
    with pytest.raises(ValueError, match=r"^axes 'zcyx' contradicts the xarray dims"):
        array_source(arr, axes="zcyx")


def test_xarray_uneven_coords_and_dask_backing():
    xr = need("xarray")
    data = _stack((6, 24, 30))
    arr = xr.DataArray(data, dims=("Z", "Y", "X"), coords={"Z": [0, 1, 2, 4, 8, 16]})
    opened = array_source(arr.chunk({"Z": 2, "Y": 12}))
    assert opened.axes == "zyx" and opened.scale == {}  # uneven z: no scale
    # and it says so (it was dropped in silence, and so was a descending one: interop run)
    assert opened.warnings == (
        f"{opened.description}: the coordinate of dim 'Z' is not evenly increasing (0, 1, "
        "...): it gives z no scale (the depth map is in plane numbers)",
    )
    falling = array_source(xr.DataArray(data, dims=("z", "y", "x"), coords={"y": -np.arange(24.0)}))
    assert "coordinate of dim 'y' is not evenly increasing (-0, -1, ...)" in falling.warnings[0]
    assert opened.array.chunks == (2, 12, 30)
    np.testing.assert_array_equal(opened.array[1:5, 3:20], data[1:5, 3:20])
    unnamed = xr.DataArray(data)
    with pytest.raises(ValueError, match=r"^axes is required: xarray dims \('dim_0'"):
        array_source(unnamed)
    assert array_source(unnamed, axes="zyx").axes == "zyx"
    with pytest.raises(ValueError, match=r"^axes from xarray dims \('t', 'y', 'x'\) are unusable"):
        array_source(xr.DataArray(data, dims=("t", "y", "x")))


@pytest.mark.parametrize("axes", ["czyx", "tzyx", "zcyx"])
def test_hdf5_pixel_size_of_z_y_x_in_a_dataset_of_more_dimensions(tmp_path, axes):
    """``element_size_um`` holds z, y and x only (Fiji's HDF5 plugin writes three values), and
    a dataset of channels or time points beside them had its pixel size dropped in silence:
    'scale: unknown', 1.0 written (an adversarial run on inputs). The three values are now
    the dataset's z, y and x, in the order it holds them."""
    h5py = need("h5py")
    from fstack_dask._sources.hdf5 import open_hdf5

    data = _stack((2, 5, 8, 9))
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("s", data=data).attrs["element_size_um"] = [2.0, 0.5, 0.25]
    opened = open_hdf5(path, axes=axes)
    assert opened.scale == {"z": 2.0, "y": 0.5, "x": 0.25}
    assert opened.units == dict.fromkeys("zyx", "micrometer")
    with h5py.File(path, "a") as f:
        f["s"].attrs["element_size_um"] = [1.0, 2.0, 0.5, 0.25]  # one per dimension, as before
    each = {a: v for a, v in zip(axes, [1.0, 2.0, 0.5, 0.25], strict=True) if a != "c"}
    assert open_hdf5(path, axes=axes).scale == each


def test_hdf5_dataset(tmp_path):
    h5py = need("h5py")
    from fstack_dask._sources.hdf5 import open_hdf5

    data = _stack((7, 40, 50))
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw/ch0", data=data, chunks=(1, 16, 16), compression="gzip")
        ds.attrs["element_size_um"] = [0.5, 0.1, 0.1]
        f.create_dataset("meta/flat", data=np.zeros(4))
    opens = [
        open_hdf5(path, axes="zyx"),  # the only dataset of >= 3 dimensions
        open_hdf5(f"{path}/raw/ch0", axes="zyx"),
        open_hdf5(path, dataset="/raw/ch0", axes="zyx"),
    ]
    for opened in opens:
        assert (opened.kind, opened.axes, opened.files) == ("hdf5", "zyx", (str(path),))
        assert opened.array.chunks == (1, 16, 16)
        assert opened.scale == {"z": 0.5, "y": 0.1, "x": 0.1}
        assert opened.units == dict.fromkeys("zyx", "micrometer")
        keys = [(slice(None), ys, xs) for ys, xs in regions((40, 50), n=12)]
        for key, got in zip(keys, read_concurrently(opened.array, keys, threads=4), strict=True):
            np.testing.assert_array_equal(got, data[key])
    clone = pickle.loads(pickle.dumps(opened.array))
    np.testing.assert_array_equal(clone[3:5, 1:2], data[3:5, 1:2])
    for array in [clone] + [o.array for o in opens]:
        array.close()  # HDF5 refuses to open a file for writing while it is open for reading

    with pytest.raises(ValueError, match=r"^axes is required: HDF5 dataset '/raw/ch0'"):
        open_hdf5(path)
    with h5py.File(path, "a") as f:
        for i, label in enumerate(("depth", "y", "x")):
            f["raw/ch0"].dims[i].label = label
        f.create_dataset("raw/ch1", data=data)
    assert open_hdf5(f"{path}/raw/ch0").axes == "zyx"  # from the dimension labels
    with pytest.raises(ValueError, match=r"^axes 'yzx' contradicts the dimension labels"):
        open_hdf5(f"{path}/raw/ch0", axes="yzx")
    with pytest.raises(ValueError, match=r"^HDF5 file .* holds 2 datasets .*'/raw/ch0'") as info:
        open_hdf5(path, axes="zyx")
    # the source's own spelling, not the Python keyword "path=" (a command-line user has SRC)
    assert str(info.value).endswith(f"; name one after the file, e.g. src '{path}/raw/ch0'")
    from fstack_dask._sources.open import open_source

    with pytest.raises(ValueError, match=r"^level=1 applies to pyramids; HDF5 datasets have a"):
        open_source(f"{path}/raw/ch0", level=1)
    with pytest.raises(ValueError, match=r"^dataset '/nope' of HDF5 file .* is missing"):
        open_hdf5(path, dataset="/nope", axes="zyx")
    with pytest.raises(ValueError, match=r"^dataset '/raw' of HDF5 file .* is a group"):
        open_hdf5(f"{path}/raw", axes="zyx")
    with pytest.raises(FileNotFoundError, match=r"^path .* does not exist"):
        open_hdf5(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not HDF5")
    with pytest.raises(ValueError, match=r"^path .* is not a readable HDF5 file"):
        open_hdf5(tmp_path / "text.h5")


@pytest.mark.parametrize("kind", ["hdf5", "xarray"])
def test_two_names_for_one_axis_leave_the_axes_to_axes(tmp_path, kind):
    """Dimension labels (xarray dims) 'plane' and 'depth' both say z: axes='czyx' was refused
    as contradicting them, and without axes= the message said the labels were missing or not
    words we read (g54; a Zarr array's case was fixed in 6cb9f60). axes= decides, as there."""
    names = ("plane", "depth", "y", "x")
    data = _stack((2, 3, 8, 8))
    if kind == "hdf5":
        h5py = need("h5py")
        from fstack_dask._sources.hdf5 import open_hdf5

        with h5py.File(tmp_path / "s.h5", "w") as f:
            f.create_dataset("data", data=data)
            for i, name in enumerate(names):
                f["data"].dims[i].label = name

        def opened(**kw):
            return open_hdf5(tmp_path / "s.h5", **kw)
    else:
        xr = need("xarray")

        def opened(**kw):
            return array_source(xr.DataArray(data, dims=names), **kw)

    got = opened(axes="czyx")
    assert got.axes == "czyx"
    np.testing.assert_array_equal(got.array[1, 2], data[1, 2])
    with pytest.raises(ValueError, match=r"^axes is required: .* one axis each"):
        opened()


@pytest.mark.parametrize("where", ["the file's folder", "another folder"])
def test_hdf5_external_storage_is_read_beside_the_file_from_any_folder(tmp_path, monkeypatch,
                                                                        where):  # fmt: skip
    """A dataset whose samples are in ``raw.bin`` (HDF5 external storage, a relative name),
    opened from another working folder that holds a decoy ``raw.bin``: HDF5 looked in the
    working folder and read the decoy (a third adversarial run, 2026-12-05). The file read
    is the one beside the HDF5 file, and the one the source lists."""
    h5py = need("h5py")
    from fstack_dask._sources.hdf5 import open_hdf5

    data = _stack((4, 24, 30))
    (tmp_path / "X").mkdir()
    (tmp_path / "Y").mkdir()
    data.tofile(tmp_path / "X" / "raw.bin")
    (65535 - data).tofile(tmp_path / "Y" / "raw.bin")  # a decoy of the same name
    with h5py.File(tmp_path / "X" / "data.h5", "w") as f:
        f.create_dataset("data", shape=data.shape, dtype=data.dtype,
                         external=[("raw.bin", 0, data.nbytes)])  # fmt: skip
    monkeypatch.chdir(tmp_path / ("X" if where == "the file's folder" else "Y"))
    opened = open_hdf5(tmp_path / "X" / "data.h5", dataset="data", axes="zyx")
    assert str(tmp_path / "X" / "raw.bin") in opened.files
    np.testing.assert_array_equal(opened.array[...], data)
    clone = pickle.loads(pickle.dumps(opened.array))
    np.testing.assert_array_equal(clone[1:3, 5:9], data[1:3, 5:9])
    for array in (opened.array, clone):
        array.close()


def test_hdf5_external_storage_cut_short_is_refused(tmp_path):
    """HDF5 reads what an external file lacks as zeros: a truncated copy was fused without a
    word (a fourth adversarial run). Refused, naming the file and the bytes."""
    h5py = need("h5py")
    from fstack_dask._sources.hdf5 import open_hdf5

    data = _stack((4, 24, 30))
    data.tofile(tmp_path / "raw.bin")
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("data", shape=data.shape, dtype=data.dtype,
                         external=[("raw.bin", 0, data.nbytes)])  # fmt: skip
    open_hdf5(tmp_path / "data.h5", dataset="data", axes="zyx").array.close()  # whole: fine
    with open(tmp_path / "raw.bin", "r+b") as fh:
        fh.truncate(data.nbytes // 2)
    with pytest.raises(ValueError, match=rf"keeps {data.nbytes} bytes at offset 0 of external"):
        open_hdf5(tmp_path / "data.h5", dataset="data", axes="zyx")


def test_hdf5_enum_dataset_is_refused_naming_it(tmp_path, capsys):
    """An enum's integers are labels (a segmentation's classes): they were fused as their base
    integer in silence, blended into values that label nothing. Refused in one line."""
    h5py = need("h5py")
    from fstack_dask._cli.main import main

    kinds = h5py.enum_dtype({"background": 0, "cell": 1, "nucleus": 2}, basetype="u1")
    labels = np.random.default_rng(0).integers(0, 3, (6, 32, 32)).astype("u1")
    with h5py.File(tmp_path / "seg.h5", "w") as f:
        f.create_dataset("seg", data=labels, dtype=kinds)  # the file's only dataset
    code = main(["fuse", str(tmp_path / "seg.h5"), str(tmp_path / "out.zarr"), "--axes", "zyx"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "out.zarr").exists()
    assert "dataset '/seg' of HDF5 file" in err and "is an enum of uint8 (background=0" in err


def test_hdf5_external_link_lists_the_file_holding_the_data(tmp_path):
    """``master.h5``'s dataset is an ExternalLink into ``data.h5``: the source's files are
    both (they were ``master.h5`` alone, so a rewritten ``data.h5`` went unseen)."""
    h5py = need("h5py")
    from fstack_dask._sources.hdf5 import open_hdf5

    data = _stack((4, 24, 30))
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["stack"] = data
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f["stack"] = h5py.ExternalLink("data.h5", "/stack")
    opened = open_hdf5(f"{tmp_path / 'master.h5'}/stack", axes="zyx")
    assert opened.files == (str(tmp_path / "master.h5"), str(tmp_path / "data.h5"))
    np.testing.assert_array_equal(opened.array[...], data)
    opened.array.close()


def test_missing_h5py_names_the_extra(monkeypatch, tmp_path):
    from fstack_dask._sources.hdf5 import open_hdf5

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingExtraError, match=r'pip install "fstack_dask\[hdf5\]"'):
        open_hdf5(tmp_path / "a.h5")


def test_opened_stack_refuses_inconsistent_fields():
    array = array_source(_stack((3, 4, 5)), axes="zyx").array
    fields = dict(
        kind="numpy",
        scale={},
        units={},
        translation={},
        channel_names=None,
        channel_colors=None,
        rgb=False,
        files=(),
        description="",
    )
    assert OpenedStack(array=array, axes="zyx", **fields).axes == "zyx"
    with pytest.raises(ValueError, match=r"lower case"):
        OpenedStack(array=array, axes="ZYX", **fields)
    with pytest.raises(ValueError, match=r"^scale names axes \['t'\]"):
        OpenedStack(array=array, axes="zyx", **{**fields, "scale": {"t": 1.0}})
    with pytest.raises(ValueError, match=r"^rgb=True needs a 'c' axis"):
        OpenedStack(array=array, axes="zyx", **{**fields, "rgb": True})


def test_ngff_unit_names():
    assert ngff_unit("\u00b5m") == ngff_unit("\u03bcm") == ngff_unit("micron") == "micrometer"
    assert ngff_unit("nm") == "nanometer" and ngff_unit("Millimeters") == "millimeter"
    assert ngff_unit("sec") == ngff_unit("s") == "second" and ngff_unit("ms") == "millisecond"
    assert ngff_unit("pixel") is None and ngff_unit(None) is None


def test_what_an_array_source_would_lose_or_cannot_plan_is_refused(tmp_path):
    """A masked array's mask was dropped silently; a dask array with unknown chunk sizes
    gave NumPy's or dask's errors naming nothing; a folder in a list of planes was said not
    to exist (an adversarial run)."""
    from fstack_dask import focus_stack, fuse, fuse_zarr

    stack = np.random.default_rng(0).integers(0, 60000, (5, 64, 64), dtype="uint16")
    masked = np.ma.masked_greater(stack, 30000)
    with pytest.raises(TypeError, match="src is a masked array"):
        fuse_zarr(masked, tmp_path / "a.zarr", axes="zyx", progress=False)
    with pytest.raises(TypeError, match="stack is a masked array"):
        fuse(masked, axes="zyx")
    with pytest.raises(TypeError, match="im_stack is a masked array"):
        focus_stack(np.ma.masked_greater(np.moveaxis(stack, 0, -1), 30000))
    lazy_masked = da.ma.masked_greater(da.from_array(stack, chunks=(5, 32, 32)), 30000)
    with pytest.raises(TypeError, match="src is a masked array"):  # (a ninth run: accepted)
        fuse_zarr(lazy_masked, tmp_path / "a.zarr", axes="zyx", progress=False)
    with pytest.raises(TypeError, match="stack is a masked array"):
        fuse(lazy_masked, axes="zyx")
    x = da.from_array(stack, chunks=(5, 32, 32))
    unknown = x[x[:, 0, 0] >= 0]
    with pytest.raises(ValueError, match="src is a dask array with unknown chunk sizes"):
        fuse_zarr(unknown, tmp_path / "b.zarr", axes="zyx", progress=False)
    with pytest.raises(ValueError, match="stack is a dask array with unknown chunk sizes"):
        fuse(x[:, x[0, :, 0] >= 0, :], axes="zyx")
    (tmp_path / "planes").mkdir()
    with pytest.raises(ValueError, match="listed in src, is a folder"):
        fuse_zarr([tmp_path / "planes"], tmp_path / "c.zarr", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["planes"]
