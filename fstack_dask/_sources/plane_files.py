"""Which files a folder, a glob or a list names as a stack's planes: the image files listed,
platform litter skipped, a folder this user may not list said so, one name spelled two ways
refused, and names that count several stacks refused (the names' order and patterns are
``plane_names``'s).
"""

from __future__ import annotations

import glob
import os
import stat
import unicodedata
from collections.abc import Sequence
from typing import Any

from .plane_names import (
    FORMATS,
    GLOB_CHARS,
    is_litter,
    reading_p_as_point,
    refuse_unsure_commas,
    sort_planes,
)
from .plane_stacks import points_read

__all__ = ["absolute", "check_images", "is_image", "list_plane_files"]


def _refuse_unlisted(pattern: str, what: str) -> None:
    """Say so when a pattern matches nothing because this user may not list its folder (a
    folder of x without r: it said "matches no files", a twentieth adversarial run)."""
    folder = os.path.dirname(pattern[: GLOB_CHARS.search(pattern).start()]) or "."
    if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
        from .._locations import permission_missing

        raise PermissionError(
            f"{what} matches no files: this user {permission_missing(folder)}, so its files "
            "cannot be listed"
        )


def list_plane_files(spec: Any, name: str) -> tuple[list[str], str, list[str], frozenset[str]]:
    """The plane files in stack order, how to name `spec` in messages, the platform litter
    skipped (hidden files, Thumbs.db, ...) and the files whose names write a decimal point
    as a "p" (``z1p5.tif``: read so within `reading_p_as_point`)."""
    skipped: list[str] = []
    if isinstance(spec, (str, os.PathLike)):
        text = os.path.expanduser(os.fspath(spec))
        if os.path.isdir(text):
            where = f"folder {os.path.abspath(text)!r}"
            names = [os.path.join(text, n) for n in os.listdir(text)]
            _refuse_dangling(names, f"{name} {where}")
            files = [f for f in names if os.path.isfile(f) and is_image(f)]
            skipped = sort_planes([f for f in files if is_litter(f)])
            files = [f for f in files if not is_litter(f)]
            if not files:
                raise ValueError(f"{name} {where} holds no TIFF, PNG or JPEG files")
        elif GLOB_CHARS.search(text):
            where = f"pattern {text!r}"
            names = glob.glob(_literal_folder(text), recursive=True)
            _refuse_dangling(names, f"{name} {where}")
            files = [f for f in names if os.path.isfile(f)]
            skipped = sort_planes([f for f in files if is_litter(f)])
            files = [f for f in files if not is_litter(f)]
            if not files:
                _refuse_unlisted(text, f"{name} {where}")
                raise ValueError(f"{name} {where} matches no files")
            check_images(files, f"{name} {where}")
        elif os.path.exists(text):
            raise ValueError(
                f"{name} {text!r} is a file; expected a folder, a glob pattern or a list of files"
            )
        else:
            raise FileNotFoundError(f"{name} {text!r} does not exist; expected a folder of planes")
        files = sort_planes(files)
        _one_file(files, files, f"{name} {where}")  # as given: a linked folder shows apart
        files = sort_planes([absolute(f) for f in files])
        _one_spelling(files, f"{name} {where}")
        refuse_unsure_commas(files, f"{name} {where}")
        points = points_read(files, f"{name} {where}")
        if points:  # (sorted again only then: 10 000 planes took 1.7 times as long)
            with reading_p_as_point(points):
                files = sort_planes(files)
        return files, where, [absolute(f) for f in skipped], points
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
        _one_file(files, [os.fspath(f) for f in spec], f"{name} {where}")
        return files, where, [], frozenset()
    raise TypeError(
        f"{name} must be a folder, a glob pattern or a list of file paths, got "
        f"{type(spec).__name__}"
    )


