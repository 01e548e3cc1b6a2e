"""``fstack-dask demo``: what a user does with their own data, on a synthetic stack.

Writes DIR/planes/ (one TIFF file per focal plane, as a microscope or a camera saves them, with
the pixel size in the files), fuses that folder into DIR/fused.ome.zarr (a multiscale OME-Zarr
with depth and selectivity maps), writes PNG previews and prints the PSNR against the known
ground truth. ``--overwrite`` replaces only what an earlier demo wrote: its plane files carry
:data:`MARK`, its previews :data:`PNG_MARK`, and its fused output records DIR/planes as its
source; a file in DIR with one of the demo's names but without the mark (a user's own result
in DIR/fused.ome.zarr, say) is never replaced (the demo refuses before writing anything).
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

PIXEL_UM = 0.65  # the synthetic camera's pixel size, in micrometres
MARK = "fstack-dask demo plane"  # the TIFF ImageDescription of the planes the demo writes
PNG_MARK = "fstack-dask demo preview"  # the PNG tEXt Description of the previews it writes
PREVIEWS = ("plane.png", "fused.png", "depth.png", "truth.png")


def _psnr(estimate: Any, truth: Any, peak: float) -> float:
    import numpy as np

    err = np.mean((np.asarray(estimate, dtype=np.float64) - np.asarray(truth, np.float64)) ** 2)
    return math.inf if err == 0 else float(10 * np.log10(peak**2 / err))


# A plane being written, aside (:func:`write_planes`): what a demo killed meanwhile leaves.
_ASIDE = re.compile(r"\.plane_\d{3}\.tif\.[0-9a-f]{32}\.tmp")  # whole names: fullmatch


def _ours(folder: Path) -> bool:
    """Whether ``folder`` holds only plane files an earlier demo wrote (and planes it was
    writing when it was killed)."""
    import tifffile

    names = sorted(os.listdir(folder))
    for name in names:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return False
        if _ASIDE.fullmatch(name):  # ($ matched before a last newline: a user's name)
            continue
        if not name.endswith(".tif"):
            return False
        try:  # (a user's folder or text file named *.tif raised: an eighth adversarial run)
            with tifffile.TiffFile(path) as tif:
                if tif.pages[0].description != MARK:
                    return False
        except (OSError, ValueError, IndexError, tifffile.TiffFileError):  # not a TIFF (a
            return False  # ValueError since tifffile 2025.9.20), or one without pages
    return True


def _our_png(path: Path) -> bool:
    """Whether ``path`` is a preview an earlier demo wrote (a file, not a link, with our mark)."""
    from .._outputs.png import read_png_text

    if path.is_symlink() or not path.is_file():
        return False
    try:
        return read_png_text(path).get("Description") == PNG_MARK
    except OSError:
        return False


def _our_fused(path: Path, planes_dir: Path) -> bool:
    """Whether ``path`` is an output an earlier demo wrote: fstack_dask's, fused from the
    demo's plane folder (a user's own result there is any other source's)."""
    from .._locations import resolve
    from .._outputs.ownership import provenance

    if path.is_symlink() or not path.is_dir():
        return False
    ours = provenance(resolve(path, name="DIR")) or {}
    identity = ours.get("source_identity") or {}
    fused_from = identity.get("location", ours.get("src"))
    if fused_from == resolve(planes_dir, name="DIR").url:
        return True
    # The same folder reached another way: DIR through a bind mount (or a container's) was
    # refused its own fused.ome.zarr, "which the demo did not write"
    try:
        return isinstance(fused_from, str) and os.path.samefile(fused_from, planes_dir)
    except (OSError, ValueError):
        return False


def _not_ours(out_dir: Path) -> list[str]:
    """The demo's names in ``out_dir`` taken by what the demo did not write (the previews,
    the fused output; the plane folder is checked file by file)."""
    names = [n for n in PREVIEWS if os.path.lexists(out_dir / n) and not _our_png(out_dir / n)]
    if (out_dir / "planes").is_symlink():  # another folder's planes, whatever they hold
        names.append("planes")
    fused = out_dir / "fused.ome.zarr"
    if os.path.lexists(fused) and not _our_fused(fused, out_dir / "planes"):
        names.append(fused.name)
    return names


