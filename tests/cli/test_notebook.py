"""Execute notebooks/quickstart.ipynb end to end and check its outputs."""

from __future__ import annotations

import json
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
KERNEL = "python3"


@pytest.fixture
def kernel_for_this_python(tmp_path, monkeypatch):
    """A ``python3`` kernelspec that runs this interpreter, found before any other.

    Any installed ``python3`` spec (user-wide, another environment) may point at a
    different Python without fstack_dask; a spec of our own on ``JUPYTER_PATH``
    comes first in the kernel search path.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (fstack_dask tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable
    return KERNEL


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from ((cell, out) for out in cell.get("outputs", []))


def test_committed_notebook_shows_its_outputs():
    """The notebook is committed executed, so that it reads (on GitHub, say) with its
    pictures; the run below checks it still executes to the same kind of outputs."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    outputs = list(_outputs(nb))
    assert not [out for _, out in outputs if out.output_type == "error"]
    images = [out for _, out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 2, "commit the notebook executed, with its previews"
    for cell in nb.cells:  # no private modules in what users copy
        assert not re.search(r"fstack_dask\._[a-z]", cell.source), cell.source


def test_quickstart_notebook_runs(kernel_for_this_python, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name=kernel_for_this_python,
        resources={"metadata": {"path": str(tmp_path)}},
        allow_errors=False,
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = list(_outputs(nb))
    errors = [out for _, out in outputs if out.output_type == "error"]
    assert not errors, errors
    stderr = "".join(
        out.text for _, out in outputs if out.output_type == "stream" and out.name == "stderr"
    )
    assert "Traceback" not in stderr, stderr
    images = [
        out
        for _, out in outputs
        if out.output_type in ("display_data", "execute_result") and "image/png" in out.data
    ]
    assert len(images) >= 2, "expected the grey and the RGB side-by-side previews"
    for image in images:
        assert len(image.data["image/png"]) > 1000  # base64 PNG, not an empty stub
    # the working directory is the temporary one: nothing lands in the repository
    assert not any(p.suffix == ".zarr" for p in NOTEBOOK.parent.iterdir())


def test_progress_in_a_notebook_without_ipywidgets(kernel_for_this_python, tmp_path):
    """In Jupyter without ipywidgets, tqdm.auto warned 'IProgress not found'; the bar is now
    tqdm's text bar, which a notebook shows as one line updated in place."""
    cell = """
import sys
sys.modules["ipywidgets"] = None  # as where it is not installed
import fstack_dask
from fstack_dask._runs import progress
progress.SHOW_AFTER = 0.0  # a bar even for this short run
stack = fstack_dask.sample_stack("mitochondria_lightsheet")
fstack_dask.write_stack("stack.zarr", stack, axes="zyx", chunks=(34, 64, 64))
out = fstack_dask.fuse_zarr("stack.zarr", "out.zarr", chunks=64, levels=0)
"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name=kernel_for_this_python,
        resources={"metadata": {"path": str(tmp_path)}},
    )  # fmt: skip
    client.execute()
    outputs = [out for _, out in _outputs(nb)]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "IProgress" not in text and "Warning" not in text, text
    assert "fusing: 100%" in text and "4/4" in text, text
    assert all(out.output_type == "stream" and out.name == "stderr" for out in outputs), outputs
