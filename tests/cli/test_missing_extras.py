"""A missing optional package is bad input, found before anything is read or written: one line
naming the extra to install, exit 2 (an adversarial run on installation, 2026-12-05: an LZW TIFF
without imagecodecs failed block by block as "corrupt", exit 1, and ``info`` found it fine; a
SLURM config without dask-jobqueue exited 1). Each case hides the package in a real CLI
process, as where it is not installed."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from conftest import tree_digest

HIDE = "import sys\nfor m in {mods!r}: sys.modules[m] = None\n"
RUN = "from fstack_dask._cli.main import main\nsys.exit(main(sys.argv[1:]))\n"


def _cli_without(modules, *args, cwd):
    code = HIDE.format(mods=list(modules)) + RUN
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=cwd, check=False,
    )  # fmt: skip


def _one_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize("compression", ["lzw", "zstd"])
def test_a_compressed_tiff_without_imagecodecs_is_refused_when_opened(tmp_path, compression):
    """ZSTD: tifffile finds its own decoder, which imports ``compression.zstd`` (Python
    3.14's) only when first called (a review, 2026-12-05)."""
    import importlib.util

    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("imagecodecs")  # to write it
    if compression == "zstd" and importlib.util.find_spec("compression") is not None:
        pytest.skip("this Python decodes ZSTD itself")
    data = (np.random.default_rng(0).random((5, 32, 32)) * 1000).astype("uint16")
    tifffile.imwrite(tmp_path / "stack.tif", data, compression=compression)
    before = tree_digest(tmp_path)
    for command in (("info", "stack.tif"), ("fuse", "stack.tif", "out.ome.zarr")):
        res = _cli_without(["imagecodecs"], *command, cwd=tmp_path)
        line = _one_line(res)
        assert res.returncode == 2, res.stderr
        assert f"compression {compression.upper()}" in line, line
        assert 'pip install "fstack_dask[tiff]"' in line and "corrupt" not in line
    assert tree_digest(tmp_path) == before


def test_a_cluster_kind_without_dask_jobqueue_exits_2_naming_the_extra(tmp_path):
    from fstack_dask import synthetic_stack, write_stack

    data = synthetic_stack((32, 32), 5, dtype="uint16", seed=1).stack.transpose(2, 0, 1)
    write_stack(tmp_path / "s.zarr", np.ascontiguousarray(data), axes="zyx")
    (tmp_path / "slurm.yaml").write_text("cluster:\n  kind: slurm\n")
    before = tree_digest(tmp_path)
    res = _cli_without(["dask_jobqueue"], "fuse", "s.zarr", "out.ome.zarr", "--config",
                       "slurm.yaml", "--no-progress", cwd=tmp_path)  # fmt: skip
    line = _one_line(res)
    assert res.returncode == 2, res.stderr
    assert "'dask-jobqueue'" in line and 'pip install "fstack_dask[jobqueue]"' in line, line
    assert tree_digest(tmp_path) == before


def test_every_extra_named_exists_and_readers_holds_each_reader():
    """The README: ``readers`` installs "all of them", the readers' extras; it lacked ``hdf5``'s
    hdf5plugin, so an HDF5 file with Blosc or Zstd chunks was refused after ``pip install
    "fstack_dask[readers]"`` (a README audit). And every ``fstack_dask[NAME]`` that a message
    or the README tells a user to install is an extra of pyproject.toml."""
    root = pathlib.Path(__file__).parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    each = ("tiff", "images", "hdf5", "xarray", "czi", "nd2", "lif")
    assert {r for name in each for r in extras[name]} <= set(extras["readers"])
    texts = [p.read_text() for p in (root / "README.md", *(root / "docs").glob("*.md"))]
    texts += [p.read_text() for p in (root / "fstack_dask").rglob("*.py")]
    named = {n for text in texts for n in re.findall(r"fstack_dask\[([a-z0-9-]+)\]", text)}
    assert named and named <= set(extras), named - set(extras)
