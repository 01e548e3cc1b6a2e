"""The one result every input reader returns: an array-like stack and what is known about it.

The readers (`tiff`, `images`, `hdf5`, `arrays`) differ in
where the data comes from; the pipeline only ever sees an `OpenedStack`, so it can
plan blocks, fingerprint files for resume and write OME-NGFF metadata the same way
for every input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._params import parse_axes

__all__ = ["OpenedStack"]


@dataclass(frozen=True)
class OpenedStack:
    """An opened input focus stack, read lazily.

    Attributes
    ----------
    array : array-like
        Has ``shape``, ``dtype``, ``ndim``, ``chunks`` (a tuple of ints: the
        regular chunk, or read unit, shape: what one efficient read covers)
        and ``__getitem__(tuple of slices) -> numpy.ndarray``. Reads are
        thread-safe; the readers' arrays also pickle (file-backed ones reopen
        their files in the receiving process).
    axes : str
        One lower-case letter per dimension: ``z`` focus, ``y``, ``x``, ``c``
        channels or RGB samples, ``t`` time, any other letter a batch axis.
    kind : str
        What was opened, e.g. ``"ome-tiff"``, ``"imagej-tiff"``, ``"tiff"``,
        ``"tiff files"``, ``"png files"``, ``"jpeg files"``, ``"hdf5"``,
        ``"numpy"``, ``"dask"``, ``"xarray"``.
    scale : dict of str to float
        Physical pixel size per axis letter (only what the input states).
    units : dict of str to str
        OME-NGFF unit name (``"micrometer"``, ``"nanometer"``, ``"second"``,
        ...) per axis letter.
    translation : dict of str to float
        Physical position of the first element per axis letter.
    channel_names : tuple of str or None
        One name per channel when the input names them.
    channel_colors : tuple of str or None
        One ``"RRGGBB"`` colour per channel when the input states them.
    rgb : bool
        The format stores colour samples (photometric RGB, colour JPEG/PNG);
        the ``c`` axis then holds R, G, B in that order.
    separate_channels : bool
        The format says its ``c`` axis holds separate channels (fluorescence: channels in
        their own pages or planes where the format has a way to store colour samples, or
        metadata that names or colours them otherwise): ``channels="auto"`` then fuses them
        independently even when there are 3 of uint8.
    files : tuple of str
        Absolute paths of the files the data is read from (for resume
        fingerprints); empty for in-memory arrays.
    description : str
        A short phrase for messages, e.g. ``"OME-TIFF '/data/s.ome.tif' (series 0)"``.
    notes : tuple of str
        What a run's log and ``fstack-dask info`` say about how the input was read (the
        plane files used, the files skipped).
    warnings : tuple of str
        What may make the result other than the user meant (a file not named like the
        other planes, an alpha channel dropped): the run warns with each, once, where it
        is planned.
    """

    array: Any
    axes: str
    kind: str
    scale: dict[str, float]
    units: dict[str, str]
    translation: dict[str, float]
    channel_names: tuple[str, ...] | None
    channel_colors: tuple[str, ...] | None
    rgb: bool
    files: tuple[str, ...]
    description: str
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    separate_channels: bool = False

    def __post_init__(self) -> None:
        # A reader bug should fail here, not as a wrong picture in the output.
        ndim = len(self.array.shape)
        if parse_axes(self.axes, ndim) != self.axes:
            raise ValueError(f"axes {self.axes!r} must be lower case")
        if len(tuple(self.array.chunks)) != ndim:
            raise ValueError(f"chunks {self.array.chunks!r} do not match {ndim} dimensions")
        for name in ("scale", "units", "translation"):
            extra = set(getattr(self, name)) - set(self.axes)
            if extra:
                raise ValueError(f"{name} names axes {sorted(extra)} not in {self.axes!r}")
        if "c" in self.axes:
            n_channels = self.array.shape[self.axes.index("c")]
            for name in ("channel_names", "channel_colors"):
                value = getattr(self, name)
                if value is not None and len(value) != n_channels:
                    raise ValueError(f"{name} has {len(value)} entries for {n_channels} channels")
        if self.rgb and "c" not in self.axes:
            raise ValueError("rgb=True needs a 'c' axis holding the colour samples")
        if self.separate_channels and (self.rgb or "c" not in self.axes):
            raise ValueError("separate_channels=True needs a 'c' axis of channels, not colour")
