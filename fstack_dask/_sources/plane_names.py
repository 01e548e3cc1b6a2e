"""What the names of a stack's plane files say: which files a folder, a glob or a list names,
in which order (natural: ``plane2`` before ``plane10``), which are used, which break the
pattern most of the others share (another tool's result saved beside the planes), and which
are platform litter, never planes.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = [
    "FORMATS",
    "absolute",
    "files_used",
    "is_image",
    "is_litter",
    "list_plane_files",
    "natural_key",
    "odd_names",
    "odd_names_warning",
]

_DIGITS = re.compile(r"(\d+)")
# Files that operating systems leave in folders and that are never planes: macOS's
# AppleDouble files ("._plane1.jpg", which carry an image's extension but hold only its
# metadata) and .DS_Store, Windows' Thumbs.db and desktop.ini. Hidden files (a leading dot)
# are skipped in folders, as a glob's "*" skips them.
_LITTER = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_NAMES_SHOWN = 5  # odd file names a warning names before "and N more"


def files_used(files: Sequence[str], fmt: str, skipped: Sequence[str] = ()) -> str:
    """One line for a run's log and ``fstack-dask info``: how many plane files, in which
    order, the first and the last, and the litter skipped.

    Examples
    --------
    >>> text = files_used(["/d/p1.tif", "/d/p2.tif", "/d/p10.tif"], "tiff", ["/d/._p1.tif"])
    >>> print(text.replace("; ", ";\\n"))
    3 TIFF files, in this order: first 'p1.tif', last 'p10.tif';
    skipped 1 hidden or system file ('._p1.tif')
    """
    folders = {os.path.dirname(f) for f in files}
    where = "" if len(folders) == 1 else f" in {len(folders)} folders"
    text = (
        f"{len(files)} {fmt.upper()} files{where}, in this order: first "
        f"{os.path.basename(files[0])!r}, last {os.path.basename(files[-1])!r}"
    )
    if skipped:
        text += (
            f"; skipped {len(skipped)} hidden or system file{'s' if len(skipped) > 1 else ''} "
            f"({_some_names(skipped)})"
        )
    return text


def odd_names(files: Sequence[str]) -> list[str]:
    """The files whose names break the pattern that most of the others share.

    A name's pattern is the name with every run of digits as one placeholder
    (``pcb_001.jpg`` and ``pcb_017.jpg`` share ``pcb_#.jpg``). When more than half
    of the files share one pattern, the rest are odd: ``expected.jpg`` among
    ``pcb_001.jpg .. pcb_007.jpg``. Without such a majority (names without a common
    pattern) nothing is odd.

    Examples
    --------
    >>> odd_names(["/d/expected.jpg", "/d/pcb_1.jpg", "/d/pcb_2.jpg", "/d/pcb_10.jpg"])
    ['/d/expected.jpg']
    >>> odd_names(["/d/near.tif", "/d/middle.tif", "/d/far.tif"])
    []
    """
    patterns = [_pattern(f) for f in files]
    common, count = Counter(patterns).most_common(1)[0]
    if count == len(files) or 2 * count <= len(files):
        return []
    return [f for f, p in zip(files, patterns, strict=True) if p != common]


def _pattern(path: str) -> str:
    return _DIGITS.sub("#", os.path.basename(path).casefold())


def odd_names_warning(files: Sequence[str], odd: Sequence[str], where: str) -> str:
    regular = [f for f in files if f not in set(odd)]
    planes = ", ".join(str(files.index(f) + 1) for f in odd[:_NAMES_SHOWN])
    one = len(odd) == 1
    return (
        f"{where}: {_some_names(odd)} {'is' if one else 'are'} not named like the other "
        f"{len(regular)} files ({os.path.basename(regular[0])!r} ... "
        f"{os.path.basename(regular[-1])!r}) and {'is' if one else 'are'} fused as "
        f"plane{'' if one else 's'} {planes}{'' if len(odd) <= _NAMES_SHOWN else ', ...'} of "
        f"{len(files)}; if {'it is' if one else 'they are'} not part of the stack (another "
        f"tool's result saved beside the planes, say), move {'it' if one else 'them'} out or "
        f"select the planes with a pattern such as {_glob_for(regular)!r}"
    )


def _some_names(paths: Sequence[str]) -> str:
    names = ", ".join(repr(os.path.basename(p)) for p in paths[:_NAMES_SHOWN])
    more = len(paths) - _NAMES_SHOWN
    return names + (f" and {more} more" if more > 0 else "")


def _glob_for(files: Sequence[str]) -> str:
    """A glob matching `files` (names of one pattern): the numbers that vary become ``*``."""
    parts = [_DIGITS.split(os.path.basename(f)) for f in files]
    out = []
    for i, part in enumerate(parts[0]):
        same = all(len(p) == len(parts[0]) and p[i] == part for p in parts)
        out.append(glob.escape(part) if same or i % 2 == 0 else "*")
    return os.path.join(os.path.dirname(files[0]), "".join(out))


def is_litter(path: str) -> bool:
    name = os.path.basename(path)
    return name.startswith(".") or name.casefold() in _LITTER


FORMATS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(path: str) -> tuple[Any, ...]:
    """Sort key putting ``plane2`` before ``plane10``: digit runs compare as integers.

    Text compares case-insensitively, then the exact name breaks ties. Signs and
    decimal points are text (``z-2`` sorts after ``z-1``).

    Examples
    --------
    >>> sorted(["p10.tif", "p9.tif", "P1.tif"], key=natural_key)
    ['P1.tif', 'p9.tif', 'p10.tif']
    """
    parts = _DIGITS.split(path)
    # split() alternates text (even places) and digits (odd places), so tuples
    # compare str with str and int with int.
    return (tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), path)


def list_plane_files(spec: Any, name: str) -> tuple[list[str], str, list[str]]:
    """The plane files in stack order, how to name `spec` in messages, and the platform
    litter skipped (hidden files, Thumbs.db, ...)."""
    skipped: list[str] = []
    if isinstance(spec, (str, os.PathLike)):
        text = os.path.expanduser(os.fspath(spec))
        if os.path.isdir(text):
            where = f"folder {os.path.abspath(text)!r}"
            names = [os.path.join(text, n) for n in os.listdir(text)]
            files = [f for f in names if os.path.isfile(f) and is_image(f)]
            skipped = sorted((f for f in files if is_litter(f)), key=natural_key)
            files = [f for f in files if not is_litter(f)]
            if not files:
                raise ValueError(f"{name} {where} holds no TIFF, PNG or JPEG files")
        elif GLOB_CHARS.search(text):
            where = f"pattern {text!r}"
            files = [f for f in glob.glob(text, recursive=True) if os.path.isfile(f)]
            skipped = sorted((f for f in files if is_litter(f)), key=natural_key)
            files = [f for f in files if not is_litter(f)]
            if not files:
                raise ValueError(f"{name} {where} matches no files")
            check_images(files, f"{name} {where}")
        elif os.path.exists(text):
            raise ValueError(
                f"{name} {text!r} is a file; expected a folder, a glob pattern or a list of files"
            )
        else:
            raise FileNotFoundError(f"{name} {text!r} does not exist; expected a folder of planes")
        files = sorted((absolute(f) for f in files), key=natural_key)
        return files, where, [absolute(f) for f in skipped]
    if isinstance(spec, Sequence) and all(isinstance(f, (str, os.PathLike)) for f in spec):
        files = [absolute(os.path.expanduser(os.fspath(f))) for f in spec]
        if not files:
            raise ValueError(f"{name} is an empty list; expected at least two plane files")
        where = f"(a list of {len(files)} files)"
        for f in files:
            if os.path.isdir(f):  # (it said "does not exist": an adversarial run)
                raise ValueError(
                    f"{f!r}, listed in {name}, is a folder: a list names plane files (TIFF, "
                    f"PNG, JPEG); give a folder or a Zarr store as {name} itself"
                )
            if not os.path.isfile(f):
                raise FileNotFoundError(f"file {f!r} listed in {name} does not exist")
        check_images(files, f"{name} {where}")
        return files, where, []
    raise TypeError(
        f"{name} must be a folder, a glob pattern or a list of file paths, got "
        f"{type(spec).__name__}"
    )


def absolute(path: str) -> str:
    """``path`` made absolute as the OS reads it: its folder resolved (``link/..`` is the
    parent of the link's target, not of the link), its name kept (a plane file may be a link
    whose target's name would sort otherwise)."""
    head, name = os.path.split(path)
    return os.path.join(os.path.realpath(head or "."), name)


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in FORMATS


def check_images(files: list[str], where: str) -> None:
    for f in files:
        if not is_image(f):
            raise ValueError(
                f"file {f!r} of {where} is not a TIFF, PNG or JPEG file "
                f"(by its extension: .tif, .tiff, .png, .jpg, .jpeg)"
            )
