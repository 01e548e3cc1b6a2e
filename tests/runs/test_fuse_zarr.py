"""fuse_zarr end to end: real Zarr stores on disk, every scheduler, refusals and resume.

The in-memory ``focus_stack`` (reference layout y, x, z[, c]) is the truth: every
fused level 0 must equal it bit for bit, whatever the source kind, chunking and
scheduler.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import socket
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
import zarr
from conftest import tree_digest as _tree
from distributed import Client, default_client

from fstack_dask import (
    DestinationLockedError,
    focus_stack,
    fuse,
    fuse_zarr,
    overlap_depth,
    synthetic_stack,
    write_stack,
)
from fstack_dask._algorithm.block import block_memory, fuse_block
from fstack_dask._outputs.ownership import STATE_DIR
from fstack_dask._runs import blocks as _blocks
from fstack_dask._runs import progress as _progress
from fstack_dask._runs import schedulers as _run
from fstack_dask._runs.fusion import MIN_BLOCKS_PER_IMAGE
from fstack_dask._sources.open import open_source

STATE = STATE_DIR
HALO = overlap_depth(9)
NGFF_TYPE = {"t": "time", "c": "channel", "y": "space", "x": "space"}


# ---------------------------------------------------------------------------- helpers


def _make(axes, *, sizes=None, shape=(60, 52), n_planes=7, dtype="uint16", rgb=False, seed=0):
    """A stack with the given axes; every batch/channel index gets its own content."""
    sizes = sizes or {}
    extra = [a for a in axes if a not in "yxz"]
    ext_shape = tuple(sizes[a] for a in extra)
    out = np.empty((*ext_shape, *shape, n_planes), dtype=dtype)
    cache: dict[tuple, np.ndarray] = {}
    for k, idx in enumerate(np.ndindex(*ext_shape)):
        if rgb:  # channels of one colour image (y, x, z, 3)
            key = tuple(i for a, i in zip(extra, idx, strict=True) if a != "c")
            if key not in cache:
                cache[key] = synthetic_stack(
                    shape, n_planes, rgb=True, dtype=dtype, noise=0.02, seed=seed + len(cache)
                ).stack
            out[idx] = cache[key][..., idx[extra.index("c")]]
        else:
            out[idx] = synthetic_stack(
                shape, n_planes, dtype=dtype, noise=0.02, seed=seed + k
            ).stack
    order = [*extra, "y", "x", "z"]
    return np.transpose(out, [order.index(a) for a in axes])


def _truth(data, axes, rgb):
    """focus_stack per batch index (and per channel unless RGB); axes (batch..., [c], y, x)."""
    batch = [a for a in axes if a not in "czyx"]
    order = [*batch, *(["c"] if "c" in axes else []), "y", "x", "z"]
    arr = np.transpose(data, [axes.index(a) for a in order])
    out = np.empty(arr.shape[:-1], dtype=arr.dtype.newbyteorder("="))
    for idx in np.ndindex(*arr.shape[: len(batch)]):
        sub = arr[idx]
        if rgb:
            out[idx] = np.moveaxis(focus_stack(np.moveaxis(sub, 0, -1)), -1, 0)
        elif "c" in axes:
            out[idx] = np.stack([focus_stack(ch) for ch in sub])
        else:
            out[idx] = focus_stack(sub)
    return out, "".join(order[:-3]) + "yx"


def _plain(path, data, *, zarr_format=3, names=None, chunks=None, dtype=None):
    kwargs = {}
    if names is not None and zarr_format == 3:
        kwargs["dimension_names"] = list(names)
    elif names is not None:
        kwargs["attributes"] = {"_ARRAY_DIMENSIONS": list(names)}
    arr = zarr.create_array(
        str(path),
        shape=data.shape,
        dtype=dtype or data.dtype,
        chunks=chunks or tuple(min(n, 32) for n in data.shape),
        zarr_format=zarr_format,
        **kwargs,
    )
    arr[...] = data
    return path


def _check_output(group, expected, out_axes, *, scale=None, units=None, dst=None):
    image = group["0"]
    assert image.dtype == expected.dtype
    assert image.shape == expected.shape
    np.testing.assert_array_equal(image[...], expected, strict=True)
    assert tuple(image.metadata.dimension_names) == tuple(out_axes)
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == list(out_axes)
    assert [a.get("type") for a in ms["axes"]] == [NGFF_TYPE.get(a) for a in out_axes]
    assert ms["datasets"][0]["path"] == "0"
    want_scale = [(scale or {}).get(a, 1.0) for a in out_axes]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": want_scale}
    ]
    assert {a["name"]: a["unit"] for a in ms["axes"] if "unit" in a} == (units or {})
    assert group.attrs["fstack_dask"]["complete"] is True
    if dst is not None:
        assert not (Path(dst) / STATE).exists()


# ------------------------------------------------------------------------ source kinds


LAYOUTS = {
    "zyx": {"sizes": {}, "dtype": "uint16", "rgb": False},
    "czyx": {"sizes": {"c": 2}, "dtype": "uint16", "rgb": False},
    "tczyx": {"sizes": {"t": 2, "c": 2}, "dtype": "uint8", "rgb": False, "shape": (40, 36)},
    "yxz": {"sizes": {}, "dtype": "float32", "rgb": False},
    "yxzc": {"sizes": {"c": 3}, "dtype": "uint8", "rgb": True},  # auto: RGB
}


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("axes", list(LAYOUTS))
def test_plain_array_with_axes(tmp_path, axes, zarr_format):
    spec = LAYOUTS[axes]
    data = _make(axes, sizes=spec["sizes"], dtype=spec["dtype"], rgb=spec["rgb"],
                 shape=spec.get("shape", (60, 52)))  # fmt: skip
    src = _plain(tmp_path / "in.zarr", data, zarr_format=zarr_format)
    expected, out_axes = _truth(data, axes, spec["rgb"])
    with pytest.raises(ValueError, match="axes="):  # no names stored: axes= is needed
        fuse_zarr(src, tmp_path / "never.zarr", progress=False)
    assert not (tmp_path / "never.zarr").exists()
    out = fuse_zarr(src, tmp_path / "out.zarr", axes=axes, chunks=24, progress=False)
    _check_output(out, expected, out_axes, dst=tmp_path / "out.zarr")
    assert out.attrs["fstack_dask"]["channels"] == ("rgb" if spec["rgb"] else "independent")
    assert out.attrs["fstack_dask"]["src_axes"] == axes


def test_zarr_v2_array_with_array_dimensions(tmp_path):
    data = _make("zyx", dtype="uint16")
    src = _plain(tmp_path / "in.zarr", data, zarr_format=2, names="zyx", dtype=">u2")
    assert (src / ".zarray").exists() and zarr.open_array(str(src)).dtype == np.dtype(">u2")
    out = fuse_zarr(src, tmp_path / "out.zarr", chunks=(24, 20), progress=False)
    expected, out_axes = _truth(data, "zyx", False)
    _check_output(out, expected, out_axes, dst=tmp_path / "out.zarr")


def test_zarr_v3_array_with_dimension_names(tmp_path):
    data = _make("yxzc", sizes={"c": 3}, dtype="uint8", rgb=True)
    src = _plain(tmp_path / "in.zarr", data, names="yxzc")
    out = fuse_zarr(src, tmp_path / "out.zarr", chunks=(20, 32), progress=False)
    expected, out_axes = _truth(data, "yxzc", True)
    assert out_axes == "cyx"
    _check_output(out, expected, out_axes, dst=tmp_path / "out.zarr")
    np.testing.assert_array_equal(np.moveaxis(out["0"][...], 0, -1), focus_stack(data))


@pytest.mark.parametrize(("zarr_format", "version"), [(2, "0.4"), (3, "0.5")])
@pytest.mark.parametrize("axes", ["zyx", "czyx", "tczyx"])
def test_ome_zarr_groups(tmp_path, zarr_format, version, axes):
    spec = LAYOUTS[axes]
    data = _make(axes, sizes=spec["sizes"], dtype=spec["dtype"], shape=spec.get("shape", (60, 52)))
    scale = {"z": 2.0, "y": 0.325, "x": 0.5}
    units = {"z": "micrometer", "y": "micrometer", "x": "nanometer"}
    if "t" in axes:
        scale["t"], units["t"] = 30.0, "second"
    path = tmp_path / "in.ome.zarr"
    write_stack(path, data, axes=axes, scale=scale, units=units, zarr_format=zarr_format)
    assert open_source(path).ome_version == version
    out = fuse_zarr(path, tmp_path / "out.zarr", chunks=24, progress=False)  # axes from metadata
    expected, out_axes = _truth(data, axes, False)
    # The image keeps the y/x pixel size and the time step; z is fused away, c has none.
    kept = {a: v for a, v in scale.items() if a in "tyx"}
    _check_output(
        out,
        expected,
        out_axes,
        scale=kept,
        units={a: u for a, u in units.items() if a in "tyx"},
        dst=tmp_path / "out.zarr",
    )


def test_file_urls(tmp_path):
    data = _make("czyx", sizes={"c": 2})
    write_stack(tmp_path / "in.zarr", data, axes="czyx", scale={"y": 0.5, "x": 0.5})
    src = (tmp_path / "in.zarr").resolve().as_uri()
    dst = (tmp_path / "out.zarr").resolve().as_uri()
    assert src.startswith("file://")
    before = _tree(tmp_path / "in.zarr")
    out = fuse_zarr(src, dst, chunks=(32, 20), progress=False)
    expected, out_axes = _truth(data, "czyx", False)
    _check_output(out, expected, out_axes, scale={"y": 0.5, "x": 0.5}, dst=tmp_path / "out.zarr")
    assert _tree(tmp_path / "in.zarr") == before
    with pytest.raises(ValueError, match="source"):  # a URL into the source is still refused
        fuse_zarr(src, src + "/fused.zarr", progress=False)
    assert _tree(tmp_path / "in.zarr") == before


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_open_zarr_array(tmp_path, scheduler):
    data = _make("zyx", dtype="int16")
    _plain(tmp_path / "in.zarr", data, names="zyx")
    array = zarr.open_array(str(tmp_path / "in.zarr"), mode="r")
    out = fuse_zarr(array, tmp_path / "out.zarr", chunks=30, progress=False, scheduler=scheduler)
    expected, out_axes = _truth(data, "zyx", False)
    _check_output(out, expected, out_axes, dst=tmp_path / "out.zarr")
    with pytest.raises(ValueError, match="source"):  # its store is known: dst inside refused
        fuse_zarr(array, tmp_path / "in.zarr" / "fused", progress=False)


# ---------------------------------------------------------------------------- channels


def test_rgb_shares_one_weight_map_independent_does_not(tmp_path):
    data = _make("czyx", sizes={"c": 3}, dtype="uint8", rgb=True)
    src = _plain(tmp_path / "in.zarr", data, names="czyx")
    yxzc = np.moveaxis(data, (0, 1), (3, 2))
    rgb_truth = np.moveaxis(focus_stack(yxzc), -1, 0)
    indep_truth = np.stack([focus_stack(yxzc[..., c]) for c in range(3)])
    assert not np.array_equal(rgb_truth, indep_truth)  # the two modes are distinguishable

    auto = fuse_zarr(src, tmp_path / "auto.zarr", chunks=24, depth_map=True, progress=False)
    np.testing.assert_array_equal(auto["0"][...], rgb_truth, strict=True)
    assert auto.attrs["fstack_dask"]["channels"] == "rgb"
    # one map for 3 channels
    assert tuple(auto["depth"]["0"].metadata.dimension_names) == ("y", "x")

    indep = fuse_zarr(
        src, tmp_path / "indep.zarr", channels="independent", chunks=24, depth_map=True,
        progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(indep["0"][...], indep_truth, strict=True)
    assert indep.attrs["fstack_dask"]["channels"] == "independent"
    assert tuple(indep["depth"]["0"].metadata.dimension_names) == ("c", "y", "x")


@pytest.mark.parametrize(
    ("n_c", "dtype", "channels", "rgb"),
    [
        (3, "uint8", "auto", True),
        (3, "uint16", "auto", False),  # auto: RGB only for uint8
        (2, "uint8", "auto", False),  # auto: RGB only for 3 channels
        (3, "uint16", "rgb", True),
        (3, "uint8", "independent", False),
    ],
)
def test_channels_modes(tmp_path, n_c, dtype, channels, rgb):
    data = _make("czyx", sizes={"c": n_c}, dtype=dtype, rgb=n_c == 3, shape=(40, 44))
    src = _plain(tmp_path / "in.zarr", data, names="czyx")
    out = fuse_zarr(src, tmp_path / "out.zarr", channels=channels, chunks=20, progress=False)
    expected, out_axes = _truth(data, "czyx", rgb)
    _check_output(out, expected, out_axes)
    assert out.attrs["fstack_dask"]["channels"] == ("rgb" if rgb else "independent")


def test_batch_axes_are_fused_index_by_index(tmp_path):
    stacks = [synthetic_stack((50, 40), 6, dtype="uint16", seed=s).stack for s in (1, 2, 3)]
    tzyx = np.stack([np.moveaxis(s, 2, 0) for s in stacks])
    src = _plain(tmp_path / "in.zarr", tzyx, names="tzyx")
    out = fuse_zarr(src, tmp_path / "out.zarr", chunks=(16, 40), depth_map=True, progress=False)
    _check_output(out, np.stack([focus_stack(s) for s in stacks]), "tyx")
    assert out["depth"]["0"].shape == (3, 50, 40)
    assert out["0"].chunks == (1, 16, 40)


# ---------------------------------------------------------------------- optional maps


def _flat_patch_stack():
    stack = synthetic_stack((72, 64), 7, dtype="uint16", noise=0.02, seed=5).stack
    stack[10:50, 20:60, :] = 1000  # no contrast in any plane: depth is NaN inside
    return stack


@pytest.mark.parametrize(("depth_map", "selectivity_map"), [(1, 0), (0, 1), (1, 1), (0, 0)])
def test_depth_and_selectivity_maps_on_request(tmp_path, depth_map, selectivity_map):
    stack = _flat_patch_stack()
    focus = np.array([0.5, 1.0, 2.5, 3.0, 4.5, 6.0, 7.5])
    src = _plain(tmp_path / "in.zarr", stack, names="yxz")
    out = fuse_zarr(
        src, tmp_path / "out.zarr", focus=focus, depth_map=bool(depth_map),
        selectivity_map=bool(selectivity_map), chunks=(24, 20), progress=False,
    )  # fmt: skip
    whole = fuse_block(
        np.moveaxis(stack, 2, 0), focus=focus, with_depth=True, with_selectivity=True
    )  # the kernel on the whole image: the truth for the maps
    np.testing.assert_array_equal(out["0"][...], focus_stack(stack, focus=focus), strict=True)
    assert ("depth" in out) == bool(depth_map)
    assert ("selectivity" in out) == bool(selectivity_map)
    levels = [str(k) for k in range(out.attrs["fstack_dask"]["levels"] + 1)]
    assert sorted(out.array_keys()) == levels
    assert sorted(out.group_keys()) == ["depth"] * depth_map + ["selectivity"] * selectivity_map
    if depth_map:
        depth = out["depth"]["0"][...]
        assert depth.dtype == np.float32 and depth.shape == stack.shape[:2]
        assert tuple(out["depth"]["0"].metadata.dimension_names) == ("y", "x")
        np.testing.assert_array_equal(depth, whole.depth, strict=True)
        assert np.isnan(depth[20:40, 30:50]).all()  # flat patch: no contrast
        assert np.isnan(depth).mean() < 0.2
        assert set(np.unique(depth[~np.isnan(depth)])) <= set(focus.astype(np.float32))
    if selectivity_map:
        sel = out["selectivity"]["0"][...]
        assert sel.dtype == np.float32 and sel.shape == stack.shape[:2]
        np.testing.assert_array_equal(sel, whole.selectivity, strict=True)
        assert np.isfinite(sel).mean() > 0.5


# ------------------------------------------------------------------ chunk-aligned writes


def _chunks_of(region, chunks, shape):
    """The zarr chunks a write covers; fails if it covers only part of one."""
    ranges = []
    for s, c, n in zip(region, chunks, shape, strict=True):
        assert s.start % c == 0, f"a write starts at {s.start}, inside a chunk of {c}"
        assert s.stop % c == 0 or s.stop == n, f"a write ends at {s.stop}, inside a chunk of {c}"
        ranges.append(range(s.start // c, (s.stop - 1) // c + 1))
    return set(np.ndindex(*(len(r) for r in ranges))), ranges


@pytest.mark.parametrize(
    "chunks",
    [
        (64, 32),  # uneven last blocks: 150 = 64+64+22, 70 = 32+32+6 (6 < halo)
        (50, 70),  # even
        (7, 11),  # every block smaller than the halo: each reads its own halo
        (145, 64),  # last blocks 5 and 6 pixels, smaller than the halo
        (24, 57),
    ],
)
def test_every_zarr_chunk_is_written_by_one_task(tmp_path, monkeypatch, chunks):
    data = _make("czyx", sizes={"c": 2}, shape=(150, 70))
    src = _plain(tmp_path / "in.zarr", data, names="czyx", chunks=(1, 7, 40, 40))
    writes = []  # every task's (array name, region) writes, as the tasks make them
    write_block = _blocks.write_block

    def recording(arrays, regions, values):
        writes.append(dict(regions))
        return write_block(arrays, regions, values)

    monkeypatch.setattr(_blocks, "write_block", recording)
    out = fuse_zarr(
        src, tmp_path / "out.zarr", chunks=chunks, depth_map=True, selectivity_map=True,
        progress=False,
    )  # fmt: skip
    assert out.attrs["fstack_dask"]["chunks"] == list(chunks)
    n_blocks = 2 * math.ceil(150 / chunks[0]) * math.ceil(70 / chunks[1])  # one channel each
    assert len(writes) == n_blocks
    for name in ("0", "depth", "selectivity"):
        arr = out["0"] if name == "0" else out[name]["0"]
        assert arr.chunks == (1, min(chunks[0], 150), min(chunks[1], 70))
        assert tuple(arr.metadata.dimension_names) == ("c", "y", "x")
        owner = {}
        for task, regions in enumerate(writes):
            local, ranges = _chunks_of(regions[name], arr.chunks, arr.shape)
            for index in local:
                key = tuple(r[i] for r, i in zip(ranges, index, strict=True))
                assert key not in owner, f"{name} chunk {key} written by tasks {owner[key]}, {task}"
                owner[key] = task
        assert len(owner) == math.prod(
            math.ceil(n / c) for n, c in zip(arr.shape, arr.chunks, strict=True)
        )
    expected, _ = _truth(data, "czyx", False)
    np.testing.assert_array_equal(out["0"][...], expected, strict=True)


# ------------------------------------------------------------------------- refusals


@pytest.fixture
def src_czyx(tmp_path):
    data = _make("czyx", sizes={"c": 2}, shape=(40, 36))
    return _plain(tmp_path / "data" / "in.zarr", data)  # plain: needs axes="czyx"


def _refusal_cases():
    ok = {"axes": "czyx", "progress": False}
    return [
        ("dst_is_src", lambda s: s, ok, ValueError, "source"),
        ("dst_is_src_overwrite", lambda s: s, {**ok, "overwrite": True}, ValueError, "source"),
        ("dst_is_src_resume", lambda s: s, {**ok, "resume": True}, ValueError, "source"),
        ("dst_inside_src", lambda s: s / "fused.zarr", ok, ValueError, "source"),
        (
            "dst_inside_src_resume",
            lambda s: s / "fused.zarr",
            {**ok, "resume": True, "overwrite": True},
            ValueError,
            "source",
        ),
        ("dst_inside_src_chunks", lambda s: s / "c" / "x", ok, ValueError, "source"),
        ("dst_holds_src", lambda s: s.parent, {**ok, "overwrite": True}, ValueError, "contains"),
        ("no_axes", None, {"progress": False}, ValueError, "axes="),
        ("axes_wrong_length", None, {**ok, "axes": "zyx"}, ValueError, "axes"),
        ("axes_repeated", None, {**ok, "axes": "zzyx"}, ValueError, "axes"),
        ("axes_without_z", None, {**ok, "axes": "tcyx"}, ValueError, "axes"),
        ("axes_not_str", None, {**ok, "axes": 4}, TypeError, "axes"),
        ("nhsize_zero", None, {**ok, "nhsize": 0}, ValueError, "nhsize"),
        ("nhsize_float", None, {**ok, "nhsize": 2.5}, TypeError, "nhsize"),
        ("alpha_zero", None, {**ok, "alpha": 0}, ValueError, "alpha"),
        ("alpha_big", None, {**ok, "alpha": 1.5}, ValueError, "alpha"),
        ("alpha_str", None, {**ok, "alpha": "0.2"}, TypeError, "alpha"),
        ("sth_nan", None, {**ok, "sth": float("nan")}, ValueError, "sth"),
        ("rgb_with_2_channels", None, {**ok, "channels": "rgb"}, ValueError, "channels"),
        ("channels_unknown", None, {**ok, "channels": "colour"}, ValueError, "channels"),
        ("focus_length", None, {**ok, "focus": [0, 1, 2]}, ValueError, "focus"),
        ("focus_not_monotonic", None, {**ok, "focus": [0, 1, 2, 3, 2, 5, 6]}, ValueError, "focus"),
        ("chunks_zero", None, {**ok, "chunks": 0}, ValueError, "chunks"),
        ("chunks_negative", None, {**ok, "chunks": (16, -1)}, ValueError, "chunks"),
        # neither an int nor a (y, x) pair: a TypeError since g77, as nhsize's is
        ("chunks_three", None, {**ok, "chunks": (1, 16, 16)}, TypeError, "chunks"),
        ("chunks_float", None, {**ok, "chunks": 16.0}, TypeError, "chunks"),
        ("chunks_bool", None, {**ok, "chunks": True}, TypeError, "chunks"),
    ]


@pytest.mark.parametrize(
    ("dst_of", "kwargs", "exc", "match"),
    [c[1:] for c in _refusal_cases()],
    ids=[c[0] for c in _refusal_cases()],
)
def test_refusals_write_nothing(tmp_path, src_czyx, dst_of, kwargs, exc, match):
    dst = tmp_path / "out.zarr" if dst_of is None else dst_of(src_czyx)
    before = _tree(tmp_path)
    with pytest.raises(exc, match=match):
        fuse_zarr(src_czyx, dst, **kwargs)
    assert _tree(tmp_path) == before  # src untouched, nothing created anywhere
    assert dst_of is not None or not dst.exists()


# zarr warns, rightly, that the stray file the test leaves in dst is not part of the hierarchy
@pytest.mark.filterwarnings("ignore:Object at stray.txt is not recognized")
def test_existing_dst_is_refused_without_overwrite_and_replaced_with_it(tmp_path, src_czyx, caplog):
    dst = tmp_path / "out.zarr"
    first = fuse_zarr(
        src_czyx, dst, axes="czyx", chunks=16, depth_map=True, selectivity_map=True,
        progress=False,
    )  # fmt: skip
    assert "depth" in first
    (dst / "stray.txt").write_text("left by someone")
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        fuse_zarr(src_czyx, dst, axes="czyx", progress=False)
    assert _tree(tmp_path) == before

    other = _make("zyx", shape=(30, 50), dtype="float32", seed=9)
    src2 = _plain(tmp_path / "data" / "other.zarr", other, names="zyx")
    src_before = _tree(tmp_path / "data")
    out = fuse_zarr(src2, dst, overwrite=True, chunks=(20, 30), levels=0, progress=False)
    _check_output(out, _truth(other, "zyx", False)[0], "yx", dst=dst)
    assert sorted(out.array_keys()) == ["0"]  # the old depth/selectivity are gone
    assert out.attrs["fstack_dask"]["src_shape"] == [7, 30, 50]
    assert _tree(tmp_path / "data") == src_before
    # A file that fstack_dask did not write is never deleted: it stays where it was put,
    # and nothing is left beside dst.
    assert sorted(os.listdir(dst)) == ["0", "stray.txt", "zarr.json"]
    assert (dst / "stray.txt").read_text() == "left by someone"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_dst_that_is_not_a_zarr_store_is_never_overwritten(tmp_path, src_czyx):
    dst = tmp_path / "precious"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    before = _tree(tmp_path)
    for kwargs in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(FileExistsError, match="not an fstack_dask output"):
            fuse_zarr(src_czyx, dst, axes="czyx", progress=False, **kwargs)
    assert _tree(tmp_path) == before


def test_remote_dst_equal_to_remote_src_is_refused():
    import uuid

    import fsspec

    base = f"memory://fstack-fuse-{uuid.uuid4().hex}"
    data = _make("zyx", shape=(30, 30))
    write_stack(f"{base}/in.zarr", data, axes="zyx")
    fs = fsspec.filesystem("memory")
    root = base.split("://", 1)[1]

    def snapshot():
        return {p: fs.cat_file(p) for p in fs.find(root)}

    before = snapshot()
    for dst in (f"{base}/in.zarr", f"{base}/in.zarr/fused", base):
        with pytest.raises(ValueError, match="source"):
            fuse_zarr(f"{base}/in.zarr", dst, overwrite=True, progress=False)
        assert snapshot() == before
    out = fuse_zarr(f"{base}/in.zarr", f"{base}/out.zarr", progress=False, scheduler="sync")
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))
    assert not fs.exists(f"{root}/out.zarr/{STATE}")
    fs.rm(root, recursive=True)


# ---------------------------------------------------------------------- memory bound


def _haloed_block_memory(out, n_planes, itemsize):
    """Memory of the largest task: the largest block with its halo (clipped to the image)."""
    by, bx = out.attrs["fstack_dask"]["chunks"]  # the blocks tasks compute
    ny, nx = out["0"].shape[-2:]

    def haloed(n, b):
        return max(min(n, s + b + HALO) - max(0, s - HALO) for s in range(0, n, b))

    return block_memory((haloed(ny, by), haloed(nx, bx)), n_planes, 1, itemsize, False)


@pytest.mark.parametrize("src_chunk", [40, 64])
def test_chunks_follow_memory_per_task_and_the_source_grid(tmp_path, src_chunk):
    data = _make("zyx", shape=(300, 260), n_planes=7, dtype="uint16")
    src = _plain(tmp_path / "in.zarr", data, names="zyx", chunks=(7, src_chunk, src_chunk))
    expected = _truth(data, "zyx", False)[0]
    from fstack_dask._runs.fusion import plan_fusion

    task_bytes = plan_fusion(src).task_bytes  # what a task holds for a block of a given size
    budgets = [int(task_bytes((side, side)) / 0.75) + 1 for side in (40, 64, 128, 256)]
    sizes = []
    for k, budget in enumerate(budgets):
        dst = tmp_path / f"out{k}.zarr"
        out = fuse_zarr(src, dst, memory_per_task=budget, progress=False)
        np.testing.assert_array_equal(out["0"][...], expected, strict=True)
        assert _haloed_block_memory(out, 7, 2) <= budget
        cy, cx = out["0"].chunks
        for c, n in ((cy, 300), (cx, 260)):  # on the source's chunk grid, or a divisor of it
            assert c % src_chunk == 0 or src_chunk % c == 0 or c == n, (c, src_chunk)
        sizes.append((cy, cx))
    areas = [cy * cx for cy, cx in sizes]
    assert areas == sorted(areas) and areas[0] < areas[-1]  # smaller budget, smaller blocks
    # Even a budget for the whole image leaves enough blocks to keep many workers busy.
    n_blocks = math.ceil(300 / sizes[-1][0]) * math.ceil(260 / sizes[-1][1])
    assert n_blocks >= MIN_BLOCKS_PER_IMAGE


def test_budget_too_small_for_the_halo_is_refused_or_respected(tmp_path):
    data = _make("zyx", shape=(120, 120), dtype="uint16")
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    budget = block_memory((2 * HALO + HALO // 2,) * 2, 7, 1, 2, False)  # core side < halo
    try:
        out = fuse_zarr(src, tmp_path / "out.zarr", memory_per_task=budget, progress=False)
    except ValueError as exc:
        assert "memory_per_task" in str(exc)
        assert not (tmp_path / "out.zarr").exists()
        # The message says what is enough, and it is.
        enough = int(re.search(r"give at least (\d+) bytes", str(exc))[1])
        out = fuse_zarr(src, tmp_path / "out.zarr", memory_per_task=enough, progress=False)
        assert _haloed_block_memory(out, 7, 2) <= enough
        with pytest.raises(ValueError, match="memory_per_task"):
            fuse_zarr(src, tmp_path / "less.zarr", memory_per_task=enough - 1, progress=False)
    else:
        assert _haloed_block_memory(out, 7, 2) <= budget
    np.testing.assert_array_equal(out["0"][...], _truth(data, "zyx", False)[0], strict=True)


def test_a_halo_deeper_than_the_image_costs_only_the_image(tmp_path):
    """A task reads its block and halo clipped to the image: nhsize 1001 (a 1501 px halo) on a
    40 x 40 stack was refused as needing 638 MB per task (fuse_zarr, info), and nhsize 4095 by
    the lazy fuse as needing 26 GB, where focus_stack fused it; and a thin strip's blocks were
    planned 27 rows high for its one row, a fraction of the source's chunk."""
    from fstack_dask._runs.fusion import plan_fusion

    data = _make("zyx", shape=(40, 40), n_planes=5, dtype="uint8")
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    truth = focus_stack(np.moveaxis(data, 0, -1), nhsize=1001)
    out = fuse_zarr(src, tmp_path / "out.zarr", nhsize=1001, progress=False)
    np.testing.assert_array_equal(out["0"][...], truth, strict=True)
    lazy = fuse(data, axes="zyx", nhsize=4095)
    np.testing.assert_array_equal(lazy.compute(), focus_stack(np.moveaxis(data, 0, -1),
                                  nhsize=4095), strict=True)  # fmt: skip
    zarr.create_array(str(tmp_path / "thin.zarr"), shape=(5, 1, 2**21), dtype="uint8",
                             chunks=(5, 1, 2**17), dimension_names=list("zyx"))  # fmt: skip
    assert plan_fusion(str(tmp_path / "thin.zarr")).block == (1, 2**17)  # the source's chunk


