"""Source files that are not what they say: chunk and metadata files that are not files (a
named pipe, a link to a device), a chunk stated larger than its array, an HDF5 filter this
installation cannot decode, an OME-Zarr dataset path that is not an array, and channel
metadata that a viewer would refuse (an adversarial run on corrupt and crafted sources,
2026-12-05). Refused in one line with exit 2 before anything is written, or, for the channel
metadata, left out of the output; the source is never changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import tree_digest

from fstack_dask import fuse_zarr

TIMEOUT = 120


def _store(path, shape=(6, 64, 64), chunks=(6, 32, 32), **kw):
    data = (np.random.default_rng(0).random(shape) * 1000).astype("uint16")
    if kw.get("zarr_format") != 2:
        kw["dimension_names"] = list("zyx")[-len(shape) :]
    z = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", **kw)
    z[...] = data
    return path


def _refused(tmp_path, src, *pattern, extra=()):
    """The CLI's ``fuse`` on ``src``: exit 2, one line holding every ``pattern``, nothing
    written, the source unchanged (its files' contents, read before by name only where they
    are files)."""
    dst = tmp_path / "out.ome.zarr"
    res = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(dst), "--no-progress",
         *extra],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: "), res.stderr
    for text in pattern:
        assert text in lines[0], lines[0]
    assert not dst.exists()
    return lines[0]


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_chunk_that_is_not_a_file_is_refused_before_it_is_read(tmp_path, kind):
    """A named pipe's read never returned (the run ignored SIGTERM); /dev/zero's never
    stopped (memory until the OOM killer)."""
    src = _store(tmp_path / "s.zarr")
    chunk = src / "c" / "0" / "1" / "1"
    chunk.unlink()
    if kind == "fifo":
        os.mkfifo(chunk)
    else:
        chunk.symlink_to("/dev/zero")
    what = "a named pipe" if kind == "fifo" else "a character device"
    _refused(tmp_path, src, "'c/0/1/1'", what, "not a regular file")
    assert chunk.is_fifo() if kind == "fifo" else chunk.is_symlink()


def test_metadata_nested_deeper_than_json_can_parse_is_refused(tmp_path):
    """A zarr.json holding a value nested 100000 deep failed with "maximum recursion depth
    exceeded while decoding a JSON array", exit 1, naming no file (an adversarial run on
    names and metadata, 2026-12-06)."""
    src = _store(tmp_path / "s.zarr")
    meta = json.loads((src / "zarr.json").read_text())
    text = json.dumps(meta)[:-1] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}"
    (src / "zarr.json").write_text(text)
    _refused(tmp_path, src, "zarr.json is not valid JSON", "recursion")


def test_metadata_that_is_not_a_file_is_refused(tmp_path):
    src = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    _store(tmp_path / "g.zarr" / "0", zarr_format=2)
    attrs = tmp_path / "g.zarr" / ".zattrs"
    attrs.unlink(missing_ok=True)
    os.mkfifo(attrs)
    assert src is not None
    before = tree_digest(tmp_path / "g.zarr" / "0")
    _refused(tmp_path, tmp_path / "g.zarr", ".zattrs is a named pipe")
    assert tree_digest(tmp_path / "g.zarr" / "0") == before


def test_a_chunk_stated_larger_than_the_array_counts_at_its_stated_size(tmp_path):
    """zarr stores and decodes a chunk at its stated size: (6, 8192, 8192) over a 64^2 image
    held 950 MB where the budget is 256 MiB."""
    src = _store(tmp_path / "s.zarr", chunks=(6, 8192, 8192))
    before = tree_digest(src)
    line = _refused(tmp_path, src, "768.00 MiB decoded", "--memory-per-task 768MiB")
    assert "larger size than the image" in line
    assert tree_digest(src) == before
    # within the budget it names, the run goes on (and the numbers are those of small chunks)
    small = _store(tmp_path / "small.zarr", chunks=(6, 32, 32))
    a = fuse_zarr(src, tmp_path / "a.ome.zarr", memory_per_task="768MiB", progress=False)
    b = fuse_zarr(small, tmp_path / "b.ome.zarr", progress=False)
    assert a["0"][...].tobytes() == b["0"][...].tobytes()


def test_a_shard_larger_than_the_image_decodes_only_its_chunks(tmp_path):
    """Shards of 8 x 8192^2 with 512^2 chunks over a 1000^2 image: zarr decodes the chunks
    inside the image, not the stated shard, so the run goes on (the first rule for chunks
    stated larger than the array refused it, asking for 1 GiB: a review, 2026-12-05)."""
    shape = (8, 1000, 1000)
    src = _store(tmp_path / "s.zarr", shape=shape, chunks=(8, 512, 512), shards=(8, 8192, 8192))
    plain = _store(tmp_path / "p.zarr", shape=shape, chunks=(8, 500, 500))
    a = fuse_zarr(src, tmp_path / "a.ome.zarr", progress=False, levels=0)
    b = fuse_zarr(plain, tmp_path / "b.ome.zarr", progress=False, levels=0)
    assert a["0"][...].tobytes() == b["0"][...].tobytes()


def test_an_hdf5_filter_that_cannot_be_decoded_is_refused_when_opened(tmp_path):
    """Every block failed at run time as "corrupt", exit 1, where the file is fine and only
    its filter plugin (Blosc, Zstd, LZ4, bitshuffle) is missing."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        data = (np.random.default_rng(1).random((6, 64, 64)) * 1000).astype("uint16")
        f.create_dataset("stack", data=data, chunks=(6, 32, 32), compression="lzf")
    raw = bytearray(path.read_bytes())
    at = raw.find((32000).to_bytes(2, "little"))  # LZF's filter id, in the filter message
    assert at > 0
    raw[at : at + 2] = (32123).to_bytes(2, "little")  # an id no plugin provides
    path.write_bytes(bytes(raw))
    before = tree_digest(tmp_path)
    _refused(tmp_path, path, "HDF5 filter 32123", "pip install hdf5plugin", extra=("--axes", "zyx"))
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("path", ["labels", "", "../elsewhere", "./0"])
def test_an_ome_zarr_dataset_path_that_is_not_an_array_is_refused(tmp_path, path):
    root = tmp_path / "s.ome.zarr"
    g = zarr.open_group(str(root), mode="w")
    _store(root / "0")
    g.create_group("labels")
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    ct = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [
        {"axes": axes, "datasets": [{"path": path, "coordinateTransformations": ct}]}]}  # fmt: skip
    _refused(tmp_path, root, "malformed OME-NGFF multiscales metadata", f"{path!r}")


