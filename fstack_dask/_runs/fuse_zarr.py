"""``fuse_zarr``: a run as its story, each step a function of its part.

open and plan (``fusion``: sources, algorithm) -> examine ``dst`` (``resume``: reads only)
-> connect to the scheduler and check the device where the tasks run -> claim and prepare
``dst`` (``_outputs.lifecycle``) -> fuse the blocks, then the pyramid (``passes``) -> finish;
or, on any failure, leave ``dst`` as the table in ``_outputs.destination`` says.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
from collections.abc import Mapping
from typing import Any

from .._errors import DestinationFullError, DestinationLockedError
from .._fp_env import with_ieee_arithmetic
from .._imports import import_through_one_ctrl_c
from .._params import DEFAULT_MEMORY_PER_TASK, Channels, check_flag
from .._public import public
from .scheduler_choice import check_scheduler

__all__ = ["DestinationFullError", "DestinationLockedError", "fuse_zarr", "is_tiff_destination"]

log = logging.getLogger("fstack_dask")


# The whole run, not only its tasks: with a host's floating-point traps unmasked, Python's own
# ``nan < x`` kills the process (SIGFPE) in the code that waits for the blocks.
@public
@with_ieee_arithmetic
def fuse_zarr(
    src: Any,
    dst: str | os.PathLike[str],
    *,
    axes: str | None = None,
    level: int = 0,
    channels: Channels = "auto",
    nhsize: int | str = 9,
    focus: Any = None,
    alpha: float = 0.2,
    sth: float | str = 13,
    depth_map: bool = False,
    selectivity_map: bool = False,
    chunks: int | tuple[int, int] | None = None,
    memory_per_task: int | str = DEFAULT_MEMORY_PER_TASK,
    levels: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    scheduler: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
    stall_timeout: float = 600.0,
    device: str = "cpu",
) -> Any:  # a zarr.Group; typed so, out["0"][:] fails type checkers (zarr: Array | Group)
    """Fuse a focus stack stored as Zarr into an OME-Zarr 0.5 all-in-focus image.

    Out of core: each task reads one y/x block of the stack with its halo straight from
    the source, fuses it (Pertuz et al. 2013, as :func:`focus_stack`) and writes its own
    region of the output, so memory is bounded by ``memory_per_task`` per worker whatever
    the image size, and the output is bit-identical to the in-memory result whatever the
    chunking and the scheduler.

    Parameters
    ----------
    src : str, os.PathLike or zarr.Array
        A Zarr v2/v3 array, or an OME-Zarr image group (NGFF 0.1-0.5; axes from its
        metadata), as a local path or an fsspec URL; or any input of docs/inputs.md's table: a
        TIFF, plane files, HDF5, an array, or a CZI, ND2 or LIF file, one of whose scenes
        (positions, images) is named after the file when it has several
        (``"slide.czi/1"``).
    dst : str or os.PathLike
        Where to write the OME-Zarr 0.5 image group (Zarr v3): a new path (its parent folder
        must exist), an empty folder, or an earlier fstack_dask output (with ``overwrite``
        or ``resume``). Array ``"0"`` is the fused image in the input's dtype with axes
        (batch..., ``c`` if any, ``y``, ``x``) and the input's y/x scale. A local path ending
        in ``.tif`` or ``.tiff`` (``.ome.tif``) writes a pyramidal OME-TIFF instead (tiled
        BigTIFF, the levels as SubIFDs, until the last fits one 512 px tile), holding
        exactly what the OME-Zarr output of the same run holds; it is assembled beside dst
        and moved into place only when complete, and only a TIFF fstack_dask wrote is ever
        replaced.
    axes : str, optional
        Axes of a plain array without dimension names (e.g. ``"zyx"``, ``"czyx"``,
        ``"tczyx"``, ``"yxz"``); must agree with stored dimension names.
    level : int, optional
        Pyramid level of an OME-Zarr or pyramidal TIFF source (0: full resolution).
    channels : {"auto", "rgb", "independent"}, optional
        See :func:`fuse`. Default ``"auto"``: RGB for colour samples, and for 3 uint8
        channels unless the format says they are separate channels (pages of an OME or
        ImageJ TIFF, a vendor file's channels, OME-Zarr ``omero`` in grey or coloured
        otherwise than red, green, blue); otherwise each channel is fused on its own.
    nhsize, focus, alpha, sth
        As in :func:`focus_stack`; ``"auto"`` for ``nhsize`` and/or ``sth`` chooses them from
        a fixed sample of tiles of the stack (the same whatever the chunking), logs the
        choice and stores it in the output's provenance.
    depth_map, selectivity_map : bool, optional
        Also write ``depth`` (position of the sharpest plane, float32, NaN where no plane
        has contrast: in the source's physical z units when it has a z scale and ``focus``
        is not given, else in ``focus`` units) and ``selectivity`` (S in dB, float32, NaN
        where undefined).
    chunks : int or (int, int), optional
        y/x block (and output chunk) size. Default: the largest whole multiple of the
        source's chunk (or shard) that fits ``memory_per_task``.
    memory_per_task : int or str, optional
        Bytes one task may hold (default 256 MiB), e.g. ``"1GiB"``; see docs/performance.md.
    levels : int, optional
        Multiscale levels besides full resolution, each 2 x 2 averaged from the one before
        (the image, and the depth and selectivity maps); default: until the image fits in
        one chunk (for a TIFF dst: in one 512 px tile); 0 for none.
    overwrite : bool, optional
        Replace an existing ``dst`` that is an fstack_dask output (the new output is written
        beside it and swapped in only once complete).
    resume : bool, optional
        Continue an interrupted run into ``dst``: only blocks not yet written are computed.
        Parameters must match, and the source must not have changed in the blocks already
        written.
    progress : bool, optional
        Show a progress bar (a line every 30 s when stderr is not a terminal).
    scheduler : optional
        ``"synchronous"``, ``"threads"``, ``"processes"``, a ``distributed.Client`` or a
        scheduler address; default: ``dask.config``'s scheduler, else the active ``Client``,
        else threads.
    storage_options, dst_storage_options : dict, optional
        fsspec options for URL ``src`` and ``dst``.
    stall_timeout : float, optional
        On a cluster, seconds without any finished block before the run fails (workers
        paused for memory, frozen or lost).
    device : {"cpu", "cuda"}, optional
        Where each block is fused: ``"cuda"`` on the CUDA GPU of each worker (``pip install
        "fstack_dask[gpu]"``; without it, or without a GPU where the tasks run, a
        ``ValueError`` naming ``device``, before anything is written). Recorded in the
        output's provenance; a run is resumed only on the same device.

    Returns
    -------
    zarr.Group
        The output group, opened read-only (for a TIFF dst: tifffile's Zarr view of its
        first image, arrays ``"0"``, ``"1"``, ... the pyramid's levels).

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError, TypeError
        For bad input or a refused destination, before anything is written.
    PermissionError
        If ``dst`` cannot be created.
    DestinationLockedError
        If another live run is writing ``dst``.
    SourceReadError, SourceValueError
        If source chunks cannot be read, or hold NaN or infinity; names the source and the
        chunk. The blocks that do not read them are still written. A ``SourceReadError``
        too where another program changed the source while the run read it.
    DestinationFullError
        If the device holding ``dst`` fills up.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of all-in-focus
       images by noise-robust selective fusion of limited depth-of-field images", IEEE
       Trans. Image Process. 22(3):1242-1251, 2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from fstack_dask import fuse_zarr, synthetic_stack, write_stack
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> stack = synthetic_stack((64, 64), 7, seed=0).stack.transpose(2, 0, 1)  # z, y, x
    >>> write_stack(tmp / "in.zarr", stack, axes="zyx")
    >>> out = fuse_zarr(tmp / "in.zarr", tmp / "out.zarr", depth_map=True, progress=False)
    >>> out["0"].shape, out["depth"]["0"].dtype == "float32"
    ((64, 64), True)
    """
    for name, value in (
        ("depth_map", depth_map), ("selectivity_map", selectivity_map),
        ("overwrite", overwrite), ("resume", resume), ("progress", progress),
    ):  # fmt: skip
        check_flag(value, name)
    stall_timeout = _positive(stall_timeout, "stall_timeout")
    for name, value in (("storage_options", storage_options),
                        ("dst_storage_options", dst_storage_options)):  # fmt: skip
        if value is not None and not isinstance(value, Mapping):  # (dict()'s error, or 0 and
            # [] taken as none: an adversarial run)
            raise TypeError(f"{name} must be a dict of fsspec options or None, got {value!r}")
    check_scheduler(scheduler)
    plan = dict(
        axes=axes, level=level, channels=channels, nhsize=nhsize, focus=focus, alpha=alpha,
        sth=sth, depth_map=depth_map, selectivity_map=selectivity_map, chunks=chunks,
        memory_per_task=memory_per_task, levels=levels, storage_options=storage_options,
        device=device,
    )  # fmt: skip
    run = dict(
        overwrite=overwrite, resume=resume, progress=progress, scheduler=scheduler,
        dst_storage_options=dst_storage_options, stall_timeout=stall_timeout,
    )  # fmt: skip
    # The engine (numba: seconds on a cold cache) is imported by the first run, through one
    # Ctrl-C: interrupted half-way it would be broken for the rest of a Jupyter kernel
    if is_tiff_destination(dst):
        tiff_output = import_through_one_ctrl_c(".tiff_output", __package__)
        return tiff_output.fuse_to_tiff(src, dst, plan=plan, **run)
    return import_through_one_ctrl_c(".run", __package__).run_fusion(src, dst, plan=plan, **run)


def is_tiff_destination(dst: Any) -> bool:
    """A dst path ending in ``.tif`` or ``.tiff`` (``.ome.tif``, ``.ome.tiff``), as resolved:
    ``fused.tif/.`` or ``fused.tif/x/..``, the place ``fused.tif`` names, was written as a Zarr
    folder named ``fused.tif``, exit 0, that no TIFF reader opens."""
    if not isinstance(dst, (str, os.PathLike)):
        return False
    name = os.fspath(dst)
    if not isinstance(name, str):
        return False
    from .._locations import resolve

    with contextlib.suppress(ValueError, TypeError, OSError):  # (refused later, as dst)
        location = resolve(name, name="dst")
        name = location.path if location.is_local else name
    return name.rstrip("/").lower().endswith((".tif", ".tiff"))


def _positive(value: Any, name: str) -> float:
    # numbers.Real: NumPy's integers and floats too (np.int64(60) was refused)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # a wrong type
        raise TypeError(f"{name} must be a positive number of seconds, got {value!r} "
                        f"({type(value).__name__})")  # fmt: skip
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # a 400-digit int
        raise ValueError(f"{name} must be a positive number of seconds, got a number beyond "
                         "float64") from None  # fmt: skip