def test_memory_per_task_as_a_size_string(tmp_path):
    data = _make("zyx", shape=(60, 60), dtype="uint16")
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    a = fuse_zarr(src, tmp_path / "a.zarr", memory_per_task="3MiB", progress=False)
    b = fuse_zarr(src, tmp_path / "b.zarr", memory_per_task=3 * 2**20, progress=False)
    assert a["0"].chunks == b["0"].chunks
    assert _tree(tmp_path / "a.zarr") == _tree(tmp_path / "b.zarr")
    before = _tree(tmp_path)
    # (10**400, "9" * 400: OverflowError, naming nothing; 2**60: accepted; an adversarial run)
    bads = [("lots", ValueError), ("0B", ValueError), (True, TypeError), (10**400, ValueError),
            ("9" * 400, ValueError), (2**60, ValueError)]  # fmt: skip
    for bad, exc in bads:
        with pytest.raises(exc, match="memory_per_task"):
            fuse_zarr(src, tmp_path / "c.zarr", memory_per_task=bad, progress=False)
    with pytest.raises(ValueError, match="stall_timeout"):
        fuse_zarr(src, tmp_path / "c.zarr", stall_timeout=10**400, progress=False)
    assert _tree(tmp_path) == before


def test_numpy_integers_are_integers_and_level_is_checked_for_every_source(tmp_path):
    """stall_timeout=np.int64(60) and levels=np.int64(1) (read from an array or a config) were
    refused as not numbers; level=[] or None was taken as level 0 for an in-memory array or a
    TIFF, where only a Zarr source checked it. Nothing is written on a refusal."""
    data = _make("zyx", shape=(40, 40), dtype="uint16")
    out = fuse_zarr(data, tmp_path / "a.zarr", axes="zyx", stall_timeout=np.int64(60),
                    levels=np.int64(1), level=np.int64(0), progress=False)  # fmt: skip
    assert sorted(out.array_keys()) == ["0", "1"]
    tifffile.imwrite(tmp_path / "s.tif", data)
    before = _tree(tmp_path)
    for src in (data, tmp_path / "s.tif"):
        for bad in ([], None, "1", True, -1):
            with pytest.raises(TypeError, match=r"^level must be an integer >= 0, got "):
                fuse_zarr(src, tmp_path / "b.zarr", axes="zyx", level=bad, progress=False)
    assert _tree(tmp_path) == before


