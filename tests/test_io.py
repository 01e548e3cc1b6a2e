"""Tests for fstack_dask._io against real Zarr stores on disk."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from fstack_dask._io import (
    Source,
    check_destination,
    create_output,
    open_source,
    parse_axes,
    write_ome_zarr_stack,
)


def _stack(shape=(4, 6, 5), dtype="uint16"):
    return (np.arange(np.prod(shape)) % 251).reshape(shape).astype(dtype)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below root with its size and mtime, to prove nothing changed."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------ parse_axes


@pytest.mark.parametrize(
    ("axes", "ndim", "expected"),
    [
        ("zyx", 3, "zyx"),
        ("ZYX", 3, "zyx"),
        ("czyx", 4, "czyx"),
        ("tczyx", 5, "tczyx"),
        ("yxz", 3, "yxz"),
        ("yxzc", 4, "yxzc"),
        ("bzyx", 4, "bzyx"),
    ],
)
def test_parse_axes_valid(axes, ndim, expected):
    assert parse_axes(axes, ndim) == expected


@pytest.mark.parametrize(
    ("axes", "ndim", "fragment"),
    [
        ("zyx", 4, "4 dimensions"),
        ("czyx", 3, "3 dimensions"),
        ("zzyx", 4, "repeats"),
        ("zYy", 3, "repeats"),
        ("z1x", 3, "letters"),
        ("z x", 3, "letters"),
        ("zyé", 3, "letters"),
        ("cyx", 3, "lacks 'z'"),
        ("zcx", 3, "lacks 'y'"),
        ("", 0, "letters"),
    ],
)
def test_parse_axes_invalid(axes, ndim, fragment):
    with pytest.raises(ValueError, match="axes") as info:
        parse_axes(axes, ndim)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_axes_rejects_non_str():
    with pytest.raises(TypeError, match="axes must be a str"):
        parse_axes(["z", "y", "x"], 3)  # type: ignore[arg-type]


# ------------------------------------------------------------- open_source: arrays


def test_open_v2_array_with_array_dimensions(tmp_path):
    data = _stack()
    path = tmp_path / "v2.zarr"
    arr = zarr.create_array(
        str(path),
        shape=data.shape,
        dtype=data.dtype,
        zarr_format=2,
        attributes={"_ARRAY_DIMENSIONS": ["z", "y", "x"]},
    )
    arr[...] = data
    before = _snapshot(path)

    src = open_source(path)  # a Path, not a str
    assert isinstance(src, Source)
    assert src.axes == "zyx"
    assert src.scale == {} and src.units == {}
    assert src.ome_version is None
    assert src.root == str(path.resolve())
    assert src.url == str(path)
    assert src.array.read_only
    np.testing.assert_array_equal(src.array[...], data)
    assert _snapshot(path) == before


def test_open_v3_array_with_dimension_names(tmp_path):
    data = _stack((2, 3, 4, 5), "float32")
    path = str(tmp_path / "v3.zarr")
    arr = zarr.create_array(path, shape=data.shape, dtype=data.dtype, dimension_names="CZYX")
    arr[...] = data
    src = open_source(path)
    assert src.axes == "czyx"
    np.testing.assert_array_equal(src.array[...], data)


def test_open_plain_array_needs_axes(tmp_path):
    path = str(tmp_path / "plain.zarr")
    zarr.create_array(path, shape=(3, 4, 5), dtype="uint8")
    with pytest.raises(ValueError, match=r"pass axes=.*'zyx'"):
        open_source(path)
    assert open_source(path, axes="YXZ").axes == "yxz"
    with pytest.raises(ValueError, match="axes"):
        open_source(path, axes="czyx")


def test_open_partial_dimension_names_needs_axes(tmp_path):
    path = str(tmp_path / "partial.zarr")
    zarr.create_array(path, shape=(3, 4, 5), dtype="uint8", dimension_names=["z", None, "x"])
    with pytest.raises(ValueError, match="pass axes="):
        open_source(path)


def test_open_multi_letter_dimension_names_needs_axes(tmp_path):
    path = str(tmp_path / "words.zarr")
    zarr.create_array(path, shape=(3, 4, 5), dtype="uint8", dimension_names=["depth", "y", "x"])
    with pytest.raises(ValueError, match="not single letters"):
        open_source(path)
    assert open_source(path, axes="zyx").axes == "zyx"


def test_open_already_open_array(tmp_path):
    path = tmp_path / "a.zarr"
    arr = zarr.create_array(str(path), shape=(3, 4, 5), dtype="int16", dimension_names="zyx")
    src = open_source(arr)
    assert src.array is arr
    assert src.axes == "zyx"
    assert src.root == str(path.resolve())


def test_open_array_inside_group_reports_node_root(tmp_path):
    path = tmp_path / "img.zarr"
    write_ome_zarr_stack(path, _stack(), axes="zyx")
    arr = zarr.open_group(str(path), mode="r")["0"]
    src = open_source(arr)
    assert src.root == str(path.resolve() / "0")
    assert src.axes == "zyx"


def test_open_file_url(tmp_path):
    data = _stack()
    path = tmp_path / "url.zarr"
    write_ome_zarr_stack(path, data, axes="zyx", scale={"y": 0.5, "x": 0.5})
    url = path.resolve().as_uri()
    assert url.startswith("file://")
    src = open_source(url)
    assert src.url == url
    assert src.root == str(path.resolve())
    assert src.axes == "zyx"
    assert src.scale == {"z": 1.0, "y": 0.5, "x": 0.5}
    np.testing.assert_array_equal(src.array[...], data)


def test_open_memory_url_round_trip():
    url = f"memory://fstack-test-{uuid.uuid4().hex}/img.zarr"
    data = _stack((3, 4, 5), "float32")
    write_ome_zarr_stack(url, data, axes="zyx")
    src = open_source(url)
    assert src.root is None
    assert src.ome_version == "0.5"
    np.testing.assert_array_equal(src.array[...], data)
    with pytest.raises(FileNotFoundError, match="src"):
        open_source(f"memory://fstack-test-{uuid.uuid4().hex}/missing.zarr")


def test_storage_options_rejected_for_local_path(tmp_path):
    path = str(tmp_path / "a.zarr")
    zarr.create_array(path, shape=(2, 2, 2), dtype="uint8", dimension_names="zyx")
    with pytest.raises(ValueError, match="storage_options"):
        open_source(path, storage_options={"anon": True})


# ---------------------------------------------------------- open_source: OME-Zarr


@pytest.mark.parametrize(("zarr_format", "version"), [(2, "0.4"), (3, "0.5")])
def test_open_ome_group(tmp_path, zarr_format, version):
    data = _stack((2, 4, 6, 5))
    path = tmp_path / "ome.zarr"
    write_ome_zarr_stack(
        path,
        data,
        axes="czyx",
        scale={"z": 2.0, "y": 0.25, "x": 0.5},
        units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
        zarr_format=zarr_format,
        chunks=(1, 2, 3, 5),
    )
    before = _snapshot(path)
    src = open_source(str(path))
    assert src.ome_version == version
    assert src.axes == "czyx"
    assert src.scale == {"c": 1.0, "z": 2.0, "y": 0.25, "x": 0.5}
    assert src.units == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert src.array.metadata.zarr_format == zarr_format
    assert src.array.chunks == (1, 2, 3, 5)
    np.testing.assert_array_equal(src.array[...], data)
    # Agreeing explicit axes (any case) are accepted.
    assert open_source(str(path), axes="CZYX").axes == "czyx"
    assert _snapshot(path) == before


def test_write_ome_zarr_metadata_on_disk(tmp_path):
    v2 = tmp_path / "v2.zarr"
    v3 = tmp_path / "v3.zarr"
    write_ome_zarr_stack(v2, _stack(), axes="zyx", zarr_format=2)
    write_ome_zarr_stack(v3, _stack(), axes="zyx", zarr_format=3)

    zattrs = json.loads((v2 / ".zattrs").read_text())
    ms = zattrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" for a in ms["axes"])
    assert ms["datasets"][0]["path"] == "0"
    zarray = json.loads((v2 / "0" / ".zarray").read_text())
    assert zarray["dimension_separator"] == "/"

    meta = json.loads((v3 / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    assert "version" not in ome["multiscales"][0]
    arr_meta = json.loads((v3 / "0" / "zarr.json").read_text())
    assert arr_meta["dimension_names"] == ["z", "y", "x"]


def test_open_ome_multiscale_level_transform_and_legacy_axes(tmp_path):
    # Hand-written NGFF 0.3-style string axes plus a multiscale-level scale.
    path = tmp_path / "legacy.zarr"
    group = zarr.create_group(
        str(path),
        zarr_format=2,
        attributes={
            "multiscales": [
                {
                    "version": "0.4",
                    "axes": ["z", "y", "x"],
                    "datasets": [
                        {
                            "path": "s0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": [1.0, 2.0, 2.0]},
                                {"type": "translation", "translation": [0.0, 5.0, 5.0]},
                            ],
                        },
                        {"path": "s1"},
                    ],
                    "coordinateTransformations": [{"type": "scale", "scale": [3.0, 0.5, 0.5]}],
                }
            ]
        },
    )
    group.create_array("s0", shape=(2, 3, 4), dtype="float64")
    src = open_source(path)
    assert src.axes == "zyx"
    assert src.scale == {"z": 3.0, "y": 1.0, "x": 1.0}
    assert src.units == {}
    assert src.array.shape == (2, 3, 4)


def test_open_ome_axes_disagree(tmp_path):
    path = tmp_path / "ome.zarr"
    write_ome_zarr_stack(path, _stack(), axes="zyx")
    with pytest.raises(ValueError, match=r"axes 'yxz' disagrees .*declares 'zyx'") as info:
        open_source(path, axes="yxz")
    assert "\n" not in str(info.value)


def test_open_group_without_multiscales(tmp_path):
    path = tmp_path / "group.zarr"
    group = zarr.create_group(str(path))
    group.create_array("0", shape=(2, 3, 4), dtype="uint8", dimension_names="zyx")
    with pytest.raises(ValueError, match="without OME-NGFF multiscales metadata") as info:
        open_source(path)
    assert "pass the array path" in str(info.value)
    # The suggested array path then works.
    assert open_source(path / "0").axes == "zyx"


def test_open_ome_2d_image_is_not_a_stack(tmp_path):
    path = tmp_path / "plane.zarr"
    group = zarr.create_group(
        str(path),
        attributes={
            "ome": {
                "version": "0.5",
                "multiscales": [
                    {
                        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                        "datasets": [
                            {
                                "path": "0",
                                "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}],
                            }
                        ],
                    }
                ],
            }
        },
    )
    group.create_array("0", shape=(3, 4), dtype="uint8", dimension_names="yx")
    with pytest.raises(ValueError, match=r"src .*lacks 'z'"):
        open_source(path)


# ----------------------------------------------------------- open_source: errors


def test_open_missing(tmp_path):
    missing = tmp_path / "nope.zarr"
    with pytest.raises(FileNotFoundError, match="src .*nope.zarr"):
        open_source(missing)
    assert not missing.exists()


def test_open_non_zarr_directory(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "image.tif").write_bytes(b"II*\x00")
    with pytest.raises(ValueError, match="is not a Zarr array or group"):
        open_source(plain)
    assert sorted(os.listdir(plain)) == ["image.tif"]


def test_open_plain_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"src .*notes.txt.* is not a Zarr array or group"):
        open_source(str(text))


def test_open_rejects_non_path_src():
    with pytest.raises(TypeError, match="src must be"):
        open_source(np.zeros((2, 2, 2)))  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["bool", "complex64", "str"])
def test_open_unsupported_dtype(tmp_path, dtype):
    path = str(tmp_path / f"{dtype}.zarr")
    zarr.create_array(path, shape=(2, 3, 4), dtype=dtype, dimension_names="zyx")
    with pytest.raises(TypeError, match=r"src .* has dtype .*expected an integer or floating"):
        open_source(path)


def test_open_zero_length_axis(tmp_path):
    path = str(tmp_path / "empty.zarr")
    zarr.create_array(path, shape=(0, 3, 4), dtype="uint8", dimension_names="zyx")
    with pytest.raises(ValueError, match="length 0 along axis 'z'"):
        open_source(path)


# ------------------------------------------------------------- check_destination


def _source_store(tmp_path: Path) -> Path:
    path = tmp_path / "src.zarr"
    write_ome_zarr_stack(path, _stack(), axes="zyx")
    return path


def test_check_destination_ok(tmp_path):
    src = _source_store(tmp_path)
    dst = tmp_path / "out" / "deeper" / "fused.zarr"
    check_destination(dst, src_root=str(src), overwrite=False)
    check_destination(str(dst), src_root=None, overwrite=True)
    assert not (tmp_path / "out").exists()


def test_check_destination_existing(tmp_path):
    src = _source_store(tmp_path)
    dst = tmp_path / "fused.zarr"
    create_output(
        dst,
        axes="yx",
        shape=(4, 4),
        dtype="uint8",
        chunks=(2, 2),
        scale={},
        units={},
    )
    before = _snapshot(dst)
    with pytest.raises(FileExistsError, match=r"dst .*fused.zarr.*overwrite=True") as info:
        check_destination(dst, src_root=str(src), overwrite=False)
    assert "\n" not in str(info.value)
    check_destination(dst, src_root=str(src), overwrite=True)
    assert _snapshot(dst) == before


@pytest.mark.parametrize("where", ["equal", "inside", "inside_via_dots"])
def test_check_destination_refuses_source(tmp_path, where):
    src = _source_store(tmp_path)
    dst = {
        "equal": src,
        "inside": src / "fused",
        "inside_via_dots": tmp_path / "x" / ".." / "src.zarr" / "0" / "fused",
    }[where]
    before = _snapshot(src)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="dst .*source"):
            check_destination(dst, src_root=str(src), overwrite=overwrite)
    assert _snapshot(src) == before
    assert not (tmp_path / "x").exists()


def test_check_destination_refuses_enclosing_source(tmp_path):
    src = _source_store(tmp_path / "project")
    with pytest.raises(ValueError, match="dst .*contains the source"):
        check_destination(tmp_path / "project", src_root=str(src), overwrite=True)
    assert src.exists()


def test_check_destination_symlinked_source(tmp_path):
    src = _source_store(tmp_path)
    link = tmp_path / "link.zarr"
    link.symlink_to(src, target_is_directory=True)
    with pytest.raises(ValueError, match="dst .*source"):
        check_destination(link / "fused", src_root=str(src), overwrite=False)


def test_check_destination_refuses_deleting_non_zarr(tmp_path):
    victim = tmp_path / "documents"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="dst .*not a Zarr store"):
        check_destination(victim, src_root=None, overwrite=True)
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="dst .*not a Zarr store"):
        check_destination(a_file, src_root=None, overwrite=True)
    # An empty directory may be replaced.
    empty = tmp_path / "empty"
    empty.mkdir()
    check_destination(empty, src_root=None, overwrite=True)


def test_check_destination_parent_is_file(tmp_path):
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="dst .*not a directory"):
        check_destination(a_file / "fused.zarr", src_root=None, overwrite=False)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions"
)
def test_check_destination_unwritable_parent(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="dst .*not writable"):
            check_destination(locked / "fused.zarr", src_root=None, overwrite=False)
    finally:
        locked.chmod(0o700)


def test_check_destination_memory_url():
    url = f"memory://fstack-test-{uuid.uuid4().hex}/out.zarr"
    check_destination(url, src_root=None, overwrite=False)
    create_output(
        url,
        axes="yx",
        shape=(3, 3),
        dtype="float32",
        chunks=(2, 2),
        scale={},
        units={},
    )
    with pytest.raises(FileExistsError, match="dst"):
        check_destination(url, src_root=None, overwrite=False)
    check_destination(url, src_root=None, overwrite=True)


# ------------------------------------------------------------------ create_output


def test_create_output_multichannel_round_trip(tmp_path):
    dst = tmp_path / "fused.ome.zarr"
    provenance = {
        "method": "laplacian",
        "window": (5, 5),
        "threshold": np.float32(0.5),
        "missing": float("nan"),
        "src": tmp_path / "src.zarr",
    }
    group = create_output(
        dst,
        axes="cyx",
        shape=(3, 100, 70),
        dtype=np.uint16,
        chunks=(1, 32, 64),
        scale={"z": 5.0, "y": 0.25, "x": 0.5},
        units={"y": "micrometer", "x": "micrometer"},
        extras={
            "depth": ("yx", np.float32),
            "selectivity": ("yx", "float32"),
            "index": ("yx", "uint8"),
        },
        attributes=provenance,
    )
    assert isinstance(group, zarr.Group)

    reopened = zarr.open_group(str(dst), mode="r")
    assert reopened.metadata.zarr_format == 3
    attrs = reopened.attrs.asdict()
    assert set(attrs) == {"ome", "fstack_dask"}
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert "version" not in ms  # 0.5 keeps the version only at ome level
    assert ms["axes"] == [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert ms["datasets"] == [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.25, 0.5]}]}
    ]
    assert attrs["fstack_dask"] == {
        "method": "laplacian",
        "window": [5, 5],
        "threshold": 0.5,
        "missing": "NaN",
        "src": str(tmp_path / "src.zarr"),
    }
    # The group metadata is strict JSON (no bare NaN).
    json.loads((dst / "zarr.json").read_text(), parse_constant=pytest.fail)

    image = reopened["0"]
    assert image.shape == (3, 100, 70)
    assert image.chunks == (1, 32, 64)
    assert image.shards is None
    assert image.dtype == np.uint16
    assert image.metadata.dimension_names == ("c", "y", "x")
    assert image.fill_value == 0
    assert [type(c).__name__ for c in image.compressors] == ["ZstdCodec"]

    for name, dtype in [("depth", "float32"), ("selectivity", "float32"), ("index", "uint8")]:
        extra = reopened[name]
        assert extra.shape == (100, 70)
        assert extra.chunks == (32, 64)
        assert extra.dtype == np.dtype(dtype)
        assert extra.metadata.dimension_names == ("y", "x")
    assert np.isnan(reopened["depth"].fill_value)
    assert reopened["index"].fill_value == 0

    # The output reads back as a valid OME source (2-D, so not a stack: check metadata only).
    group["0"][0, :2, :2] = 7
    assert reopened["0"][0, 0, 0] == 7


def test_create_output_single_channel_defaults(tmp_path):
    dst = tmp_path / "fused.zarr"
    create_output(
        str(dst),
        axes="yx",
        shape=(10, 20),
        dtype="float32",
        chunks=(64, 8),
        scale={},
        units={},
    )
    group = zarr.open_group(str(dst), mode="r")
    attrs = group.attrs.asdict()
    assert "fstack_dask" not in attrs
    (ms,) = attrs["ome"]["multiscales"]
    assert ms["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]
    image = group["0"]
    assert image.shape == (10, 20)
    assert image.chunks == (10, 8)  # clipped to the image
    assert image.metadata.dimension_names == ("y", "x")
    assert list(group.array_keys()) == ["0"]


def test_create_output_refusals_write_nothing(tmp_path):
    src = _source_store(tmp_path)
    before = _snapshot(src)
    kwargs = dict(axes="yx", shape=(4, 4), dtype="uint8", chunks=(2, 2), scale={}, units={})
    with pytest.raises(ValueError, match="dst"):
        create_output(src / "fused", src_root=str(src), **kwargs)
    with pytest.raises(ValueError, match="dst"):
        create_output(src, src_root=str(src), overwrite=True, **kwargs)
    assert _snapshot(src) == before

    dst = tmp_path / "fused.zarr"
    with pytest.raises(TypeError, match="dtype"):
        create_output(dst, **{**kwargs, "dtype": "complex64"})
    with pytest.raises(ValueError, match="chunks"):
        create_output(dst, **{**kwargs, "chunks": (0, 2)})
    with pytest.raises(ValueError, match="extras"):
        create_output(dst, extras={"0": ("yx", "float32")}, **kwargs)
    with pytest.raises(ValueError, match="extras"):
        create_output(dst, extras={"depth": ("zyx", "float32")}, **kwargs)
    with pytest.raises(TypeError, match="attributes"):
        create_output(dst, attributes={"bad": object()}, **kwargs)
    assert not dst.exists()


def test_create_output_overwrite(tmp_path):
    dst = tmp_path / "fused.zarr"
    kwargs = dict(axes="yx", dtype="uint8", chunks=(2, 2), scale={}, units={})
    first = create_output(dst, shape=(4, 4), extras={"depth": ("yx", "float32")}, **kwargs)
    first["0"][...] = 9
    with pytest.raises(FileExistsError, match="dst"):
        create_output(dst, shape=(6, 6), **kwargs)
    create_output(dst, shape=(6, 6), overwrite=True, **kwargs)
    group = zarr.open_group(str(dst), mode="r")
    assert group["0"].shape == (6, 6)
    assert group["0"][0, 0] == 0
    assert "depth" not in group


def test_write_ome_zarr_stack_refusals(tmp_path):
    data = _stack()
    with pytest.raises(ValueError, match="axes 'yxzc' cannot be written as OME-NGFF"):
        write_ome_zarr_stack(tmp_path / "a.zarr", _stack((4, 6, 5, 2)), axes="yxzc")
    with pytest.raises(ValueError, match="zarr_format"):
        write_ome_zarr_stack(tmp_path / "a.zarr", data, axes="zyx", zarr_format=4)
    with pytest.raises(ValueError, match="scale"):
        write_ome_zarr_stack(tmp_path / "a.zarr", data, axes="zyx", scale={"t": 1.0})
    with pytest.raises(ValueError, match="chunks"):
        write_ome_zarr_stack(tmp_path / "a.zarr", data, axes="zyx", chunks=(1, 2))
    assert not (tmp_path / "a.zarr").exists()
    write_ome_zarr_stack(tmp_path / "a.zarr", data, axes="zyx")
    with pytest.raises(FileExistsError, match="path"):
        write_ome_zarr_stack(tmp_path / "a.zarr", data, axes="zyx")


def test_open_group_object_and_bioformats2raw_layout(tmp_path):
    data = _stack()
    path = tmp_path / "bf2raw.zarr"
    zarr.create_group(str(path), attributes={"ome": {"version": "0.5", "bioformats2raw.layout": 3}})
    write_ome_zarr_stack(path / "0", data, axes="zyx", scale={"z": 3.0})
    src = open_source(zarr.open_group(str(path), mode="r"))
    assert src.axes == "zyx"
    assert src.scale == {"z": 3.0, "y": 1.0, "x": 1.0}
    assert src.root == str(path.resolve())
    np.testing.assert_array_equal(src.array[...], data)


def test_file_urls_missing_and_destination(tmp_path):
    with pytest.raises(FileNotFoundError, match="src"):
        open_source((tmp_path / "nope.zarr").as_uri())
    src = _source_store(tmp_path)
    with pytest.raises(ValueError, match="dst .*source"):
        check_destination((src / "fused").as_uri(), src_root=str(src), overwrite=False)
    with pytest.raises(FileExistsError, match="dst"):
        check_destination(src.as_uri(), src_root=None, overwrite=False)