def _refuse_foreign(out_dir: Path, names: list[str]) -> None:
    if names:
        them = "it" if len(names) == 1 else "them"
        raise FileExistsError(
            f"DIR {str(out_dir)!r} holds {', '.join(names)}, which the demo did not write; "
            f"refusing to replace {them} (also with --overwrite): move {them} or choose another "
            "DIR"
        )


def _refuse_unwritable(out_dir: Path, earlier: list[str]) -> None:
    """Refuse, before anything is removed, a DIR whose files this user may not replace (a
    demo --overwrite in a folder it may not write removed the planes, then failed on the
    first rename: a twentieth adversarial run)."""
    from .._locations import permission_missing
    from .._outputs.removal import sticky_blocked

    folders = [out_dir, *(out_dir / n for n in earlier if n in ("planes", "fused.ome.zarr"))]
    for folder in folders:
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(
                f"DIR {str(out_dir)!r} cannot be written: this user "
                f"{permission_missing(str(folder))}; nothing was changed"
            )
    # a colleague's DIR (or planes folder) with the sticky bit: its entries go by owner alone
    planes = out_dir / "planes"
    sticky = sticky_blocked(str(out_dir), earlier) or (
        sticky_blocked(str(planes), os.listdir(planes)) if "planes" in earlier and
        planes.is_dir() else None
    )  # fmt: skip
    if sticky is not None:
        raise PermissionError(
            f"DIR {str(out_dir)!r} cannot be written: this user {sticky}; nothing was changed"
        )
    fused = out_dir / "fused.ome.zarr"
    if "fused.ome.zarr" in earlier and fused.is_dir():
        # the folders the overwrite writes into or removes from (its levels and maps), as
        # fuse_zarr checks them: it refused only after the planes were replaced
        from .._locations import resolve
        from .._outputs.folders import unwritable
        from .._outputs.removal import unremovable

        location = resolve(fused, name="DIR")
        why = unwritable(location, tuple(sorted(os.listdir(fused))))
        missing = unremovable(location) if why is None else None  # a colleague's folder in it
        if missing is not None:
            why = f"cannot be replaced: this user {missing}"
        if why is not None:
            raise PermissionError(
                f"DIR {str(out_dir)!r} cannot be written: its fused.ome.zarr {why}; nothing "
                "was changed"
            )