# -------------------------------------------------------------------------- schedulers


def test_all_schedulers_write_identical_bytes(tmp_path, local_cluster):
    data = _make("czyx", sizes={"c": 2}, shape=(100, 90))
    src = _plain(tmp_path / "in.zarr", data, names="czyx")
    kwargs = {"chunks": (40, 32), "depth_map": True, "selectivity_map": True, "progress": False}
    trees = {}
    for name in ("synchronous", "threads", "processes"):
        fuse_zarr(src, tmp_path / name, scheduler=name, **kwargs)
        trees[name] = _tree(tmp_path / name)
    with Client(local_cluster) as client:
        fuse_zarr(src, tmp_path / "client", scheduler=client, **kwargs)
        trees["client"] = _tree(tmp_path / "client")
        fuse_zarr(src, tmp_path / "default", **kwargs)  # the active client is the default
        trees["default"] = _tree(tmp_path / "default")
    fuse_zarr(src, tmp_path / "address", scheduler=local_cluster.scheduler_address, **kwargs)
    trees["address"] = _tree(tmp_path / "address")
    with pytest.raises(ValueError):  # the client made for the address was not left behind
        default_client()
    reference = trees.pop("synchronous")
    assert any(k.startswith("0/c/") for k in reference)  # chunk files, not just metadata
    for name, tree in trees.items():
        assert tree == reference, name
    out = zarr.open_group(str(tmp_path / "synchronous"), mode="r")
    np.testing.assert_array_equal(out["0"][...], _truth(data, "czyx", False)[0], strict=True)


