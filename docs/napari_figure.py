"""Make ``docs/napari_pyramid.png``: a fused OME-Zarr pyramid opened in napari.

Fuses a focus stack with :func:`fstack_dask.fuse_zarr` into a multiscale OME-Zarr 0.5 image
(levels 0..N, each 2 x 2 averaged from the one before) with a depth map, opens the result in
napari through the napari-ome-zarr plugin (the fused image from the root group, the depth map
from its own NGFF image group ``depth``), shows both side by side, and saves a screenshot of the
napari window.

The default stack is the real light-sheet z-stack of mitochondria from ZJUOPTKuangLab/DFNN
(``data/test/mitochondria/stack/``, MIT licence; 34 TIFF planes, 800 x 512, uint16), a folder
that ``fuse_zarr`` reads directly. ``--src`` takes any source ``fuse_zarr`` accepts (a TIFF
folder, a Zarr array, an OME-Zarr image group).

Run it (napari, a Qt binding and the plugin are not dependencies of fstack_dask, so use a
separate environment)::

    python3 -m venv napari-venv
    napari-venv/bin/pip install -e . "napari[pyqt6]" napari-ome-zarr tifffile imagecodecs
    napari-venv/bin/python docs/napari_figure.py

Without a display (napari's canvas needs OpenGL; Xvfb with Mesa's llvmpipe provides it; on
Debian/Ubuntu ``apt-get install xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
libxcb-shape0 libxcb-cursor0``)::

    xvfb-run -a -s "-screen 0 1920x1200x24" napari-venv/bin/python docs/napari_figure.py

Options: ``--src`` (stack), ``--dst`` (fused output, replaced if it is an earlier fstack_dask
output; default ``fstack_dask-napari-figure/fused.ome.zarr`` in the temporary folder),
``--png`` (screenshot; default ``napari_pyramid.png`` beside this script), ``--chunks`` (y/x
chunk size, default 128 so that this small image still gets a few pyramid levels: fuse_zarr
adds levels until the image fits in one chunk), ``--size`` (window size in pixels),
``--no-fuse`` (open an existing ``--dst``).

References
----------
.. [1] S. Pertuz, D. Puig, M. A. Garcia, A. Fusiello, "Generation of all-in-focus images by
   noise-robust selective fusion of limited depth-of-field images", IEEE Trans. Image Process.
   22(3):1242-1251, 2013.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np

import fstack_dask

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = "/work/shared/realdata/dfnn_mitochondria_lightsheet"
DEFAULT_DST = Path(tempfile.gettempdir()) / "fstack_dask-napari-figure" / "fused.ome.zarr"
# The README shows the PNG: above this size it is saved with a 256-colour palette.
MAX_PNG_BYTES = 400_000


def fuse(src: str, dst: Path, *, chunks: int) -> None:
    """Fuse ``src`` into the multiscale OME-Zarr ``dst`` (with a depth map)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fstack_dask.fuse_zarr(
        src, dst, chunks=chunks, depth_map=True, overwrite=dst.exists(), progress=False
    )


def _percentiles(level, low: float, high: float) -> tuple[float, float]:
    # From the coarsest level: a few KB to read and, being 2 x 2 means of the full image,
    # close to the full image's own percentiles.
    lo, hi = np.nanpercentile(np.asarray(level, dtype=np.float64), (low, high))
    return float(lo), float(max(hi, lo + 1e-6))


def _focus_range(dst: Path) -> tuple[float, float] | None:
    # The run's focus positions, recorded by fstack_dask in the root group's attributes.
    import zarr

    attrs = zarr.open_group(os.fspath(dst), mode="r").attrs.get("fstack_dask", {})
    focus = attrs.get("focus")
    return (min(focus), max(focus)) if focus else None