def write_planes(folder: Path, stack: Any, rgb: bool) -> list[Path]:
    """One TIFF per plane (``stack`` is (y, x, z[, c])), the pixel size in its resolution tags."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    per_cm = 1e4 / PIXEL_UM
    for p in range(stack.shape[2]):
        path = folder / f"plane_{p:03d}.tif"
        # written aside, then renamed: a demo killed meanwhile leaves no plane cut short, which
        # a fusion of the folder would read and a rerun would refuse to replace as not its own
        aside = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tifffile.imwrite(
            aside, stack[:, :, p], photometric="rgb" if rgb else "minisblack",
            resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", description=MARK,
            metadata=None,
        )  # fmt: skip
        os.replace(aside, path)
        paths.append(path)
    return paths


def _local_dir(directory: str) -> Path:
    """DIR as a local folder. ``''`` (an unset shell variable) wrote the demo into the current
    folder, and a URL (``s3://bucket/x``, ``foo://x``, ``file:///abs/x``) into a local folder
    spelled like it (``s3:/bucket/x``): refused, or read, as ``fuse`` reads its dst."""
    from .._locations import resolve

    location = resolve(directory, name="DIR")
    if not location.is_local:
        raise ValueError(
            f"DIR {directory!r} is a URL; the demo writes to a local folder only (fuse its "
            "planes into a URL with fstack-dask fuse)"
        )
    # a plain path as typed (the messages show it so); a file: URL as the path it names; a
    # quoted ~ as resolve reads it: './~/x' was checked and written, '$HOME/x' fused over
    url = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:", directory)
    typed = Path(os.path.expanduser(directory))
    # pathlib drops the './' of './~/x': '~/x', which the fusion read as $HOME/x
    if url or resolve(str(typed), name="DIR").path != location.path:
        return Path(location.path)
    return typed


def run_demo(
    directory: str,
    *,
    size: int,
    planes: int,
    rgb: bool,
    seed: int,
    overwrite: bool,
    progress: bool,
    scheduler: Any,
) -> None:
    import numpy as np

    from .._env import check as check_environment
    from .._locations import remove_tree, resolve
    from .._outputs.png import to_uint8, write_png
    from .._runs.fuse_zarr import fuse_zarr
    from .._sources.common import import_optional
    from .._synthetic import synthetic_stack
    from .._version import __version__
    from .args import shown

    import_optional("tifffile", extra="tiff", what="the demo's TIFF planes")
    check_environment()  # (its fusion checks them too: after the planes were written)
    out_dir = _local_dir(directory)
    planes_dir, fused_path = out_dir / "planes", out_dir / "fused.ome.zarr"
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"DIR {str(out_dir)!r} exists and is not a directory")
    # Everything is checked before anything is written.
    _refuse_foreign(out_dir, _not_ours(out_dir))
    earlier = [n for n in ("planes", "fused.ome.zarr", *PREVIEWS) if os.path.lexists(out_dir / n)]
    if earlier and not overwrite:
        raise FileExistsError(
            f"DIR {str(out_dir)!r} already holds {', '.join(earlier)}; choose another DIR or "
            "pass --overwrite"
        )
    _refuse_unwritable(out_dir, earlier)
    if planes_dir.exists():
        if not planes_dir.is_dir() or not _ours(planes_dir):
            raise FileExistsError(
                f"{str(planes_dir)!r} holds files the demo did not write; refusing to delete them"
            )
    synth = synthetic_stack(
        (size, size), planes, rgb=rgb, dtype="uint8" if rgb else "uint16", seed=seed
    )
    stack = synth.stack  # (y, x, z[, c])
    out_dir.mkdir(parents=True, exist_ok=True)
    if planes_dir.exists():  # checked again right before: only the demo's own plane files
        remove_tree(
            resolve(planes_dir, name="DIR"),
            owned=lambda loc: None if _ours(Path(loc.path)) else "it holds other files",
        )
    write_planes(planes_dir, stack, rgb)
    kind = "RGB uint8" if rgb else "grey uint16"
    print(
        f"wrote {shown(f'{planes_dir}/')}: {planes} TIFF planes of {size} x {size} px "
        f"({kind}, seed {seed})"
    )

    start = time.perf_counter()
    out = fuse_zarr(
        planes_dir, fused_path, depth_map=True, selectivity_map=True, overwrite=overwrite,
        progress=progress, scheduler=scheduler,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    fused = out["0"][...]
    if rgb:
        fused = fused.transpose(1, 2, 0)  # cyx -> yxc, like the truth
    depth = out["depth"]["0"][...]  # plane numbers: TIFF planes carry no z step
    levels = len(out.attrs["ome"]["multiscales"][0]["datasets"])
    print(
        f"wrote {shown(fused_path)}: all-in-focus image "
        f"({levels} level{'s' if levels > 1 else ''}) + depth, selectivity maps "
        f"in {seconds:.2f} s",
        flush=True,
    )
    middle = planes // 2
    plane = stack[:, :, middle]
    previews = {
        "plane.png": (plane, f"middle plane (z = {middle})"),
        "fused.png": (fused, "fused all-in-focus image"),
        "depth.png": (depth, "depth map (focus position of the sharpest plane)"),
        "truth.png": (synth.all_in_focus, "ground truth all-in-focus image"),
    }
    mark = {"Software": f"fstack-dask {__version__}", "Description": PNG_MARK}
    for name, (image, what) in previews.items():
        path = out_dir / name
        if os.path.lexists(path) and not _our_png(path):  # checked again right before
            _refuse_foreign(out_dir, [name])
        write_png(path, to_uint8(image), text=mark)
        print(f"wrote {shown(out_dir / name)}: {what}", flush=True)
    peak = float(np.iinfo(stack.dtype).max)
    ok = np.isfinite(depth)
    depth_rmse = (
        float(np.sqrt(np.mean((depth[ok] - synth.depth[ok]) ** 2))) if ok.any() else math.nan
    )
    print(
        f"PSNR against the ground truth: fused {_psnr(fused, synth.all_in_focus, peak):.2f} dB, "
        f"middle plane {_psnr(plane, synth.all_in_focus, peak):.2f} dB; "
        f"depth RMSE {depth_rmse:.2f} planes",
        flush=True,
    )