@pytest.fixture()
def shm_created(monkeypatch) -> list[str]:
    """The names of the shared-memory blocks this process creates. (Other test processes,
    under pytest-xdist, create and remove their own in the same /dev/shm meanwhile.)"""
    from multiprocessing import shared_memory

    created: list[str] = []

    class Recorded(shared_memory.SharedMemory):
        def __init__(self, name=None, create=False, size=0, **kwargs):
            super().__init__(name, create, size, **kwargs)
            if create:
                created.append(self.name)

    monkeypatch.setattr(shared_memory, "SharedMemory", Recorded)
    return created


def _in_dev_shm(names: list[str]) -> list[str]:
    return [n for n in names if os.path.exists(os.path.join("/dev/shm", n.lstrip("/")))]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm to look into")
def test_in_memory_source_goes_to_workers_once(tmp_path, local_cluster, shm_created):
    """A NumPy source (13 MB) on worker processes and on a cluster, and a DataArray on
    worker processes: the same bytes as on threads. Worker processes attach one copy in
    shared memory, removed after the run; cluster workers get one scattered copy each
    (distributed would otherwise warn of a large graph: the array in every task), and
    forget the run when it ends."""
    import pickle
    import warnings

    import xarray

    from fstack_dask._runs import blocks as _blocks
    from fstack_dask._sources.open import Reopen as _Reopen
    from fstack_dask._sources.share import shared_recipe

    zyx = np.moveaxis(synthetic_stack((1100, 1000), 6, dtype="uint16", seed=5).stack, 2, 0)
    kwargs = {"chunks": 512, "levels": 0, "progress": False}
    fuse_zarr(zyx, tmp_path / "threads", axes="zyx", scheduler="threads", **kwargs)
    reference = _tree(tmp_path / "threads")
    assert any(k.startswith("0/c/") for k in reference)

    with shared_recipe((zyx, "zyx", 0, None), "processes") as (recipe, task_args):
        assert len(pickle.dumps(_Reopen(*recipe))) < 4096 and task_args == ()
        assert len(shm_created) == 1 and _in_dev_shm(shm_created) == shm_created
    assert _in_dev_shm(shm_created) == []
    fuse_zarr(zyx, tmp_path / "processes", axes="zyx", scheduler="processes", **kwargs)
    assert _tree(tmp_path / "processes") == reference
    labelled = xarray.DataArray(zyx, dims=("z", "y", "x"), attrs={"note": "kept"})
    fuse_zarr(labelled, tmp_path / "xarray", scheduler="processes", **kwargs)
    # the root's zarr.json says "xarray", and the output's id in 0/ follows its parameters
    chunks = {k: v for k, v in reference.items() if k.startswith(("0/c/", "0/zarr.json"))}
    assert {k: v for k, v in _tree(tmp_path / "xarray").items()
            if k.startswith(("0/c/", "0/zarr.json"))} == chunks  # fmt: skip
    assert len(shm_created) == 3 and _in_dev_shm(shm_created) == []  # removed after each run

    with Client(local_cluster) as client, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fuse_zarr(zyx, tmp_path / "cluster", axes="zyx", scheduler=client, **kwargs)
        held = client.run(lambda: len(_blocks._opened_by_token))
    assert not [w for w in seen if "large graph" in str(w.message)], [str(w.message) for w in seen]
    assert _tree(tmp_path / "cluster") == reference
    assert set(held.values()) == {0}, held  # no worker keeps the run's source


