"""Writing (fstack_dask._outputs.write, fstack_dask.write_stack) on real Zarr stores on disk: the
output's description, validated before anything is written; the output group; durable block
writes; and storing an in-memory stack as OME-Zarr."""

from __future__ import annotations

import json
import os
import re
import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import tree_digest as _tree

from fstack_dask import fuse_zarr, write_stack
from fstack_dask._layout import Layout
from fstack_dask._locations import resolve
from fstack_dask._outputs.write import PENDING, create_output, output_spec, publish, write_block
from fstack_dask._sources.open import open_source


def _stack(shape=(4, 6, 5), dtype="uint16"):
    return (np.arange(np.prod(shape)) % 251).reshape(shape).astype(dtype)


def _spec(source, *, rgb=False, block=(32, 64), maps=(), provenance=None, dtype=None):
    layout = Layout(source.axes, source.shape, rgb)
    return output_spec(
        source, layout, block=block, dtype=np.dtype(dtype or source.dtype), maps=maps,
        provenance=provenance or {"method": "test"},
    )  # fmt: skip


# ------------------------------------------------------------ output_spec + create_output


def test_create_output_multichannel_round_trip(tmp_path):
    src_path = tmp_path / "src.zarr"
    write_stack(
        src_path, _stack((3, 4, 100, 70)), axes="czyx",
        scale={"z": 5.0, "y": 0.25, "x": 0.5},
        units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )  # fmt: skip
    source = open_source(src_path)
    provenance = {
        "method": "laplacian",
        "window": (5, 5),
        "threshold": np.float32(0.5),
        "missing": float("nan"),
        "src": tmp_path / "src.zarr",
    }
    spec = _spec(source, maps=("depth", "selectivity"), provenance=provenance)
    dst = tmp_path / "fused.ome.zarr"
    assert not dst.exists()  # the spec is built in memory
    dst.mkdir()
    group = create_output(resolve(dst, name="dst"), spec)
    assert isinstance(group, zarr.Group)
    # no group declares an image until the run publishes its metadata, as its last write
    for node in (zarr.open_group(str(dst), mode="r"), *(group[m] for m in spec.groups if m)):
        assert "ome" not in node.attrs and PENDING in node.attrs["fstack_dask"]
    publish(resolve(dst, name="dst"))

    reopened = zarr.open_group(str(dst), mode="r")
    assert reopened.metadata.zarr_format == 3
    attrs = reopened.attrs.asdict()
    assert set(attrs) == {"ome", "fstack_dask"}
    assert all(reopened[m].attrs["ome"] == spec.groups[m]["ome"] for m in spec.groups if m)
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert "version" not in ms  # 0.5 keeps the version only at ome level
    assert ms["axes"] == [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    # Only the y/x pixel size is carried over (z is fused away, c has none).
    assert ms["datasets"] == [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.25, 0.5]}]}
    ]
    # One omero entry per channel, with the dtype's range as the window.
    channels = ome["omero"]["channels"]
    assert [c["label"] for c in channels] == ["c0", "c1", "c2"]
    assert all(c["window"] == {"min": 0, "max": 65535, "start": 0, "end": 65535} for c in channels)
    assert attrs["fstack_dask"] == {
        "method": "laplacian",
        "window": [5, 5],
        "threshold": 0.5,
        "missing": "NaN",
        "src": str(tmp_path / "src.zarr"),
        "entries": ["zarr.json", "0", "depth", "selectivity"],  # what is ours, by record
        "complete": True,
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

    for name in ("depth", "selectivity"):
        extra = reopened[name]["0"]
        assert extra.shape == (3, 100, 70)  # channels fused independently: one map each
        assert extra.chunks == (1, 32, 64)
        assert extra.dtype == np.float32
        assert extra.metadata.dimension_names == ("c", "y", "x")
        assert np.isnan(extra.fill_value)

    group["0"][0, :2, :2] = 7
    assert reopened["0"][0, 0, 0] == 7


def test_create_output_single_channel_defaults(tmp_path):
    src_path = tmp_path / "src.zarr"
    zarr.create_array(str(src_path), shape=(3, 10, 20), dtype="float32", dimension_names="zyx")
    source = open_source(src_path)
    dst = tmp_path / "fused.zarr"
    dst.mkdir()
    create_output(resolve(str(dst), name="dst"), _spec(source, block=(64, 8)))
    publish(resolve(str(dst), name="dst"))
    group = zarr.open_group(str(dst), mode="r")
    attrs = group.attrs.asdict()
    assert attrs["fstack_dask"] == {"method": "test", "entries": ["zarr.json", "0"],
                                    "complete": True}  # fmt: skip
    assert "omero" not in attrs["ome"]
    (ms,) = attrs["ome"]["multiscales"]
    assert ms["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0]}
    ]
    image = group["0"]
    assert image.shape == (10, 20)
    assert image.chunks == (10, 8)  # clipped to the image
    assert image.metadata.dimension_names == ("y", "x")
    assert list(group.array_keys()) == ["0"]


def test_create_output_rgb_and_translation(tmp_path):
    src_path = tmp_path / "rgb.zarr"
    write_stack(
        src_path, _stack((3, 4, 12, 10), "uint8"), axes="czyx",
        translation={"z": 7.0, "y": 100.0, "x": -2.0},
    )  # fmt: skip
    source = open_source(src_path)
    dst = tmp_path / "fused.zarr"
    dst.mkdir()
    create_output(resolve(dst, name="dst"), _spec(source, rgb=True, maps=("depth",)))
    publish(resolve(dst, name="dst"))
    group = zarr.open_group(str(dst), mode="r")
    ome = group.attrs["ome"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]},
        {"type": "translation", "translation": [0.0, 100.0, -2.0]},
    ]
    assert ome["omero"]["rdefs"] == {"model": "color"}
    assert [(c["label"], c["color"]) for c in ome["omero"]["channels"]] == [
        ("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"),
    ]  # fmt: skip
    assert group["0"].metadata.dimension_names == ("c", "y", "x")
    assert group["0"].chunks == (1, 12, 10)  # 1 along every axis but y and x
    assert group["depth"]["0"].metadata.dimension_names == ("y", "x")  # one map for 3 channels


