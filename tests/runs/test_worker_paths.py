"""A source named relative to the driver's working folder, read by workers started in another.

Worker processes and cluster workers resolve a relative path against their own working
folder, where they were started, not where the driver is now. Here that folder holds a
decoy of the same names and shape with other samples: a run that let its workers resolve
``src`` themselves fused the decoy into the driver's output (mixed data, no error). Every
spelling of a relative source must give the bytes of the driver's own stack, and a worker
that still opens another source must stop the run before it writes a block.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from fstack_dask import fuse_zarr, synthetic_stack, write_stack
from fstack_dask._runs import fusion
from fstack_dask._sources.open import portable

PLANES, SIDE, CHUNK = 5, 64, 32


def _stacks(root: Path) -> dict[str, np.ndarray]:
    """The driver's stack in ``root/b`` and a decoy of the same names and shape in
    ``root/a``, each as a Zarr store and as a folder of TIFF planes."""
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        folder = root / name
        (folder / "planes").mkdir(parents=True)
        data = synthetic_stack((SIDE, SIDE), PLANES, seed=seed).stack.transpose(2, 0, 1)
        write_stack(folder / "in.zarr", data, axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
        for k, plane in enumerate(data):
            tifffile.imwrite(folder / "planes" / f"z{k}.tif", plane)
        out[name] = data
    return out


def _spellings():
    """Relative ways to name the driver's stack, each a function of nothing (some open it)."""
    return {
        "path": lambda: "in.zarr",
        "pathlib with dots": lambda: Path("planes") / ".." / "in.zarr",
        "file URL": lambda: "file://in.zarr",
        "open zarr.Array": lambda: zarr.open_group("in.zarr", mode="r")["0"],
        "glob": lambda: "planes/z*.tif",
        "list of planes": lambda: [f"planes/z{k}.tif" for k in range(PLANES)],
    }


def _fused(dst: Path) -> np.ndarray:
    return zarr.open_group(str(dst), mode="r")["0"][...]


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    _stacks(tmp_path)
    monkeypatch.chdir(tmp_path / "a")  # where the workers start
    expected = fuse_zarr(tmp_path / "b" / "in.zarr", tmp_path / "expected.zarr", chunks=CHUNK,
                         levels=0, scheduler="threads", progress=False)["0"][...]  # fmt: skip
    decoy = fuse_zarr(tmp_path / "a" / "in.zarr", tmp_path / "decoy.zarr", chunks=CHUNK,
                      levels=0, scheduler="threads", progress=False)["0"][...]  # fmt: skip
    assert not np.array_equal(expected, decoy)  # the test can tell them apart
    return tmp_path, expected


def test_every_relative_spelling_of_src_is_the_drivers_stack_on_a_cluster(folders, monkeypatch):
    """A LocalCluster started in folder ``a``; the driver then moves to ``b`` and names its
    stack relatively, in six ways: the output is ``b``'s fusion every time."""
    from distributed import Client, LocalCluster

    root, expected = folders
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        assert client.run(os.getcwd).popitem()[1] == str(root / "a")
        monkeypatch.chdir(root / "b")
        for name, spell in _spellings().items():
            dst = root / f"out-{name.replace(' ', '-')}.zarr"
            fuse_zarr(spell(), dst, axes="zyx", chunks=CHUNK, levels=0, scheduler=client,
                      progress=False)  # fmt: skip
            np.testing.assert_array_equal(_fused(dst), expected, err_msg=name)


def test_worker_processes_kept_from_a_run_elsewhere_read_the_drivers_stack(folders, monkeypatch):
    """``scheduler="processes"`` after a run in folder ``a``: in ``b`` the relative source
    is ``b``'s, whichever processes run the tasks."""
    root, expected = folders
    fuse_zarr("in.zarr", root / "first.zarr", chunks=CHUNK, levels=0, scheduler="processes",
              progress=False)  # fmt: skip
    monkeypatch.chdir(root / "b")
    fuse_zarr("in.zarr", root / "second.zarr", chunks=CHUNK, levels=0, scheduler="processes",
              progress=False)  # fmt: skip
    np.testing.assert_array_equal(_fused(root / "second.zarr"), expected)


def test_a_worker_that_opens_another_source_stops_the_run(folders, monkeypatch):
    """Were ``src`` handed to the workers as spelled (the driver's translation undone here,
    in the driver only), the worker would open the decoy: it says so, and no block of the
    decoy reaches the output."""
    from distributed import Client, LocalCluster

    root, _ = folders
    monkeypatch.setattr(fusion, "portable", lambda src, storage_options=None, planes=(): src)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        monkeypatch.chdir(root / "b")
        dst = root / "out.zarr"
        with pytest.raises(ValueError, match=r"src: a worker opened .*a/in\.zarr.*planned from"):
            fuse_zarr("in.zarr", dst, chunks=CHUNK, levels=0, scheduler=client, progress=False)
    written = [p for p in (dst / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert written == []


def test_portable_names_what_every_process_reads_the_same(tmp_path, monkeypatch):
    """Local paths and local URLs become absolute; remote URLs and arrays stay as given."""
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    assert portable("x.zarr") == os.path.join(here, "x.zarr")
    assert portable("file:x.zarr") == os.path.join(here, "x.zarr")
    assert portable("planes/*.tif") == os.path.join(here, "planes", "*.tif")
    assert portable(["p.tif"]) == [os.path.join(here, "p.tif")]
    assert portable("s3://bucket/x.zarr") == "s3://bucket/x.zarr"
    array = np.zeros(3)
    assert portable(array) is array
    z = zarr.create_array("z.zarr", shape=(2, 4), chunks=(2, 2), dtype="u2")
    z[...] = np.arange(8).reshape(2, 4)
    moved = portable(zarr.open_array("z.zarr", mode="r"))
    assert Path(moved.store.root) == tmp_path / "z.zarr"
    np.testing.assert_array_equal(moved[...], z[...])
    on_absolute = zarr.open_array(tmp_path / "z.zarr", mode="r")
    assert portable(on_absolute) is on_absolute