def test_in_memory_source_too_big_for_shared_memory_travels_with_the_tasks(
    tmp_path, monkeypatch, caplog, shm_created
):
    """A container's /dev/shm is 64 MiB unless it is given more, and filling a shared block
    beyond it kills the process: a larger source is sent with the tasks as before, said."""
    from fstack_dask._sources import share as _share

    zyx = np.moveaxis(synthetic_stack((64, 60), 5, dtype="uint16", seed=6).stack, 2, 0)
    monkeypatch.setattr(_share, "_shared_memory_room", lambda: zyx.nbytes - 1)
    with _share.shared_recipe((zyx, "zyx", 0, None), "processes") as (recipe, task_args):
        assert recipe[0] is zyx and task_args == ()
    assert "does not fit in shared memory" in caplog.text
    assert shm_created == []
    kwargs = {"chunks": 32, "levels": 0, "progress": False}
    fuse_zarr(zyx, tmp_path / "processes", axes="zyx", scheduler="processes", **kwargs)
    fuse_zarr(zyx, tmp_path / "threads", axes="zyx", scheduler="threads", **kwargs)
    assert _tree(tmp_path / "processes") == _tree(tmp_path / "threads")


# ---------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the progress bar draws itself."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_lines_in_a_log(tmp_path, monkeypatch, caplog):
    data = _make("zyx", shape=(64, 64))
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    monkeypatch.setattr(_progress, "SHOW_AFTER", 0.0)  # show it even for a fast run
    monkeypatch.setattr(_progress, "LOG_EVERY", 0.0)
    caplog.set_level(logging.INFO, logger="fstack_dask.progress")
    for progress in (False, True):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        fuse_zarr(src, tmp_path / f"tty{progress}.zarr", chunks=32, progress=progress)
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        if progress:
            assert re.search(r"fusing: 100%.* 4/4", terminal.getvalue()), terminal.getvalue()
        else:
            assert terminal.getvalue() == ""
    assert caplog.text == ""  # a terminal gets a bar, not log lines
    # Not a terminal (a batch job's log): plain lines through the logger.
    fuse_zarr(src, tmp_path / "quiet.zarr", chunks=32, progress=False)
    assert caplog.text == ""
    fuse_zarr(src, tmp_path / "loud.zarr", chunks=32, progress=True)
    assert "4/4 blocks (100%)" in caplog.text


