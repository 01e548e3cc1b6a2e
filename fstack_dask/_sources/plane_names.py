"""What the names of a stack's plane files say: their order (natural: ``plane2`` before
``plane10``, ``z0.5um`` before ``z1um``, ``z-3`` before ``z0``, a focus number labelled ``z``
first), which are used, which break the pattern most of the others share (another tool's
result saved beside the planes) and which are platform litter, never planes. Which files
are listed is ``plane_files``'s; whether they count one stack, ``plane_stacks``'s.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from typing import Any

__all__ = [
    "FORMATS",
    "files_used",
    "is_litter",
    "natural_key",
    "odd_names",
    "odd_names_warning",
    "minus_signs",
    "order_warning",
    "p_between_digits",
    "reading_p_as_point",
    "refuse_unsure_commas",
    "sort_planes",
]

_DIGITS = re.compile(r"(\d+)")
# A number in a plane file's name: digits, a decimal fraction (focus positions written with
# %g: "z0.5um", "z1um") and a sign ("z-3"). The sign counts only at a place where the names
# hold signed and unsigned forms (or both signs): a "-" in every name is a separator
# ("stack-001", "2024-05-01").
# An exponent as C's %g and Python's str() write one, signed, of two digits or three
# ("z_5e-07.tif", "z_1.5e-06.tif": positions in metres): "5e-07" was 5, "e", -7, so the
# planes were fused out of order, "z_0.0.tif" warned about as odd.
_NUMBER = re.compile(r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]\d{2,3}(?!\d))?)")
# A decimal comma ("z1,5um", "z_-0,25um": %g in a European locale) is a decimal point, in a
# name without a decimal point and without a list of numbers ("tile_1,2,3"): "z1,5" was two
# numbers, 1 and 5, so z1,5 sorted before z1 and z1,25 before z1,5, exit 0.
_NUMBER_COMMA = re.compile(r"([-+]?\d+(?:[.,]\d+)?(?:[eE][-+]\d{2,3}(?!\d))?)")
_COMMA_UNSURE = re.compile(r"\d\.\d|\d,\d+,\d")
_DOTTED = re.compile(r"\d+(?:\.\d+){2,}")  # a date, a version ("01.05.2024"): no decimal
# Signs as some software writes them: a Unicode minus or a dash ("z\u22121", "z\u20131": a
# word processor's, a locale's), and "m" and "p" ("focus_m2" ... "focus_0" ... "focus_p2") at
# the start of a name, after a separator or after a "z"/"focus" label. Read as "-" and "+",
# which sort_planes takes for signs only where they differ at a place (a Zeiss "_m1" tile
# in every name is text still); "z1p5" (p after a digit) is no sign. They were two stacks,
# refused, or the minus planes fused after the plus ones.
_DASH_SIGN = re.compile(r"[\u2212\u2012\u2013\ufe63\uff0d](?=\d)")
_LETTER_SIGN = re.compile(r"(?:^|(?<=[^a-z0-9])|(?<=(?<![a-z])z)|(?<=focus))([mp])(?=\d)", re.I)
# ... after a word and a dash, the dash a separator that "cell-0" reads as its number's sign:
# "cell-m1" read "cell-", -1 beside "cell", -0, named unlike it, so cell-0 was warned about
# as odd and as a plane missing, where it was fused. Read "cell", -1, as "cell-0" is.
_DASH_LETTER_SIGN = re.compile(r"(?<=[a-z])-([mp])(?=\d)", re.I)
# ... and the words, after a "z" or "focus" label: "focus_minus2" ... "focus_plus2" was
# refused as two stacks with a glob of half the planes.
_WORD_SIGN = re.compile(r"(?<![a-z])((?:z|focus)[_-]?)(minus|plus)(?=\d)", re.I)
# A "p" between digits as a decimal point ("z1p5" for z1.5, as names that may hold no "."
# write it), in the files `reading_p_as_point` names: a folder's names decide
# (`plane_stacks.points_read`), as "p" is text elsewhere ("pos1p1" ... "pos1p10").
_POINT_P = re.compile(r"(?<=\d)[pP](?=\d)")
# Where a "p" between digits may be a decimal point: after a z or focus label (``z1p5``,
# ``focus_-0p5``) or before a unit (``1p5um``). Elsewhere it joins two counts (``cell1p0`` ...
# ``cell2p9``, a cell and a plane: evenly spaced as decimals, fused as one stack).
_POINT_PLACE = re.compile(
    r"(?:(?:^|[^a-z])(?:z|focus)[_-]?(?:[+\-\u2212\u2012\u2013\ufe63\uff0dmp]|minus|plus)?\d+p\d)"
    r"|(?:\dp\d+(?:um|\u03bcm|nm|mm)(?![a-z]))"
)
_READ_POINT: ContextVar[frozenset[str]] = ContextVar("_READ_POINT", default=frozenset())
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

    A name's pattern is the name with every number (its sign and decimals included) as
    one placeholder (``pcb_001.jpg`` and ``pcb_017.jpg`` share ``pcb_#.jpg``, ``z-3.tif``
    and ``z0.5.tif`` share ``z#.tif``). When more than half
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


def _pattern(path: str, *, one_format: bool = False) -> str:
    """`one_format`: ``.tiff`` as ``.tif``, ``.jpeg`` as ``.jpg`` (z05.tiff beside z05.tif
    was fused as a further plane, with only the warning about a name unlike the others);
    a warning still names a file spelled apart."""
    pattern = "#".join(_parts(path)[0::2]).casefold()
    stem, ext = os.path.splitext(pattern)
    return stem + _ONE_EXTENSION.get(ext, ext) if one_format else pattern


_ONE_EXTENSION = {".tiff": ".tif", ".jpeg": ".jpg"}


def _parts(path: str, *, as_read: bool = True) -> list[str]:
    """The file name split into text, number, text, ..., text; the extension's dot is text.

    The name as it reads (NFC): "café" spelled with a combining accent (as macOS saves names)
    among names spelled with "é" was ordered apart from them, and warned about as named
    unlike them, in a message showing the same name (an adversarial run on names,
    2026-12-06). ``as_read=False``: as spelled on disk, which a glob matches (a decimal
    comma kept: as read, it is a decimal point)."""
    name = os.path.basename(path)
    if as_read:
        name = unicodedata.normalize("NFC", name)
        name = _DASH_SIGN.sub("-", name)
        name = _WORD_SIGN.sub(lambda m: m.group(1) + ("-" if m.group(2)[0] in "mM" else "+"), name)
        sign = lambda m: "-" if m.group(1) in "mM" else "+"  # noqa: E731
        name = _LETTER_SIGN.sub(sign, _DASH_LETTER_SIGN.sub(sign, name))
    stem, ext = os.path.splitext(name)
    if ext.lower() not in FORMATS:  # "z1.5" is a decimal, not a name and an extension
        stem, ext = name, ""
    point = path in _READ_POINT.get()
    if "," not in stem or _COMMA_UNSURE.search(_DOTTED.sub("", stem)):
        parts = (_NUMBER_P if point else _NUMBER).split(stem)
    else:
        parts = (_NUMBER_COMMA_P if point else _NUMBER_COMMA).split(stem)
        if as_read:  # compared as a number; a glob keeps its spelling
            parts[1::2] = [n.replace(",", ".") for n in parts[1::2]]
    if point and as_read:
        parts[1::2] = [_p_as_point(n) for n in parts[1::2]]
    parts[-1] += ext
    return parts


_NUMBER_P = re.compile(_NUMBER.pattern.replace(r"(?:\.\d+)", r"(?:[.pP]\d+)"))
_NUMBER_COMMA_P = re.compile(_NUMBER_COMMA.pattern.replace("[.,]", "[.,pP]"))


def _p_as_point(number: str) -> str:
    """``1p5`` as ``1.5``, its fraction's trailing zeros dropped (``1p50`` is 1.5, ``1p0`` is
    1: one position, so two files naming it are numbered alike, not ordered by a guess)."""
    if "p" not in number.lower():
        return number
    whole, _, fraction = number.lower().partition("p")
    digits, exponent = re.fullmatch(r"(\d*)(.*)", fraction).groups()
    digits = digits.rstrip("0")
    return whole + ("." + digits if digits else "") + exponent


def p_between_digits(files: Sequence[str]) -> list[str]:
    """The files whose names write a "p" between digits where it may be a decimal point
    (``z1p5.tif``, ``1p5um.tif``: `_POINT_PLACE`)."""
    stems = ((f, os.path.splitext(os.path.basename(f))[0].casefold()) for f in files)
    return [f for f, stem in stems if _POINT_PLACE.search(stem)]


@contextmanager
def reading_p_as_point(files: Collection[str]) -> Iterator[None]:
    """Within it, a "p" between digits in the names of `files` is a decimal point."""
    token = _READ_POINT.set(frozenset(files))
    try:
        yield
    finally:
        _READ_POINT.reset(token)


def _sign(number: str) -> str:
    return number[0] if number[0] in "+-" else ""


def odd_names_warning(files: Sequence[str], odd: Sequence[str], where: str) -> str:
    odd_set = set(odd)  # once: built per file, 20 000 planes with 9000 odd took 15 s
    regular = [f for f in files if f not in odd_set]
    pattern = _glob_leaving_out(regular, odd)
    planes = ", ".join(str(files.index(f) + 1) for f in odd[:_NAMES_SHOWN])
    one = len(odd) == 1
    return (
        f"{where}: {_some_names(odd)} {'is' if one else 'are'} not named like the other "
        f"{len(regular)} files ({os.path.basename(regular[0])!r} ... "
        f"{os.path.basename(regular[-1])!r}) and {'is' if one else 'are'} fused as "
        f"plane{'' if one else 's'} {planes}{'' if len(odd) <= _NAMES_SHOWN else ', ...'} of "
        f"{len(files)}; if {'it is' if one else 'they are'} not part of the stack (another "
        f"tool's result saved beside the planes, say), move {'it' if one else 'them'} out"
        + (f" or select the planes with a pattern such as {pattern!r}" if pattern else "")
    )


def _glob_leaving_out(regular: Sequence[str], odd: Sequence[str]) -> str | None:
    """A glob matching the `regular` files and none of the `odd` ones, if there is one:
    ``z*.tif`` for z01 ... z21 matched 'z21_copy.tif' too, the suggestion of a warning about
    it (a review of real naming schemes, 2026-12-06); ``z[0-9][0-9].tif`` does not."""
    for exact in (False, True):
        pattern = _glob_for(regular, exact=exact)
        if pattern and not any(fnmatch.fnmatchcase(f, pattern) for f in odd):
            return pattern
    return None


def _some_names(paths: Sequence[str]) -> str:
    names = ", ".join(repr(os.path.basename(p)) for p in paths[:_NAMES_SHOWN])
    more = len(paths) - _NAMES_SHOWN
    return names + (f" and {more} more" if more > 0 else "")


def _glob_for(files: Sequence[str], *, exact: bool = False) -> str:
    """A glob matching `files` (names of one pattern): the numbers that vary become ``*``
    (their sign too, where it varies: ``z*.tif`` for ``z-1.tif``, ``z0.tif``, ``z1.tif``);
    `exact`: ``[0-9]`` per digit where they are written alike but for their digits, else
    ``""`` (no glob)."""
    # as spelled: a glob matches bytes, and a name spelled composed (NFC) matched none of
    # the planes macOS named decomposed (a review, 2026-12-06)
    parts = [_parts(f, as_read=False) for f in files]
    out = []
    for i, part in enumerate(parts[0]):
        column = [p[i] if len(p) == len(parts[0]) else "" for p in parts]
        if i % 2 == 0 and len(set(column)) > 1:  # one text spelled two ways: either
            out.append(_either(column))
        elif i % 2 == 0 or len(set(column)) == 1:
            out.append(glob.escape(part))
        elif exact:
            shapes = {re.sub(r"\d", "#", c) for c in column}
            if len(shapes) > 1:
                return ""
            out.append("".join("[0-9]" if ch == "#" else glob.escape(ch) for ch in shapes.pop()))
        else:
            signs = {_sign(c) for c in column}
            out.append(f"{signs.pop()}*" if len(signs) == 1 else "*")
    return os.path.join(os.path.dirname(files[0]), "".join(out))


def _either(texts: Sequence[str]) -> str:
    """A glob matching each of ``texts`` (one text spelled apart: case, accents): what they
    share at either end around a ``*``. A bare ``*`` (``**.tif`` for 'plane_1.tif' ...
    'Plane_10.tif') matched the odd file the warning is about as well."""
    head = os.path.commonprefix(list(texts))
    tail = os.path.commonprefix([t[len(head) :][::-1] for t in texts])[::-1]
    return glob.escape(head) + "*" + glob.escape(tail)


def is_litter(path: str) -> bool:
    name = os.path.basename(path)
    return name.startswith(".") or name.casefold() in _LITTER


FORMATS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(
    path: str, signed: Collection[int] = (), grouped: Collection[int] = ()
) -> tuple[Any, ...]:
    """Sort key putting ``plane2`` before ``plane10``: numbers compare as numbers.

    In the file name, digits with a decimal fraction are one number (``z0.5um`` before
    ``z1um``, ``z1,5um`` too; the extension's dot is not a decimal point), and a ``-`` or
    ``+`` before the number at each place in `signed` (0: the name's first number) is its
    sign; elsewhere a sign is text (``stack-2`` before ``stack-10``); at each place in
    `grouped` a comma separates thousands (``z1,000`` after ``z999``). `sort_planes` finds
    the signed and grouped places of a folder's names. Text compares case-insensitively,
    then the exact name breaks ties.

    Examples
    --------
    >>> sorted(["p10.tif", "p9.tif", "P1.tif", "p1.5.tif"], key=natural_key)
    ['P1.tif', 'p1.5.tif', 'p9.tif', 'p10.tif']
    >>> sorted(["z1.tif", "z-2.tif", "z0.tif"], key=lambda f: natural_key(f, signed={0}))
    ['z-2.tif', 'z0.tif', 'z1.tif']
    """
    # split() alternates text (even places) and numbers (odd places), so tuples
    # compare str with str and numbers with numbers.
    folder = _DIGITS.split(os.path.dirname(path))
    key: list[Any] = [int(p) if i % 2 else p.casefold() for i, p in enumerate(folder)]
    parts = _parts(path)
    name: list[Any] = [parts[0].casefold()]
    for place, (number, text) in enumerate(zip(parts[1::2], parts[2::2], strict=True)):
        sign = _sign(number)
        digits = number[len(sign) :]
        if place in grouped:  # (read as a decimal comma, made a point, by _parts)
            digits = digits.replace(".", "")
        value = int(digits) if digits.isdigit() else Decimal(digits)  # (a fraction, exponent)
        if place in signed:
            value = -value if sign == "-" else value
        else:
            name[-1] += sign  # a separator, compared as text
        name += [value, text.casefold()]
    return (tuple(key), tuple(name), path)


def sort_planes(files: Sequence[str]) -> list[str]:
    """`files` in `natural_key` order, a sign read as one where the names that share a
    pattern hold signed and unsigned numbers at that place (``z-3`` ... ``z0`` ... ``z3``),
    in a folder by the number labelled ``z`` or ``focus`` first (`_focus_places`).

    Examples
    --------
    >>> sort_planes(["z1.tif", "z-2.tif", "z0.tif", "z-1.tif"])
    ['z-2.tif', 'z-1.tif', 'z0.tif', 'z1.tif']
    >>> sort_planes(["stack-10.tif", "stack-9.tif"])  # a "-" in every name: a separator
    ['stack-9.tif', 'stack-10.tif']
    >>> sort_planes(["x1200_z0.tif", "x1197_z0.5.tif"])  # stage coordinates: by z
    ['x1200_z0.tif', 'x1197_z0.5.tif']
    """
    numbers: dict[tuple[str, int], list[str]] = {}
    before: dict[tuple[str, int], str] = {}  # the text before them
    for f in files:
        parts, pattern = _parts(f), _pattern(f)  # (once a file, not once a place)
        for place, number in enumerate(parts[1::2]):
            numbers.setdefault((pattern, place), []).append(number)
            before[pattern, place] = parts[2 * place]
    signed: dict[str, set[int]] = {}
    for (pattern, place), found in numbers.items():
        if len({_sign(n) for n in found}) > 1 or minus_signs(before[pattern, place], found):
            signed.setdefault(pattern, set()).add(place)
    focus = _focus_places(files)
    grouped, _ = _comma_places(files)

    def key(f: str) -> tuple[Any, ...]:
        natural = natural_key(f, signed.get(_pattern(f), ()), grouped.get(_pattern(f), ()))
        place = focus.get(f)
        # in its folder, by the focus number before the rest; a file without one (a stray
        # file, named in a warning) after them
        rank = (1,) if place is None else (0, natural[1][2 * place + 1])
        return (natural[0], rank, *natural)

    return sorted(files, key=key)


def minus_signs(before: str, numbers: Collection[str]) -> bool:
    """Whether a "-" before every one of `numbers` (a place of names of one pattern) is a minus
    sign: right after a ``z`` or ``focus`` label (`before`: the text before them), the numbers
    neither zero-padded nor 0 (``z-01`` ..., ``z-0``, ``z-1`` ...: a separator before a count)
    and the label not after a "-" (``img-z-1``: the name's separator). ``z-3``, ``z-2``, ``z-1``
    were read with a separator, backwards."""
    label = _FOCUS_LABEL.search(before.casefold())
    if not label or "-" in label.group() or not all(n[:1] == "-" for n in numbers):
        return False
    wholes = [re.match(r"-(\d*)", n).group(1) for n in numbers]
    return not any(w.startswith("0") and (len(w) > 1 or not _plain(n).strip("-0.")) for w, n in
                   zip(wholes, numbers, strict=True))  # fmt: skip


_THOUSANDS = re.compile(r"[-+]?[1-9]\d{0,2},\d{3}")  # "1,000": 1000, or 1.000?


def _comma_places(
    files: Sequence[str],
) -> tuple[dict[str, set[int]], tuple[str, str, str] | None]:
    """The places of each pattern where a comma separates thousands, and two files whose
        order is a guess (and which holds the comma). A comma is a decimal comma (``z1,5``),
        but where every number written with one at a place could group thousands (``1,000``:
        one to three digits, a comma, three) and numbers written without one stand beside them,
        the two readings may order the files apart: ``z999``, ``z1,000`` was fused 1.000 first
    . Thousands, where a number so written ends in 0 (a decimal written so, with the
        bare numbers beside it unpadded, would not) and the bare ones are below 1000; else,
        where the orders differ, a guess."""
    places: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for f in files:
        for place, number in enumerate(_parts(f, as_read=False)[1::2]):
            places.setdefault((_pattern(f), place), []).append((number, f))
    grouped: dict[str, set[int]] = {}
    for (pattern, place), found in places.items():
        comma = [n for n, _ in found if "," in n]
        bare = [n for n, _ in found if not re.search(r"[,.eEpP]", n)]
        if not comma or not bare or len(bare) + len(comma) < len(found):
            continue
        if not all(_THOUSANDS.fullmatch(n) for n in comma):
            continue  # "0,5", "1,25": a decimal comma
        as_decimal = sorted(found, key=lambda nf: Decimal(nf[0].replace(",", ".")))
        as_grouped = sorted(found, key=lambda nf: int(nf[0].replace(",", "")))
        if as_decimal == as_grouped:
            continue
        if any(n.endswith("0") for n in comma) and all(abs(int(n)) < 1000 for n in bare):
            grouped.setdefault(pattern, set()).add(place)
            continue
        k = min(as_grouped.index(nf) for nf in found if "," in nf[0])
        j = k - 1 if k else k + 1  # a neighbour in the thousands' order
        return grouped, (as_grouped[min(j, k)][1], as_grouped[max(j, k)][1], as_grouped[k][1])
    return grouped, None


def refuse_unsure_commas(files: Sequence[str], where: str) -> None:
    """Refuse names whose order depends on whether a comma separates thousands or is a
    decimal comma (`_comma_places`), naming two files."""
    _, unsure = _comma_places(files)
    if unsure:
        a, b, comma = (os.path.basename(f) for f in unsure)
        raise ValueError(
            f"{where}: {a!r} comes before {b!r} if the comma in {comma!r} separates thousands, "
            "and after it if it is a decimal comma, so the planes' order is a guess; rename them "
            "without the thousands separator (or with a decimal point), or pass the files as a "
            "list in focus order"
        )


# The text before a number that names it a focus position: "z", "_Z", "xy001z", "focus_".
_FOCUS_LABEL = re.compile(r"(?:^|[^a-z])(?:z|focus)[_-]?$")


def _focus_places(files: Sequence[str]) -> dict[str, int]:
    """Each file's place of the number labelled as its focus position (``z``, ``focus``),
    in folders where every file has one that numbers its pattern's files apart and some
    names hold other numbers. Names whose stage coordinates change per plane
    (``x1182_y3400_z3.tif``, ``x1179_y3400_z3.5.tif``) were ordered by x before z, in
    silence: backwards where the stage drifts down (a review of real naming schemes,
    2026-12-06); so they were still beside one stray file without a z (``overview.tif``)."""
    members: dict[tuple[str, str], list[str]] = {}
    for f in files:
        members.setdefault((os.path.dirname(f), _pattern(f)), []).append(f)
    places: dict[str, int] = {}
    others: set[str] = set()  # folders whose names hold numbers besides the focus position
    for (folder, _), names in members.items():
        parts = [_parts(f) for f in names]
        labelled = [
            i // 2
            for i in range(1, len(parts[0]), 2)
            if _FOCUS_LABEL.search(parts[0][i - 1].casefold())
            and len({_plain(p[i]) for p in parts}) == len(names)
        ]
        if labelled:
            places.update(dict.fromkeys(names, labelled[-1]))
            others.update([folder] if len(parts[0]) > 3 else [])
    return {f: place for f, place in places.items() if os.path.dirname(f) in others}


def order_warning(files: Sequence[str], where: str) -> str | None:
    """A warning where the names' decimal numbers might not be decimals: digits after the
    dot that count on (``x1.9``, ``x1.10``: sections, versions) give another order. Said
    only where a fraction ends in 0 (``%g`` never writes one) and the two orders differ."""
    places: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for f in files:
        for place, number in enumerate(_parts(f)[1::2]):
            places.setdefault((_pattern(f), place), []).append((number.lstrip("+-"), f))
    for found in places.values():
        exponent = any("e" in n.lower() for n, _ in found)  # %g's: a decimal, surely
        if exponent or not any("." in n and n.endswith("0") for n, _ in found):
            continue
        found.sort(key=lambda nf: Decimal(nf[0]))
        counted = [tuple(int(d) for d in n.split(".")) for n, _ in found]
        for k in range(len(found) - 1):
            if counted[k] > counted[k + 1]:
                (a, first), (b, then) = found[k], found[k + 1]
                if "," in os.path.basename(first):  # as the names write it (a decimal comma)
                    a, b = a.replace(".", ","), b.replace(".", ",")
                mark = "comma" if "," in a else "dot"
                return (
                    f"{where}: {os.path.basename(first)!r} is ordered before "
                    f"{os.path.basename(then)!r}, reading {a} and {b} as decimal numbers; if "
                    f"the digits after the {mark} count on instead ({b} before {a}), the planes "
                    f"are out of focus order: rename them, or pass the files as a list in "
                    f"focus order"
                )
    return None


def _plain(number: str) -> str:
    """A name's number as a plane number: ``01`` and ``1`` alike, ``+1`` and ``1`` too (both
    were fused, one position twice), ``-0`` and ``0`` too (%g writes -0.0 so),
    ``1.10`` not ``1.1``."""
    sign = _sign(number)
    whole, dot, fraction = number[len(sign) :].partition(".")
    if not (whole + fraction).strip("0"):  # "-0" is "0" ("z-0" and "z0": one position)
        sign = ""
    return sign.replace("+", "") + (whole.lstrip("0") or "0") + dot + fraction