def _ome_with_scale(path: Path, scale: list) -> None:
    group = zarr.create_group(
        str(path),
        attributes={
            "ome": {
                "version": "0.5",
                "multiscales": [
                    {
                        "axes": [{"name": a, "type": "space"} for a in "zyx"],
                        "datasets": [
                            {
                                "path": "0",
                                "coordinateTransformations": [{"type": "scale", "scale": scale}],
                            }
                        ],
                    }
                ],
            }
        },
    )
    group.create_array("0", shape=(5, 16, 16), dtype="uint16", dimension_names="zyx")


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_output_spec_refuses_bad_metadata_before_anything_is_written(tmp_path, bad):
    src = tmp_path / "in.zarr"
    _ome_with_scale(src, [1.0, bad, 0.5])
    source = open_source(src)
    with pytest.raises(ValueError, match=r"scale of src .*\['y'\] must be a positive finite"):
        _spec(source)
    dst = tmp_path / "out.zarr"
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="positive finite pixel size"):
        fuse_zarr(src, dst, progress=False)
    assert _tree(tmp_path) == before and not dst.exists()


def test_write_block_reports_the_chunk_files_it_wrote(tmp_path):
    """The keys write_block returns are the files make_durable syncs: they must exist."""
    src_path = tmp_path / "src.zarr"
    write_stack(src_path, _stack((2, 3, 40, 30)), axes="czyx")
    source = open_source(src_path)
    dst = tmp_path / "fused.zarr"
    dst.mkdir()
    group = create_output(resolve(dst, name="dst"), _spec(source, block=(16, 16), maps=("depth",)))
    arrays = {"0": group["0"], "depth": group["depth"]["0"]}
    regions = {name: (slice(1, 2), slice(16, 40), slice(0, 16)) for name in arrays}
    data = {
        "0": np.full((1, 24, 16), 3, np.uint16),
        "depth": np.full((1, 24, 16), 1.5, np.float32),
    }
    keys = write_block(arrays, regions, data)
    assert sorted(keys) == ["0/c/1/1/0", "0/c/1/2/0", "depth/0/c/1/1/0", "depth/0/c/1/2/0"]
    written = {
        os.path.relpath(os.path.join(d, f), dst)
        for d, _, files in os.walk(dst)
        for f in files
        if "/c/" in os.path.join(d, f)
    }
    assert written == set(keys)
    assert (group["0"][1, 16:40, :16] == 3).all() and (group["0"][0] == 0).all()


# ------------------------------------------------------------------------ write_stack


def test_write_stack_metadata_on_disk(tmp_path):
    v2 = tmp_path / "v2.zarr"
    v3 = tmp_path / "v3.zarr"
    write_stack(v2, _stack(), axes="zyx", zarr_format=2)
    write_stack(v3, _stack(), axes="zyx", zarr_format=3)

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