def screenshot(dst: Path, png: Path, *, size: tuple[int, int]) -> None:
    """Open ``dst`` and ``dst/depth`` in napari with napari-ome-zarr and save the window."""
    # Imported here so that ``--help`` works without napari installed.
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    # No notification pop-ups (e.g. a backend deprecation warning) over the canvas.
    get_settings().application.gui_notification_level = "none"
    viewer = napari.Viewer(title="fstack_dask: fused OME-Zarr pyramid", show=True)
    viewer.window.resize(*size)
    # napari >= 0.9 keeps the grid and the canvas overlays under viewer.canvas.
    canvas = getattr(viewer, "canvas", None)
    grid = canvas.grid if canvas is not None else viewer.grid
    scale_bar = canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar
    text = canvas.overlays.text if canvas is not None else viewer.text_overlay

    # The plugin reads the NGFF multiscales metadata: one multiscale layer per image group.
    (fused,) = viewer.open(os.fspath(dst), plugin="napari-ome-zarr")
    (depth,) = viewer.open(os.fspath(dst / "depth"), plugin="napari-ome-zarr")

    fused.name = f"fused ({dst.name})"
    fused.colormap = "gray"
    fused.contrast_limits_range = _percentiles(fused.data[-1], 0, 100)
    fused.contrast_limits = _percentiles(fused.data[-1], 0.5, 99.8)

    # Depth values are focus positions: span the whole focus range, so that a colour reads as
    # a position on the colour bar.
    depth.name = "depth (sharpest plane)"
    depth.colormap = "turbo"
    depth.contrast_limits = _focus_range(dst) or _percentiles(depth.data[-1], 0, 100)
    depth.colorbar.visible = True

    for layer in (fused, depth):
        layer.name_overlay.visible = True
    viewer.layers.selection.active = fused

    # Side by side; grid cells follow the layer list order, so the fused image is on the left.
    grid.enabled = True
    grid.shape = (1, 2)
    grid.spacing = 10
    scale_bar.visible = True
    viewer.reset_view()

    # Let Qt lay the window out and napari pick (and load) the pyramid level it draws.
    for _ in range(20):
        QApplication.processEvents()

    shapes = ", ".join("x".join(map(str, level.shape)) for level in fused.data)
    text.visible = True
    text.position = "bottom_left"
    text.font_size = 11
    text.text = f"{len(fused.data)} levels: {shapes}; napari draws level {fused.data_level} here"
    QApplication.processEvents()

    image = viewer.screenshot(canvas_only=False, flash=False)
    viewer.close()
    _save_png(image, png)


def _save_png(image: np.ndarray, png: Path) -> None:
    """Save an RGBA screenshot as PNG, with a 256-colour palette if it is too large."""
    from PIL import Image

    rgb = Image.fromarray(np.asarray(image)[..., :3])
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", optimize=True)
    mode = "RGB"
    if buffer.tell() > MAX_PNG_BYTES:
        # Grey levels, one colormap and the flat UI need few colours: a 256-colour palette
        # keeps the README light at little visible cost.
        buffer = io.BytesIO()
        palette = rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        palette.save(buffer, format="PNG", optimize=True)
        mode = "256-colour palette"
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(buffer.getvalue())
    print(f"wrote {png} ({png.stat().st_size} bytes, {rgb.width}x{rgb.height}, {mode})")


def main(argv: list[str] | None = None) -> None:
    """Command line: fuse, open in napari, save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default=DEFAULT_SRC, help="focus stack (default: %(default)s)")
    parser.add_argument(
        "--dst",
        type=Path,
        default=DEFAULT_DST,
        help="fused OME-Zarr output (default: %(default)s)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=HERE / "napari_pyramid.png",
        help="screenshot (default: napari_pyramid.png beside this script)",
    )
    parser.add_argument("--chunks", type=int, default=128, help="y/x chunk size (default: 128)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(1400, 900), metavar=("W", "H"), help="window size"
    )
    parser.add_argument(
        "--no-fuse", action="store_true", help="open an existing --dst instead of fusing"
    )
    args = parser.parse_args(argv)

    if not args.no_fuse:
        fuse(args.src, args.dst, chunks=args.chunks)
    screenshot(args.dst, args.png, size=tuple(args.size))


if __name__ == "__main__":
    main()