def test_progress_with_distributed(tmp_path, monkeypatch, local_cluster):
    data = _make("zyx", shape=(64, 64))
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    monkeypatch.setattr(_progress, "SHOW_AFTER", 0.0)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Client(local_cluster) as client:
        out = fuse_zarr(src, tmp_path / "out.zarr", chunks=32, progress=True, scheduler=client)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    _check_output(out, _truth(data, "zyx", False)[0], "yx", dst=tmp_path / "out.zarr")
    assert re.search(r"fusing: 100%.* 4/4", terminal.getvalue()), terminal.getvalue()


# ------------------------------------------------------------------------------ resume


GRID, BLOCK = 5, 32  # 160 x 160 pixels: 5 x 5 blocks = source chunks = output chunks


def _stat(path: Path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _needs(a, b):
    """Blocks whose haloed region reads source chunk (a, b) (halo 13 < 32: the 3 x 3 around)."""
    return {(i, j) for i in range(a - 1, a + 2) for j in range(b - 1, b + 2)
            if 0 <= i < GRID and 0 <= j < GRID}  # fmt: skip


def _corrupt(src: Path, a: int, b: int):
    """Make source chunk (a, b) unreadable; returns a function that restores it."""
    path = src / "c" / "0" / str(a) / str(b)
    good = path.read_bytes()
    path.write_bytes(b"not zstd" * 8)
    return lambda: path.write_bytes(good)


def _markers(dst: Path) -> set[tuple[int, int]]:
    """Blocks (y, x) with a done-marker (names are the block index, y and x last)."""
    return {tuple(map(int, p.name.split("_")[-2:])) for p in (dst / STATE / "done").iterdir()}


def _chunk_stats(dst: Path, blocks):
    return {(i, j): _stat(dst / "0" / "c" / str(i) / str(j)) for i, j in blocks}


@pytest.fixture
def grid_src(tmp_path):
    data = _make("zyx", shape=(GRID * BLOCK, GRID * BLOCK))
    src = _plain(tmp_path / "in.zarr", data, names="zyx", chunks=(7, BLOCK, BLOCK))
    return src, _truth(data, "zyx", False)[0]


@pytest.mark.parametrize("fail_with", ["synchronous", "threads"])
def test_failed_run_releases_the_lock_and_resumes(tmp_path, grid_src, fail_with):
    src, expected = grid_src
    src_tree = _tree(src)
    dst = tmp_path / "out.zarr"
    restore = _corrupt(src, 4, 4)
    with pytest.raises(RuntimeError):  # zstd cannot decode the chunk
        fuse_zarr(src, dst, chunks=BLOCK, progress=False, scheduler=fail_with)
    assert not (dst / STATE / "lock").exists()  # released
    assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["complete"] is False
    done = _markers(dst)
    assert not done & _needs(4, 4)  # no marker for a block that failed
    image = zarr.open_array(str(dst / "0"), mode="r")
    for i, j in done:  # a marker means the block's region is written
        region = np.s_[BLOCK * i : BLOCK * (i + 1), BLOCK * j : BLOCK * (j + 1)]
        np.testing.assert_array_equal(image[region], expected[region])
    with pytest.raises(FileExistsError):  # without resume the partial output is kept
        fuse_zarr(src, dst, chunks=BLOCK, progress=False)

    restore()
    assert _tree(src) == src_tree
    kept = _chunk_stats(dst, done)
    out = fuse_zarr(src, dst, chunks=BLOCK, resume=True, progress=False, scheduler=fail_with)
    np.testing.assert_array_equal(out["0"][...], expected, strict=True)
    assert _chunk_stats(dst, done) == kept  # blocks done before the failure: not rewritten
    assert out.attrs["fstack_dask"]["complete"] is True
    assert not (dst / STATE).exists()


def test_resume_computes_only_missing_blocks(tmp_path, grid_src, caplog):
    src, expected = grid_src
    src_tree = _tree(src)
    dst = tmp_path / "out.zarr"
    # A run that could not finish: the blocks reading a corrupt chunk are missing.
    restore = _corrupt(src, 1, 3)
    with pytest.raises(RuntimeError, match="chunk"):
        fuse_zarr(src, dst, chunks=BLOCK, progress=False, scheduler="synchronous")
    restore()  # repaired: no finished block read it, so the resume may use it
    assert _tree(src) == src_tree
    done = _markers(dst)
    missing = {(i, j) for i in range(GRID) for j in range(GRID)} - done
    assert missing == _needs(1, 3)

    # Different parameters: refused before anything is written.
    before = _tree(dst)
    with pytest.raises(ValueError, match="alpha"):
        fuse_zarr(src, dst, chunks=BLOCK, alpha=0.3, resume=True, progress=False)
    with pytest.raises(ValueError, match="chunks"):
        fuse_zarr(src, dst, chunks=48, resume=True, progress=False)
    with pytest.raises(ValueError, match="depth_map"):
        fuse_zarr(src, dst, chunks=BLOCK, depth_map=True, resume=True, progress=False)
    assert _tree(dst) == before

    # A live lock (held by this very process) refuses a second writer.
    lock = dst / STATE / "lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    with pytest.raises(DestinationLockedError):
        fuse_zarr(src, dst, chunks=BLOCK, resume=True, progress=False)
    lock.unlink()
    assert _tree(dst) == before

    # A source chunk that finished blocks read has changed since: resuming would mix two
    # versions of the data, so it is refused.
    spare = next((a, b) for a in range(GRID) for b in range(GRID) if _needs(a, b) <= done)
    chunk = src / "c" / "0" / str(spare[0]) / str(spare[1])
    stat = chunk.stat()
    restore = _corrupt(src, *spare)
    with pytest.raises(ValueError, match=r"source file .* changed since the run began"):
        fuse_zarr(src, dst, chunks=BLOCK, resume=True, progress=False)
    restore()
    os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the very same file again
    assert _tree(dst) == before and _tree(src) == src_tree

    kept = _chunk_stats(dst, done)
    caplog.set_level(logging.INFO, logger="fstack_dask")
    out = fuse_zarr(src, dst, chunks=BLOCK, resume=True, progress=False, scheduler="synchronous")
    assert f"{len(missing)} of {GRID * GRID} blocks left" in caplog.text
    np.testing.assert_array_equal(out["0"][...], expected, strict=True)
    assert _chunk_stats(dst, done) == kept  # finished blocks were not rewritten
    assert out.attrs["fstack_dask"]["complete"] is True
    assert not (dst / STATE).exists()
    assert _tree(src) == src_tree

    # Resuming a complete output changes nothing.
    before = _tree(dst)
    fuse_zarr(src, dst, chunks=BLOCK, resume=True, progress=False)
    assert _tree(dst) == before


def test_resume_without_previous_output_runs_from_scratch(tmp_path):
    data = _make("zyx", shape=(40, 40))
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    out = fuse_zarr(src, tmp_path / "out.zarr", resume=True, chunks=20, progress=False)
    _check_output(out, _truth(data, "zyx", False)[0], "yx", dst=tmp_path / "out.zarr")


def test_resume_into_something_that_is_not_our_output_is_refused(tmp_path):
    data = _make("zyx", shape=(40, 40))
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    other = tmp_path / "other.zarr"
    zarr.create_group(str(other), attributes={"mine": True})
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="not an fstack_dask output"):
        fuse_zarr(src, other, resume=True, progress=False)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_many_blocks_in_a_narrow_strip_keep_the_bits(tmp_path, monkeypatch, scheduler):
    """Blocks run strip by strip; with a memory budget that makes the strips narrower than
    the image, the output is still the in-memory result, each source unit is decoded at
    most once per strip that reads it, and the decoded units held stay within the cache's
    budget."""
    shape, unit, block = (120, 400), 40, 40
    data = _make("zyx", shape=shape, dtype="uint16")
    src = _plain(tmp_path / "in.zarr", data, names="zyx", chunks=(7, unit, unit))
    runs = []
    execute = _run.execute

    def recording(job, blocks, **kwargs):
        report = execute(job, blocks, **kwargs)
        runs.append((job, report))
        return report

    monkeypatch.setattr(_run, "execute", recording)
    # A budget that leaves the cache (what the workers' tasks leave of their budgets) room
    # for 4 rows of 4 units: strips of 2 blocks, where the image has 10 columns of blocks.
    task = block_memory((block + 2 * HALO,) * 2, 7, 1, 2, False)
    workers = 1 if scheduler == "synchronous" else 2
    memory = task + 4 * 4 * (7 * unit * unit * 2) // workers
    with dask.config.set(num_workers=workers):
        out = fuse_zarr(
            src, tmp_path / "out.zarr", chunks=block, memory_per_task=memory, depth_map=True,
            progress=False, scheduler=scheduler, levels=0,
        )  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], focus_stack(np.moveaxis(data, 0, -1)))
    ((job, report),) = runs
    plan = job.plan
    assert plan.grid == (3, 10)
    assert 1 < plan.strip < plan.grid[1], plan.strip
    assert report.done == plan.n_blocks == 30
    # Each strip decodes at most the unit columns its blocks (with their halo) read, once
    # each (fewer when the next strip's first reads are announced before a strip ends).
    most = 0
    for s0 in range(0, plan.grid[1], plan.strip):
        s1 = min(s0 + plan.strip, plan.grid[1])
        lo, hi = max(0, s0 * block - HALO), min(shape[1], s1 * block + HALO)
        first, last = lo // unit * unit, min(shape[1], ((hi - 1) // unit + 1) * unit)
        most += data[:, :, first:last].nbytes
    assert data.nbytes <= report.decoded_bytes <= most < 2 * data.nbytes
    assert 0 < report.cache_peak_bytes <= job.cache_bytes


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_a_cache_smaller_than_one_unit_still_gives_the_bits(tmp_path, scheduler):
    """A unit (a source chunk with every plane) larger than what the budget leaves for the
    cache is decoded again where it is needed: slower, never wrong."""
    data = _make("zyx", shape=(120, 120), dtype="uint16")
    src = _plain(tmp_path / "in.zarr", data, names="zyx", chunks=(7, 120, 120))
    task = block_memory((40 + 2 * HALO,) * 2, 7, 1, 2, False)  # nothing left for the cache
    out = fuse_zarr(
        src, tmp_path / "out.zarr", chunks=40, memory_per_task=task, progress=False,
        scheduler=scheduler,
    )  # fmt: skip
    _check_output(out, _truth(data, "zyx", False)[0], "yx", dst=tmp_path / "out.zarr")


