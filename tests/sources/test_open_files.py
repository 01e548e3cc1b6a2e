"""The files a run opens to read its source are closed when it ends, however it ends.

Jupyter keeps the last exception's traceback, and with it every frame of a refused run: a
source opened there stayed open until the next error (on Windows it could then be neither
moved nor deleted; on NFS its deletion leaves ``.nfs`` files)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from readers_util import need

from fstack_dask import fuse_zarr, synthetic_stack

STACK = np.round(np.moveaxis(synthetic_stack((48, 40), 5, seed=2).stack, -1, 0) * 3000)


def _open_here(path) -> bool:
    """Whether this process holds a descriptor of ``path`` (from /proc)."""
    real = os.path.realpath(path)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == real:
                return True
        except OSError:
            continue
    return False


def _tiff(tmp_path):
    tifffile = need("tifffile")
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK.astype(np.uint16))
    return path, str(path)


def _hdf5(tmp_path):
    h5py = need("h5py")
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("stack", data=STACK.astype(np.uint16))
    return path, f"{path}/stack"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("kind", [_tiff, _hdf5], ids=["tiff", "hdf5"])
@pytest.mark.parametrize("dst_name", ["out.zarr", "out.tif"])
def test_a_run_leaves_no_file_of_its_source_open(tmp_path, kind, dst_name):
    path, src = kind(tmp_path)
    dst = tmp_path / dst_name
    fuse_zarr(src, dst, axes="zyx" if "h5" in src else None, progress=False)
    assert not _open_here(path)
    (tmp_path / "theirs.zarr").mkdir()
    (tmp_path / "theirs.zarr" / "notes.txt").write_text("the user's")
    with pytest.raises(FileExistsError) as refused:  # refused once the source is open
        fuse_zarr(src, tmp_path / "theirs.zarr", axes="zyx" if "h5" in src else None,
                  progress=False)  # fmt: skip
    assert refused.value.__traceback__ is not None  # kept, as Jupyter keeps it
    assert not _open_here(path)
    with pytest.raises(ValueError, match="nhsize"):  # refused while the run is planned
        fuse_zarr(src, tmp_path / "x.zarr", nhsize=-1, axes="zyx" if "h5" in src else None,
                  progress=False)  # fmt: skip
    assert not _open_here(path)