def test_write_stack_round_trip_with_dask_and_metadata(tmp_path):
    data = _stack((2, 5, 40, 30))
    path = tmp_path / "stack.ome.zarr"
    write_stack(
        path, da.from_array(data, chunks=(1, 5, 16, 16)), axes="czyx", chunks=(1, 5, 16, 16),
        scale={"z": 2.0, "y": 0.5, "x": 0.5}, units={"y": "micrometer", "x": "micrometer"},
        translation={"y": 3.0},
    )  # fmt: skip
    source = open_source(path)
    assert source.axes == "czyx" and source.unit_shape == (1, 5, 16, 16)
    assert source.scale == {"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5}
    assert source.units == {"y": "micrometer", "x": "micrometer"}
    assert source.translation == {"c": 0.0, "z": 0.0, "y": 3.0, "x": 0.0}
    np.testing.assert_array_equal(source.array[...], data)


def test_write_stack_of_dask_chunks_smaller_than_its_chunks_loses_nothing(tmp_path):
    # 256 dask chunks went into each stored chunk, written at once without a lock: each
    # task's read-modify-write of the chunk lost the others' parts (about half the pixels 0)
    data = np.random.default_rng(1).integers(1, 255, size=(3, 256, 512), dtype=np.uint8)
    path = tmp_path / "stack.ome.zarr"
    with dask.config.set(scheduler="threads", num_workers=4):
        write_stack(path, da.from_array(data, chunks=(3, 16, 16)), axes="zyx")
    np.testing.assert_array_equal(zarr.open_array(str(path / "0"))[...], data)


def test_write_stack_stores_chunks_all_zero_so_a_fusion_warns_of_none_missing(tmp_path):
    """Zarr stores no chunk all fill value (write_empty_chunks=False, its default): a stack's
    dark corner written by write_stack was warned of by the fusion reading it as chunk files
    "missing ... (never written, or lost in an interrupted copy?)", a false alarm on our own
    output. Every chunk is stored, whichever way the stack is written (at once, from dask,
    through the two-pass rechunk of a stored array)."""
    from safety_util import cli

    data = np.zeros((4, 64, 64), np.uint16)
    data[:, :32, :32] = np.random.default_rng(0).integers(1, 999, (4, 32, 32))
    plane_chunks = zarr.create_array(str(tmp_path / "planes.zarr"), shape=data.shape,
                                     chunks=(1, 64, 64), dtype=data.dtype)  # fmt: skip
    plane_chunks[...] = data
    for name, stack in [("numpy", data), ("dask", da.from_array(data, chunks=(4, 16, 16))),
                        ("stored", plane_chunks)]:  # fmt: skip
        path = tmp_path / f"{name}.ome.zarr"
        write_stack(path, stack, axes="zyx", chunks=(4, 32, 32))
        stored = sorted(str(p.relative_to(path / "0" / "c")) for p in (path / "0" / "c").rglob("*")
                        if p.is_file())  # fmt: skip
        assert stored == ["0/0/0", "0/0/1", "0/1/0", "0/1/1"], (name, stored)
        np.testing.assert_array_equal(zarr.open_array(str(path / "0"))[...], data)
    proc = cli("fuse", tmp_path / "stored.ome.zarr", tmp_path / "out.zarr", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "chunk files" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_write_stack_of_a_stored_array_reads_one_stored_chunk_at_a_time(tmp_path, monkeypatch,
                                                                         kind):  # fmt: skip
    """A stack stored a plane a chunk: each task read its window of every plane at once, and
    zarr decoded all those planes together (16 planes of 4096^2 uint16: a traced peak of
    819 MiB for a 512 MiB stack); each read now spans one stored chunk (259 MiB there)."""
    data = np.random.default_rng(3).integers(0, 255, size=(4, 96, 200), dtype=np.uint8)
    source = _stored_source(tmp_path, kind, data, (1, 96, 200))
    reads = _spied_reads(monkeypatch, source, lambda found: found.shape)
    write_stack(tmp_path / "out.ome.zarr", source, axes="zyx", chunks=(4, 32, 64))
    assert reads and {r[0] for r in reads} == {1}, reads  # one plane, its stored chunk, a read
    monkeypatch.undo()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"))[...], data)


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_write_stack_of_a_stored_array_reads_it_by_chunks(tmp_path, monkeypatch, kind):
    # a zarr.Array or h5py dataset went through np.asarray: read whole into memory first
    data = np.random.default_rng(2).integers(0, 255, size=(3, 96, 200), dtype=np.uint8)
    source = _stored_source(tmp_path, kind, data, (3, 96, 200) if kind == "zarr" else None)
    reads = _spied_reads(monkeypatch, source, lambda found: found.nbytes)
    write_stack(tmp_path / "out.ome.zarr", source, axes="zyx", chunks=(3, 32, 64))
    assert reads and max(reads) == 3 * 32 * 64  # one stored chunk at a time, never the whole
    monkeypatch.undo()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"))[...], data)


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_write_stack_reads_small_stored_chunks_a_region_at_a_time(tmp_path, monkeypatch, kind):
    """Stored chunks smaller than the chunks written were read one by one since 3dcadb4, a
    zarr call each (16 x 2048^2 in 1 x 64 x 64 chunks: 21.8 s, 12.0 s read by regions):
    as many are read at once as hold no more than the region written."""
    data = np.random.default_rng(3).integers(0, 255, size=(3, 96, 200), dtype=np.uint8)
    source = _stored_source(tmp_path, kind, data, (1, 16, 16))
    reads = _spied_reads(monkeypatch, source, lambda found: found.nbytes)
    write_stack(tmp_path / "out.ome.zarr", source, axes="zyx", chunks=(3, 32, 64))
    # a read a chunk written (3 for each of the last column's, 8 px wide: a region of 768 B
    # holds 3 chunks of 256 B); 234 reads one stored chunk each
    assert len(reads) == 9 + 3 * 3 and max(reads) <= 3 * 32 * 64, reads
    monkeypatch.undo()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"))[...], data)


def test_write_stack_refusals(tmp_path):
    data = _stack()
    with pytest.raises(ValueError, match="axes 'yxzc' cannot be written as OME-NGFF"):
        write_stack(tmp_path / "a.zarr", _stack((4, 6, 5, 2)), axes="yxzc")
    with pytest.raises(ValueError, match="zarr_format"):
        write_stack(tmp_path / "a.zarr", data, axes="zyx", zarr_format=4)
    with pytest.raises(ValueError, match="scale"):
        write_stack(tmp_path / "a.zarr", data, axes="zyx", scale={"t": 1.0})
    with pytest.raises(ValueError, match="scale"):
        write_stack(tmp_path / "a.zarr", data, axes="zyx", scale={"y": 0.0})
    with pytest.raises(ValueError, match="chunks"):
        write_stack(tmp_path / "a.zarr", data, axes="zyx", chunks=(1, 2))
    assert not (tmp_path / "a.zarr").exists()
    write_stack(tmp_path / "a.zarr", data, axes="zyx")
    before = _tree(tmp_path / "a.zarr")
    with pytest.raises(FileExistsError, match="path"):
        write_stack(tmp_path / "a.zarr", data, axes="zyx")
    assert _tree(tmp_path / "a.zarr") == before


@pytest.mark.parametrize(
    ("kwargs", "exc", "says"),
    [
        ({"translation": {"y": float("nan")}}, ValueError, r"translation\['y'\] must be finite"),
        ({"units": {"y": 5}}, ValueError, r"units\['y'\] must be a length unit"),
        ({"units": {"y": "parsec-ish"}}, ValueError, r"units\['y'\] must be a length unit"),
        ({"units": {"t": "micrometer"}}, ValueError, r"axis 't', which is not in axes"),
        ({"units": {"q": "micrometer"}}, ValueError, r"axis 'q', which is not in axes"),
        ({"scale": {"y": "1"}}, TypeError, r"scale\['y'\] must be a real number"),
        ({"scale": {"y": True}}, TypeError, r"scale\['y'\] must be a real number"),
        ({"path": "missing/deeper/s.ome.zarr"}, FileNotFoundError, "parent folder"),
        ({"path": "s.png"}, ValueError, "names a PNG file"),
        ({"path": "s.tif"}, ValueError, "names a TIF file"),
        # a falsy non-dict was taken for none, and 10**400 was an OverflowError naming nothing
        ({"scale": 0}, TypeError, "scale must be a dict by axis letter or None, got 0"),
        ({"units": []}, TypeError, r"units must be a dict by axis letter or None, got \[\]"),
        ({"translation": ""}, TypeError, "translation must be a dict"),
        ({"storage_options": 0}, TypeError, "storage_options must be a dict of fsspec options"),
        ({"scale": {"y": 10**400}}, ValueError, r"scale\['y'\] must be finite"),
    ],
)
def test_write_stack_refuses_what_it_wrote_as_given(tmp_path, kwargs, exc, says):
    """Metadata no reader understands (NaN as non-standard JSON, a unit that is no unit, a
    string scale written as 1), a missing parent folder created, an image file's name made a
    Zarr folder: all were written (an adversarial run). Refused, nothing written."""
    kwargs = dict(kwargs)
    path = tmp_path / kwargs.pop("path", "s.ome.zarr")
    with pytest.raises(exc, match=says):
        write_stack(path, _stack(), axes="zyx", **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "kwargs", "says"),
    [
        ("s.zarr", {"chunks": (True, 4, 4)}, r"chunks must be 3 positive ints .* \(True, 4, 4\)"),
        ("s.zarr", {"chunks": (1, np.True_, 4)}, "chunks must be 3 positive ints"),
        ("s.zarr", {"zarr_format": 3.0}, r"zarr_format must be 2 \(OME-NGFF 0.4\) or 3 \(0.5\)"),
        ("s.zarr", {"zarr_format": np.float64(2)}, "zarr_format must be 2"),
        (
            "ftp://localhost:1/s.zarr",
            {},
            r"path 'ftp://localhost:1/s.zarr' cannot be reached .*"
            "check storage_options=",
        ),
    ],
)
def test_write_stack_refuses_a_bool_for_an_int_a_float_format_and_an_unreachable_url(
    tmp_path, monkeypatch, path, kwargs, says
):
    """chunks=(True, 4, 4) was taken for a chunk of 1 plane and zarr_format=3.0 for 3 (a
    bool or a float for an int), and an ftp:// path without its options stopped in fsspec's
    TypeError, naming nothing."""
    monkeypatch.chdir(tmp_path)
    wrong_type = TypeError if kwargs else ValueError  # a type's fault is a TypeError
    with pytest.raises(wrong_type, match=says) as info:
        write_stack(path, _stack(), axes="zyx", **kwargs)
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_write_stack_takes_numpy_integers_for_zarr_format(tmp_path):
    """zarr_format=np.int64(3) (read from an array or a config) failed in zarr's JSON encoder,
    after the folder was made, and left it behind; a bool is no format."""
    write_stack(tmp_path / "v3.zarr", _stack(), axes="zyx", zarr_format=np.int64(3))
    write_stack(tmp_path / "v2.zarr", _stack(), axes="zyx", zarr_format=np.int64(2))
    assert zarr.open_group(str(tmp_path / "v3.zarr"), mode="r").metadata.zarr_format == 3
    assert zarr.open_group(str(tmp_path / "v2.zarr"), mode="r").metadata.zarr_format == 2
    with pytest.raises(TypeError, match="zarr_format must be 2"):
        write_stack(tmp_path / "b.zarr", _stack(), axes="zyx", zarr_format=True)
    assert sorted(os.listdir(tmp_path)) == ["v2.zarr", "v3.zarr"]


def test_write_stack_takes_numpy_chunks_and_names_a_wrong_type_as_such(tmp_path):
    """chunks=np.array([2, 4, 4]) (fuse takes one) was refused as no 3 positive ints; and a
    wrong type (chunks of floats or strings, zarr_format '3', stall_timeout '60') raised the
    ValueError of a wrong value where fuse's options raise a TypeError."""
    write_stack(tmp_path / "np.zarr", _stack(), axes="zyx", chunks=np.array([2, 4, 4]))
    assert zarr.open_array(str(tmp_path / "np.zarr" / "0"), mode="r").chunks == (2, 4, 4)
    for kwargs in ({"chunks": (2.0, 4, 4)}, {"chunks": ("2", 4, 4)}, {"chunks": 4},
                   {"zarr_format": "3"}, {"zarr_format": None}):  # fmt: skip
        with pytest.raises(TypeError, match=f"^{next(iter(kwargs))} must be .*got"):
            write_stack(tmp_path / "b.zarr", _stack(), axes="zyx", **kwargs)
    with pytest.raises(ValueError, match="chunks must be 3 positive ints"):  # a wrong value
        write_stack(tmp_path / "b.zarr", _stack(), axes="zyx", chunks=(0, 4, 4))
    for value in ("60", None, True):
        with pytest.raises(TypeError, match="^stall_timeout must be a positive number"):
            fuse_zarr(tmp_path / "np.zarr", tmp_path / "o.zarr", stall_timeout=value)
    assert sorted(os.listdir(tmp_path)) == ["np.zarr"]


def test_write_stack_leaves_nothing_when_writing_fails_and_clamps_huge_chunks(tmp_path):
    """Chunks of 10**12 created the store, then numpy refused a buffer of that size, and the
    half-written store refused every retry (an adversarial run). A chunk holds at most its
    axis now; a write that fails part-way removes the store it began."""
    data = _stack()
    write_stack(tmp_path / "a.ome.zarr", data, axes="zyx", chunks=(10**12,) * 3)
    assert zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="r")["0"].chunks == data.shape

    def broken(block):
        raise OSError("the source's disk went away")

    failing = da.from_array(data, chunks=(data.shape[0], 4, 4)).map_blocks(broken, dtype=data.dtype)
    with pytest.raises(OSError, match="went away"):
        write_stack(tmp_path / "b.ome.zarr", failing, axes="zyx")
    assert not (tmp_path / "b.ome.zarr").exists()
    write_stack(tmp_path / "b.ome.zarr", data, axes="zyx")  # the retry