@pytest.mark.parametrize("shards", [None, (5, 32, 32)])
def test_a_source_missing_chunk_files_is_fused_with_a_warning(tmp_path, caplog, shards):
    """A chunk file missing from a store reads as the fill value (Zarr's meaning), and is what
    an interrupted copy leaves: the run exited 0 with a block of zeros and said nothing (a
    third adversarial run). It says how many are missing; a whole store gets no warning."""
    import logging

    data = np.random.default_rng(0).integers(1, 1000, (5, 64, 64)).astype(np.uint16)
    src = tmp_path / "src.zarr"
    chunks = (5, 16, 16) if shards else (5, 32, 32)
    array = zarr.create_array(str(src), shape=data.shape, chunks=chunks, shards=shards,
                              dtype=data.dtype, dimension_names=["z", "y", "x"])  # fmt: skip
    array[...] = data
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        fuse_zarr(src, tmp_path / "whole.zarr", progress=False)
    assert "chunk files are missing" not in caplog.text
    os.remove(src / "c" / "0" / "1" / "1")
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        out = fuse_zarr(src, tmp_path / "holed.zarr", progress=False)
    assert "1 of its 4 chunk files are missing, and read as the fill value 0" in caplog.text
    assert out["0"][32:, 32:].max() == 0  # as Zarr reads it: fused, and said


