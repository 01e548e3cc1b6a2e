"""A TIFF's header against what its file holds: refuse a file whose tags lie.

tifffile trusts the tags (a page that says 60000 rows is read as 60000 rows, the missing ones
as zeros, with a warning at most). :func:`check_data` compares, from the tags tifffile has
parsed anyway (no pixel is decoded), each page's strips or tiles with its geometry and with
the file's size, and refuses with the file and page named; :func:`held_log` keeps
tifffile's own warnings about such a file out of the one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import threading
from collections.abc import Iterator
from typing import Any

from .common import MissingExtraError

__all__ = ["check_codec", "check_data", "held_log"]

_PHOTOMETRIC_YCBCR = 6  # JPEG-compressed colour: tifffile decodes it to RGB


_UNCOMPRESSED = 1


class _Held(logging.Filter):
    """Keeps back the records this thread logs (another thread's go out as they come)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        self.records.append(record)
        return False


@contextlib.contextmanager
def held_log() -> Iterator[None]:
    """Hold tifffile's log records while a file is opened: logged as before once the file is
    accepted, dropped when it is refused (they would print lines beside the one-line error,
    e.g. tifffile's "incorrect StripByteCounts count" for a header that `check_data` names).

    A filter on the logger, for this thread's records only: turning its ``propagate`` off and
    back, as this did, left it off for good when two threads opened TIFFs at once (every later
    tifffile warning in the process was lost), and held other threads' records.
    """
    log = logging.getLogger("tifffile")  # tifffile logs to this logger only
    held = _Held()
    log.addFilter(held)
    try:
        yield
    finally:
        log.removeFilter(held)
    for record in held.records:  # not reached when the file is refused
        log.handle(record)


def check_data(level: Any, where: str) -> None:
    """Refuse a series (level) whose pages' headers do not match the data their files hold.

    From the tags tifffile has parsed, no pixel decoded: every page read must list one strip
    or tile for each its geometry needs, none of them empty or reaching beyond the end of its
    file, and an uncompressed one exactly as long as its rows need (the last strip of a plane
    may be padded to a whole strip). tifffile only warns about these, and reads what is
    missing as zeros: an ImageLength of 60000 over 256 rows of strips became a complete
    60000-row image.

    Parameters
    ----------
    level : tifffile.TiffPageSeries
        The series, or pyramid level, to be read.
    where : str
        How messages name the file, e.g. ``"TIFF '/data/s.tif' (series 0)"``.

    Raises
    ------
    ValueError
        Naming `where`, the page and what does not match, or a compression tifffile cannot
        decode.
    MissingExtraError
        Where decoding it needs imagecodecs, which is not installed.
    """
    check_codec(level.keyframe, where)
    if level.dataoffset is not None:
        # A contiguous series is read from its first page's strips, shifted page by page:
        # those strips, and the end of the last page, are what must be in the file.
        first = level[0]
        _check_page(first, where)
        end, size = level.dataoffset + level.nbytes, first.parent.filehandle.size
        if end > size:
            raise ValueError(
                f"{where}: the header describes shape {tuple(level.shape)} stored from byte "
                f"{level.dataoffset} on, which would end at byte {end}, beyond the end of the "
                f"file ({size} bytes); the file is truncated or its header is damaged"
            )
        return
    for index, page in enumerate(level):
        if page is None:
            raise ValueError(
                f"{where}: page {index} of the series is missing from the file (or from the "
                "companion file that should hold it); refusing to read it as zeros"
            )
        _check_page(page, where)


def check_codec(page: Any, where: str) -> None:
    """Refuse a page whose compression or predictor tifffile cannot decode here, before any
    block is read: without imagecodecs an LZW TIFF failed block by block as "corrupt", exit 1,
    and ``info`` found it fine (an adversarial run, 2026-12-05)."""
    import importlib.util

    import tifffile

    needs = []
    tables = (("compression", tifffile.TIFF.DECOMPRESSORS, page.compression),
              ("predictor", tifffile.TIFF.UNPREDICTORS, page.predictor))  # fmt: skip
    for what, table, key in tables:
        try:
            codec = table[key]
            if what == "compression":
                _load(codec)
        except (KeyError, ImportError):  # (a decoder's lookup raises nothing else)
            needs.append(f"{what} {_name(key)}")
    if not needs:
        return
    if importlib.util.find_spec("imagecodecs") is None:
        raise MissingExtraError(
            f"{where} uses {' and '.join(needs)}, which needs the package 'imagecodecs', which "
            'is not installed; install it with: pip install "fstack_dask[tiff]"'
        )
    raise ValueError(f"{where} uses {' and '.join(needs)}, which tifffile cannot decode")


def _load(decode: Any) -> None:
    """Call a decoder on no data, for the module it loads at its first call: tifffile's own
    ZSTD decoder imports ``compression.zstd`` (Python 3.14's) only then, and without it and
    imagecodecs a ZSTD TIFF failed block by block (a review, 2026-12-05). An error about the
    data itself is what an empty input gives."""
    try:
        decode(b"")
    except ImportError:
        raise
    except Exception:
        pass


def _name(value: Any) -> str:
    return getattr(value, "name", None) or str(value)


def _check_page(page: Any, where: str) -> None:
    """One page's strips or tiles against its geometry and its file (see `check_data`)."""
    key = page.keyframe  # a TiffFrame's geometry is its keyframe's
    unit = "tile" if key.is_tiled else "strip"
    at = f"{where}, page {page.index}"
    expected = math.prod(key.chunked)
    offsets, counts = _ints(page.dataoffsets), _ints(page.databytecounts)
    # tifffile trims a page's lists to its geometry (a TiffFrame keeps no tags, nor trims):
    # the tags' own counts say what the file lists
    tags = getattr(page, "tags", None)
    listed = [len(offsets), len(counts)]
    for i, codes in enumerate(((273, 324), (279, 325))):  # Strip/TileOffsets, ...ByteCounts
        tag = next((tags.get(c) for c in codes if tags is not None and c in tags), None)
        listed[i] = max(listed[i], tag.count if tag is not None else 0)
    if listed != [expected, expected]:
        shape = f"{key.imagelength} x {key.imagewidth} px"
        if key.is_tiled:
            layout = f"tiles of {key.tilelength} x {key.tilewidth} px"
        else:
            layout = f"strips of {key.rowsperstrip} rows"
        raise ValueError(
            f"{at}: the header describes {shape} in {layout}, {expected} {unit}s, but the page "
            f"lists {listed[0]} {unit} offsets and {listed[1]} byte counts; the header does "
            "not match the data the file holds (a damaged file)"
        )
    # Python's C-level builtins over the tag tuples: a stack of thousands of plane files
    # pays this once per file, so no arrays are built for it
    if 0 in counts:
        raise ValueError(
            f"{at}: {unit} {counts.index(0)} of {expected} has no data (byte count 0); the "
            "file is damaged or truncated"
        )
    size = page.parent.filehandle.size
    if max(map(operator.add, offsets, counts), default=0) > size:
        k = next(k for k, (o, c) in enumerate(zip(offsets, counts, strict=True)) if o + c > size)
        raise ValueError(
            f"{at}: {unit} {k} of {expected} lies at bytes {offsets[k]} to "
            f"{offsets[k] + counts[k]}, beyond the end of the file ({size} bytes); the file is "
            "truncated or its header is damaged"
        )
    if key.compression == _UNCOMPRESSED and isinstance(key.bitspersample, int):
        if key.photometric == _PHOTOMETRIC_YCBCR:
            return  # subsampled chroma: the sizes follow other rules
        _check_uncompressed(key, counts, at, unit)


def _ints(values: Any) -> tuple[int, ...]:
    """Tag values as Python ints (tifffile gives tuples; sums of numpy ints could wrap)."""
    return values if isinstance(values, tuple) else tuple(int(v) for v in values)


def _check_uncompressed(key: Any, counts: tuple[int, ...], at: str, unit: str) -> None:
    """Uncompressed strips or tiles are exactly as long as their rows; the last strip of a
    plane may be padded to a whole strip."""
    samples = key.samplesperpixel if key.planarconfig == 1 else 1
    row = -(-key.imagewidth * samples * key.bitspersample // 8)
    if key.is_tiled:
        full = key.tiledepth * key.tilelength * -(-key.tilewidth * samples * key.bitspersample // 8)
        per_plane, last = len(counts), full
    else:
        per_plane = -(-key.imagelength // key.rowsperstrip)
        full = key.rowsperstrip * row
        last = (key.imagelength - (per_plane - 1) * key.rowsperstrip) * row
    for p in range(0, len(counts), per_plane):  # once per plane (and sample plane)
        inner, end = counts[p : p + per_plane - 1], counts[p + per_plane - 1]
        if inner.count(full) == len(inner) and last <= end <= full:
            continue
        k = next((p + i for i, c in enumerate(inner) if c != full), p + per_plane - 1)
        need = full if k < p + per_plane - 1 else last
        what = (
            f"a {key.tilelength} x {key.tilewidth} px tile"
            if key.is_tiled
            else f"its {need // row} row(s) of {key.imagewidth} px"
        )
        raise ValueError(
            f"{at}: uncompressed {unit} {k} of {len(counts)} holds {counts[k]} bytes, but "
            f"{what} of {key.dtype} need {need}; the header does not match the data the file "
            "holds (a damaged file)"
        )