@pytest.mark.parametrize(
    ("make", "exc", "says"),
    [
        (lambda: np.zeros((0, 8, 8), "uint16"), ValueError, "stack must not have an empty axis"),
        (lambda: np.zeros((5, 8, 8), bool), TypeError, "stack must have an integer or floating"),
        (lambda: np.ma.masked_greater(np.arange(320).reshape(5, 8, 8), 9), TypeError, "masked"),
        (lambda: da.ma.masked_greater(da.ones((5, 8, 8), chunks=4), 0), TypeError, "masked"),
        (
            lambda: (lambda x: x[x[:, 0, 0] >= 0])(da.ones((5, 8, 8), chunks=4)),
            ValueError,
            "unknown chunk sizes",
        ),
    ],
)
def test_write_stack_refuses_what_a_fusion_would_refuse_later(tmp_path, make, exc, says):
    """An empty axis blamed chunks the user did not give; bool stacks and masked arrays were
    written (the mask lost), and refused only by the fusion (a ninth adversarial run)."""
    with pytest.raises(exc, match=says):
        write_stack(tmp_path / "s.ome.zarr", make(), axes="zyx")
    assert os.listdir(tmp_path) == []


def test_write_stack_of_a_dask_stack_computes_each_chunk_once(tmp_path):
    """``getattr(stack, "dtype", np.asarray(stack).dtype)`` evaluated its default: a dask
    stack was computed whole in memory (an image larger than memory failed) before being
    written chunk by chunk, each chunk computed twice."""
    calls = []

    def part(block_id=None):
        calls.append(block_id)
        return np.ones((5, 16, 16), np.uint16)

    stack = da.map_blocks(part, chunks=((5,), (16,) * 3, (16,) * 2), dtype=np.uint16,
                          meta=np.empty((0, 0, 0), np.uint16))  # fmt: skip
    write_stack(tmp_path / "s.ome.zarr", stack, axes="zyx", chunks=(5, 16, 16))
    assert sorted(calls) == sorted((0, i, j) for i in range(3) for j in range(2))