def test_a_source_with_no_chunk_stored_is_fused_saying_the_output_is_constant(tmp_path):
    """No chunk file at all: every sample is the fill value. Not refused, for Zarr stores no
    chunk of an array all fill value (``write_empty_chunks=False``, its default: a blank
    stack written with zarr is such a store); it said only "4 of its 4 chunk files are
    missing" (a review, 2026-12-06), now that the output is that constant. Exit 0."""
    from safety_util import cli

    data = np.zeros((5, 64, 64), np.uint16)
    src = tmp_path / "src.zarr"
    array = zarr.create_array(str(src), shape=data.shape, chunks=(5, 32, 32), dtype=data.dtype,
                              dimension_names=["z", "y", "x"])  # fmt: skip
    array[...] = data  # (stores nothing)
    assert not (src / "c").exists()
    proc = cli("fuse", src, tmp_path / "out.zarr", "--chunks", "32", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (
        "none of its 4 chunk files is stored: every sample reads as the fill value 0, and the "
        "output is that constant" in proc.stderr
    ), proc.stderr
    assert zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[...].max() == 0


def test_an_hdf5_virtual_dataset_missing_a_source_file_is_fused_with_a_warning(tmp_path, caplog):
    """HDF5 reads a virtual dataset's missing source file as the fill value: the run exited 0
    and said nothing (a fourth adversarial run). It names the missing file."""
    import logging

    import h5py

    data = np.random.default_rng(0).integers(1, 1000, (4, 32, 32)).astype(np.uint16)
    layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
    for z in range(4):
        with h5py.File(tmp_path / f"plane{z}.h5", "w") as f:
            f["p"] = data[z]
        layout[z] = h5py.VirtualSource(f"plane{z}.h5", "p", shape=data.shape[1:])
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        f.create_virtual_dataset("stack", layout)
    os.rename(tmp_path / "plane2.h5", tmp_path / "moved.h5")
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        fuse_zarr(f"{tmp_path / 'vds.h5'}/stack", tmp_path / "out.zarr", axes="zyx",
                  progress=False)  # fmt: skip
    assert f"1 of its files are missing ({tmp_path / 'plane2.h5'})" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "exc", "says"),
    [
        ({"scheduler": "thread"}, ValueError, "scheduler must be 'synchronous'"),
        ({"scheduler": "procs"}, ValueError, "scheduler must be 'synchronous'"),
        ({"scheduler": "inproc://x"}, ValueError, "scheduler must be 'synchronous'"),
        ({"storage_options": [1]}, TypeError, "storage_options must be a dict"),
        ({"storage_options": 0}, TypeError, "storage_options must be a dict"),
        ({"dst_storage_options": "x"}, TypeError, "dst_storage_options must be a dict"),
        ({"dst_storage_options": []}, TypeError, "dst_storage_options must be a dict"),
    ],
)
def test_scheduler_and_storage_options_of_the_wrong_kind_are_refused(tmp_path, kwargs, exc, says):
    """``scheduler="thread"`` was taken for an address ("missing port number", then a 60 s
    wait at exit for the Client left behind); storage options of the wrong type gave
    ``dict()``'s errors, and falsy ones were taken as none (an adversarial run)."""
    data = _make("zyx", shape=(40, 40), dtype="uint16")
    src = _plain(tmp_path / "in.zarr", data, names="zyx")
    before = _tree(tmp_path)
    with pytest.raises(exc, match=says):
        fuse_zarr(src, tmp_path / "out.zarr", progress=False, **kwargs)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("scheduler", [5, 2.0, object(), ["threads"]])
def test_a_scheduler_of_no_kind_dask_knows_is_refused_before_the_source_is_opened(
    tmp_path, scheduler
):
    """``scheduler=5`` was refused only after planning and the kernel's warm-up (found by g66's
    fuzzer; only strings were checked up front): refused first, here before a missing source
    would be said."""
    with pytest.raises(TypeError, match=r"^scheduler must be .* got (int|float|object|list)$"):
        fuse_zarr(tmp_path / "missing.zarr", tmp_path / "out.zarr", scheduler=scheduler)
    assert sorted(tmp_path.iterdir()) == []