def test_channel_metadata_a_viewer_would_refuse_is_not_copied_to_the_output(tmp_path):
    root = tmp_path / "s.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    data = (np.random.default_rng(0).random((2, 6, 64, 64)) * 1000).astype("uint16")
    g.create_array("0", shape=data.shape, chunks=(1, 6, 32, 32), dtype=data.dtype)[...] = data
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space"} for n in "zyx"]
    ct = [{"type": "scale", "scale": [1.0, 1.0, 0.5, 0.5]}]
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": ct}],
        }
    ]
    bad = {"start": float("nan"), "end": "high", "min": float("-inf"), "max": 1e999}
    g.attrs["omero"] = {"channels": [
        {"label": "a", "color": "not-a-colour", "window": bad},
        {"label": "b", "color": "#00ff00", "window": {"start": 0, "end": 900, "min": 0,
                                                      "max": 65535}}]}  # fmt: skip
    fuse_zarr(root, tmp_path / "o.ome.zarr", progress=False)
    meta = json.loads((tmp_path / "o.ome.zarr" / "zarr.json").read_text())
    a, b = meta["attributes"]["ome"]["omero"]["channels"]
    assert a["label"] == "a" and a["color"] == "FFFFFF"  # the defaults of a channel without
    # a window: the dtype's range, the contrast the fused image's own values (of 0..1000)
    assert {k: a["window"][k] for k in ("min", "max")} == {"min": 0.0, "max": 65535.0}
    assert 0 <= a["window"]["start"] < a["window"]["end"] < 1000
    assert b["color"] == "00FF00" and b["window"]["end"] == 900


def test_folder_and_plane_names_that_are_not_utf8_fuse_and_resume(tmp_path, monkeypatch):
    """A folder or plane name in another encoding (b"\\xff", from an old share or a zip) is a
    str with surrogates in Python; the digest of the source's files encoded it as UTF-8 and
    every run failed with "'utf-8' codec can't encode characters ... surrogates not allowed",
    naming nothing (an adversarial run on names, 2026-12-06). Such a source fuses, and an
    interrupted run resumes."""
    import tifffile

    from fstack_dask._runs.blocks import FuseJob

    folder = tmp_path / os.fsdecode(b"planes\xff\xfe")
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        plane = rng.integers(0, 60000, (64, 64), dtype=np.uint16)
        tifffile.imwrite(folder / os.fsdecode(b"p%d\xe9.tif" % k), plane)
    before = tree_digest(folder)
    whole = fuse_zarr(folder, tmp_path / "whole.ome.zarr", chunks=32, progress=False)
    real = FuseJob.fuse_and_write
    done = []

    def stop_after_two(self, *args, **kwargs):
        if len(done) >= 2:
            raise KeyboardInterrupt
        done.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", stop_after_two)
    dst = folder / os.fsdecode(b"out\xff.ome.zarr")  # dst too
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(folder, dst, chunks=32, scheduler="synchronous", progress=False)
    monkeypatch.setattr(FuseJob, "fuse_and_write", real)
    out = fuse_zarr(folder, dst, chunks=32, progress=False, resume=True)
    np.testing.assert_array_equal(out["0"][...], whole["0"][...])
    assert out.attrs["fstack_dask"]["src"] == str(folder)
    assert {k: v for k, v in tree_digest(folder).items() if dst.name not in k} == before