# write_stack of a dask stack that SIGKILLs itself at its argv[2]-th chunk written to the
# store at argv[1]: a conversion killed midway
KILLED_WRITE_STACK = """
import os, signal, sys
import dask, dask.array as da, numpy as np
from fstack_dask import write_stack

path, count = sys.argv[1], [0]

def part(block_id=None):
    count[0] += os.path.exists(os.path.join(path, "0", "zarr.json"))  # being written
    if count[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return np.full((5, 16, 16), 1000, np.uint16)

stack = da.map_blocks(part, chunks=((5,), (16,) * 3, (16,) * 2), dtype=np.uint16,
                      meta=np.empty((0, 0, 0), np.uint16))
with dask.config.set(scheduler="synchronous"):
    write_stack(path, stack, axes="zyx", chunks=(5, 16, 16))
"""


def test_a_killed_write_stack_leaves_no_image_that_could_be_fused(tmp_path):
    """The multiscales metadata was written first: a write_stack killed midway left a store
    that every reader took for a whole stack, mostly zeros, and fuse_zarr fused it (exit 0).
    The image is declared last: what a kill leaves is a plain group, refused as a source."""
    import subprocess
    import sys

    path = tmp_path / "s.ome.zarr"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE_STACK, str(path), "3"],
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert (path / "0" / "zarr.json").exists()  # killed while writing the data
    assert "multiscales" not in json.dumps(json.loads((path / "zarr.json").read_text()))
    with pytest.raises(ValueError, match="is a store that write_stack did not finish"):
        fuse_zarr(path, tmp_path / "out.ome.zarr", progress=False)
    assert not (tmp_path / "out.ome.zarr").exists()