def _literal_folder(pattern: str) -> str:
    """`pattern` with the folder it lies in escaped where that folder exists as spelled:
    '/data/exp[1]/*.tif' read the planes of '/data/exp1' (the class [1]), exit 0, or said
    "matches no files". The folder a user names is the one they mean."""
    head = os.path.dirname(pattern)
    while head and GLOB_CHARS.search(head):
        if os.path.isdir(head):
            return glob.escape(head) + pattern[len(head) :]
        head = os.path.dirname(head)
    return pattern


def _refuse_dangling(names: Sequence[str], where: str) -> None:
    """Refuse a plane file that is a link to nothing (a share not mounted, a folder moved):
    it was left out as "not a file", the stack fused without its plane, exit 0; and
    a plane's name that is no file (a folder, a FIFO, a socket: a copy gone wrong), left out
    in silence alike. Only stat is asked: opening a FIFO would block."""
    for f in names:
        if not is_image(f) or is_litter(f):
            continue
        if os.path.islink(f) and not os.path.exists(f):
            raise FileNotFoundError(
                f"{where}: {os.path.basename(f)!r} is a link to {os.readlink(f)!r}, which does "
                "not exist, so its plane would be left out; restore what it links to (a share "
                "not mounted?) or remove the link"
            )
        kind = _not_a_file(f)
        if kind:
            raise ValueError(
                f"{where}: {os.path.basename(f)!r} is {kind}, not a file, so its plane would be "
                "left out; copy the plane there again as a file, or move it out"
            )


def _not_a_file(path: str) -> str | None:
    """What `path` is where it exists and is no regular file: 'a folder', 'a FIFO', ..."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # gone since listed, or unreadable: said where it is opened
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device")]  # fmt: skip
    return next((word for test, word in kinds if test(mode)), None)


def _one_spelling(files: Sequence[str], where: str) -> None:
    """Refuse two files whose names read the same (NFC) but are spelled apart (a precomposed
    "\u00e9" and "e" with a combining accent, as macOS saves it): Linux keeps both, and both
    were fused, one plane twice (an adversarial review, 2026-12-06)."""
    seen: dict[tuple[str, str], str] = {}
    for f in files:  # in one folder: two folders' names are shown whole elsewhere
        key = (os.path.dirname(f), unicodedata.normalize("NFC", os.path.basename(f)))
        if key in seen:
            raise ValueError(
                f"{where}: {ascii(os.path.basename(seen[key]))} and "
                f"{ascii(os.path.basename(f))} are one name spelled two ways (Unicode composed "
                "and decomposed accents: they look the same), so one plane would be fused "
                "twice; remove one of them, or pass the files as a list"
            )
        seen[key] = f


def _one_file(files: Sequence[str], given: Sequence[str], where: str) -> None:
    """Refuse one file named twice: a symbolic or hard link beside its target, one name in
    two spellings (``a/z1.tif`` and ``a/./z1.tif`` in a list, ``z05.tif`` and ``z05.TIF`` on
    a case-insensitive mount), a glob's ``**`` through a linked folder. Each was fused as
    two planes, the focus fit seeing one plane repeated, exit 0 (an adversarial run on
    names, 2026-12-06). `given`: the names as the user wrote them, shown in the message."""
    from .._locations.location import _one_entry

    seen: dict[Any, int] = {}
    for k, f in enumerate(files):
        st = os.stat(f)
        # exFAT or FAT through FUSE gives each spelling of a name its own inode
        spelled = (os.path.dirname(f), os.path.basename(f).casefold())
        twin = seen.get(spelled)
        if twin is not None and not _one_entry(files[twin], f):
            twin = None
        # size and time too: a file system that numbers its files alike is no cause to refuse
        inode = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        twin = seen.get(inode) if twin is None and st.st_ino else twin
        seen.update({inode: k, spelled: k})
        if twin is not None:
            a, b = (given[i] for i in (twin, k))
            if given is files and len({os.path.dirname(g) for g in given}) == 1:
                a, b = os.path.basename(a), os.path.basename(b)
            raise ValueError(
                f"{where}: {a!r} and {b!r} are one file (a link, or one file named two ways), "
                "so one plane would be fused twice; remove the link or the second name"
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