def test_the_array_of_a_killed_write_stack_is_refused_too(tmp_path):
    """The group's error said to pass its array ('s.ome.zarr/0'), which fused the chunks
    written, the rest as zeros, exit 0 (with only a warning of missing chunk files): the
    group says it is unfinished until its data is written, and its array is refused too
    (CLI: exit 2, nothing written). A finished store keeps no such mark."""
    import subprocess
    import sys

    path = tmp_path / "s.ome.zarr"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE_STACK, str(path), "3"],
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    cli = subprocess.run([sys.executable, "-m", "fstack_dask", "fuse", str(path / "0"),
                          str(tmp_path / "out.ome.zarr")],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert cli.returncode == 2, cli.stderr
    assert "write_stack did not finish" in cli.stderr
    assert not (tmp_path / "out.ome.zarr").exists()
    write_stack(tmp_path / "whole.ome.zarr", np.ones((5, 16, 16), np.uint16), axes="zyx")
    assert list(json.loads((tmp_path / "whole.ome.zarr" / "zarr.json").read_text())
                ["attributes"]) == ["ome"]  # fmt: skip


def test_pyramid_levels_are_computed_in_bands_of_bounded_memory(monkeypatch):
    """A level task of 4096 px chunks downsamples an 8192^2 region, whose float64
    temporaries held 30 times its uint8 samples: 1.9 GiB, and a run at memory_per_task=1GiB
    on 2 threads peaked at 4.4 GB. In bands of rows: the same bits, in bounded memory."""
    import tracemalloc

    from fstack_dask._outputs import pyramid

    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (4099, 4097), dtype=np.uint8)  # odd edges
    tracemalloc.start()
    try:
        out = pyramid.downsample(grey, dtype=np.dtype(np.uint8), nan_aware=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak / 2**20  # 16 MiB of samples (it was 480 MiB)
    padded = np.pad(grey.astype(np.float64), ((0, 1), (0, 1)), constant_values=np.nan)
    mean = np.nanmean(padded.reshape(2050, 2, 2049, 2), axis=(1, 3))  # the 2 x 2 mean, written out
    np.testing.assert_array_equal(out, np.rint(mean).astype(np.uint8), strict=True)
    # a map (NaN where no plane has contrast, the rest averaged), with lead axes: as unbanded
    depth = rng.random((2, 1201, 999)).astype(np.float32)
    depth[depth < 0.2] = np.nan
    monkeypatch.setattr(pyramid, "BAND_PIXELS", 5000)
    banded = pyramid.downsample(depth, dtype=np.dtype(np.float32), nan_aware=True)
    monkeypatch.setattr(pyramid, "BAND_PIXELS", 10**12)
    whole = pyramid.downsample(depth, dtype=np.dtype(np.float32), nan_aware=True)
    np.testing.assert_array_equal(banded, whole, strict=True)
    assert banded.shape == (2, 601, 500)


def _stored_source(tmp_path, kind: str, data: np.ndarray, chunks):
    """``data`` as a zarr.Array or an h5py dataset stored in ``chunks``."""
    if kind == "zarr":
        source = zarr.create_array(tmp_path / "in.zarr", shape=data.shape, dtype=data.dtype,
                                   chunks=chunks)  # fmt: skip
        source[...] = data
        return source
    h5py = pytest.importorskip("h5py")
    return h5py.File(tmp_path / "in.h5", "w").create_dataset("s", data=data, chunks=chunks)


def _spied_reads(monkeypatch, source, measure) -> list:
    """``measure`` of every read of ``source`` (not of the output), as they come."""
    reads = []
    cls = type(source)
    original = cls.__getitem__

    def spy(self, key):
        found = original(self, key)
        where = str(getattr(self, "store_path", "")) or self.file.filename
        if "in." in where:  # the source's reads, not the output's
            reads.append(measure(np.asarray(found)))
        return found

    monkeypatch.setattr(cls, "__getitem__", spy)
    return reads


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_write_stack_of_a_plane_a_chunk_reads_each_plane_once(tmp_path, monkeypatch, kind):
    """A stack stored a plane a chunk (as microscope software writes it), into chunks of all
    planes: each plane was read, so decoded, once per chunk written ((Y/512) x (X/512) times:
    8 x 4096^2 uint16 in 57-62 s); it goes through a temporary array (removed after)."""
    data = np.random.default_rng(4).integers(0, 255, size=(4, 96, 200), dtype=np.uint8)
    source = _stored_source(tmp_path, kind, data, (1, 96, 200))
    reads = _spied_reads(monkeypatch, source, lambda found: found.shape)
    out = tmp_path / "out.ome.zarr"
    write_stack(out, source, axes="zyx", chunks=(4, 32, 64))
    assert sorted(reads) == [(1, 96, 200)] * 4, reads  # each plane read whole, once
    monkeypatch.undo()
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[...], data)
    assert sorted(os.listdir(out)) == ["0", "zarr.json"]  # the temporary array is gone


def test_write_stack_of_a_dask_stack_of_planes_holds_no_more_than_a_few_planes(tmp_path):
    """Memory bounded by the work in flight: a dask stack of planes (da.from_zarr, a stack of
    tifffile planes) rechunked by dask into chunks of all planes held twice the stack
    (traced: 64 MiB for 16 x 1024^2 uint16); a plane and a chunk per thread now."""
    data = np.random.default_rng(5).integers(0, 255, size=(16, 512, 1024), dtype=np.uint8)
    source = _stored_source(tmp_path, "zarr", data, (1, 512, 1024))
    stack = da.from_zarr(source)
    write_stack(tmp_path / "warm.ome.zarr", stack[:, :64, :64], axes="zyx")  # (first-use costs)
    with dask.config.set(scheduler="threads", num_workers=2):
        tracemalloc.start()
        try:
            write_stack(tmp_path / "out.ome.zarr", stack, axes="zyx", chunks=(16, 128, 128))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < data.nbytes / 2, (
        f"traced {peak / 2**20:.1f} MiB for a {data.nbytes >> 20} MiB stack"
    )
    out = zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"))
    np.testing.assert_array_equal(out[...], data)


def test_write_stack_of_a_dask_array_in_larger_chunks_needs_no_temporary(tmp_path, monkeypatch):
    """A dask array whose chunks are only cut into smaller ones (da.from_zarr of a store in
    chunks of 2048^2 into the default 512^2) went through the two-pass rechunk's temporary
    uncompressed array, the stack once more on disk (a stack larger than the free disk
    failed with ENOSPC) and an extra write and read of it, where dask's rechunk computes each
    chunk once and holds nothing more; the same bytes either way."""
    data = np.random.default_rng(6).integers(0, 4000, size=(4, 256, 192), dtype=np.uint16)
    stack = da.from_array(data, chunks=(4, 128, 96))
    made = []
    real = zarr.Group.create_array

    def create_array(self, name, *args, **kwargs):
        made.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", create_array)
    write_stack(tmp_path / "out.ome.zarr", stack, axes="zyx", chunks=(4, 32, 32))
    assert made == ["0"], made
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"))[...], data)


OTHER_WRITE_STACK = """
import sys
import numpy as np
from fstack_dask import write_stack
write_stack(sys.argv[1], np.full((4, 6, 5), 7, np.uint16), axes="zyx")
"""


def test_write_stack_into_a_path_another_writer_takes_meanwhile_leaves_its_store(
    tmp_path, monkeypatch
):
    """Two write_stack calls into one new path (array jobs converting one stack) both passed
    the check that it is new: both wrote into one store, each "done", or the one zarr refused
    removed the other's finished store as its own failed start. Another process's
    write_stack, run between this call's check and its first write, keeps its store whole;
    this call is refused, one line naming the path."""
    import subprocess
    import sys

    from fstack_dask._outputs import write_stack as module

    path = tmp_path / "s.ome.zarr"
    checked = module._new_store

    def then_another_writer(*args, **kwargs):
        location = checked(*args, **kwargs)
        subprocess.run([sys.executable, "-c", OTHER_WRITE_STACK, str(path)], check=True,
                       timeout=300)  # fmt: skip
        before.update(_tree(path))
        return location

    before: dict[str, str] = {}
    monkeypatch.setattr(module, "_new_store", then_another_writer)
    with pytest.raises(Exception) as refused:  # noqa: PT011 (what it is: checked below)
        write_stack(path, _stack(), axes="zyx")
    assert before and _tree(path) == before  # the other writer's store, whole
    assert (zarr.open_group(str(path), mode="r")["0"][...] == 7).all()
    assert refused.type is FileExistsError
    assert re.match(r"path '.*s\.ome\.zarr' already exists", str(refused.value))
