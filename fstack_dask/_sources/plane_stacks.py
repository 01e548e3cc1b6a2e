"""Whether the names of a folder's plane files count one stack: several stacks numbered alike
refused (two channels, time points, tiles or series: ``cell_ch0_z01`` and ``cell_ch1_z01``), a
lone file claiming another's plane refused, and a restarted counter or a gap in the numbering
said. How names are parsed and ordered is ``plane_names``'s.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .plane_names import (
    _FOCUS_LABEL,
    _NAMES_SHOWN,
    _either,
    _focus_places,
    _parts,
    _pattern,
    _plain,
    _sign,
    minus_signs,
    natural_key,
    odd_names,
    p_between_digits,
    reading_p_as_point,
)

__all__ = ["gap_warning", "points_read", "refuse_several_stacks", "restart_warning"]


def points_read(files: Sequence[str], where: str) -> frozenset[str]:
    """The files whose "p" between digits is a decimal point (``z1p5.tif``: 1.5), refusing
    names that count several stacks either way (`refuse_several_stacks`). A "p" is read so
    where the names so read count one stack, with fewer files named unlike the others, and
    read as text do not: ``z1``, ``z1p5``, ``z2`` ... was refused as two stacks with a glob
    selecting half the planes, where ``pos1p1`` ... ``pos1p10`` is one stack with its
    "p" as text. Where neither reading counts one stack, the refusal is the reading's that
    joins the names into fewer patterns (its glob selects whole stacks). Where read as text
    they count several stacks, the positions so read must step evenly (`_evenly_spaced`)."""
    marked = p_between_digits(files)
    if not marked:
        refuse_several_stacks(files, where)
        return frozenset()
    refused, odd = _refusal(files, where)
    if not (refused or odd):
        return frozenset()
    patterns = len({_pattern(f, one_format=True) for f in files})
    with reading_p_as_point(marked):
        as_point, odd_as_point = _refusal(files, where)
        fewer = len({_pattern(f, one_format=True) for f in files}) < patterns
    if as_point is None and (refused or len(odd_as_point) < len(odd)):
        if not refused or _evenly_spaced(files, marked):
            return frozenset(marked)
    if refused:
        raise as_point if as_point and fewer else refused
    return frozenset()


def _evenly_spaced(files: Sequence[str], marked: Sequence[str]) -> bool:
    """Whether the positions of the stack's files (its most common pattern), a "p" between
    digits read as a point, step evenly: every step a whole multiple of the smallest, and
    the positions skipped (where some are whole) fewer than half those present. Two counts
    joined by a "p" (PerkinElmer Harmony's field and plane, ``f01p01`` ... ``f02p01``; a
    series and plane, ``s1p1`` ... ``s2p1``) read 1.01, 1.02, ... 2.01: two stacks fused as
    one, exit 0, once ae88503 read them so. A plane lost (``z0``, ``z0p5``, ... ``z2``,
    ``z3``: one step twice the others) is one stack still, as with a decimal point: it was
    refused as two stacks, numbered alike."""
    with reading_p_as_point(marked):
        patterns = [_pattern(f, one_format=True) for f in files]
        common = Counter(patterns).most_common(1)[0][0]
        parts = [_parts(f) for f, p in zip(files, patterns, strict=True) if p == common]
    numbers = [[_plain(n) for n in p[1::2]] for p in parts]
    place = _counting_place(numbers, parts[0][0::2])
    values = sorted(Decimal(n[place]) for n in numbers)
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    if not steps:
        return True
    step = min(steps)
    if step <= 0 or any(d % step for d in steps):
        return False
    skipped = (values[-1] - values[0]) / step + 1 - len(values)
    # (two counts from 1, z1p1 ... z1p9, z2p1 ...: skip only the x.0 they never write, where
    # decimals write whole positions, z1 or z1p0, beside a lost plane)
    whole = any(v == v.to_integral_value() for v in values)
    return not skipped or (2 * skipped < len(values) and whole)


def _refusal(files: Sequence[str], where: str) -> tuple[ValueError | None, list[str]]:
    """`refuse_several_stacks`'s refusal of `files`, or else the files named unlike the others."""
    try:
        refuse_several_stacks(files, where)
    except ValueError as refused:
        return refused, []
    return None, odd_names(files)


def refuse_several_stacks(files: Sequence[str], where: str) -> None:
    """Refuse names that count more than one stack: two files of one pattern and the same
    numbers (``z1.tif``, ``z01.tif``), or files whose other numbers or text (channels, time
    points, tiles, series: ``cell_ch0_z01`` and ``cell_ch1_z01``, ``a_z01`` and ``b_z01``)
    repeat the same plane numbers. Such a folder was fused as one stack, the second channel's
    planes taken as further focus positions, exit 0 (an adversarial run on inputs,
    2026-12-06). The number that counts the planes is the one with the most values."""
    by_pattern: dict[str, list[str]] = {}
    for f in files:
        by_pattern.setdefault(_pattern(f, one_format=True), []).append(f)
    groups: dict[tuple[Any, ...], dict[str, str]] = {}  # pattern, folder, others: plane -> file
    counting_of: dict[str, int] = {}
    for pattern, members in by_pattern.items():
        numbers = [[_plain(n) for n in _parts(f)[1::2]] for f in members]
        if not numbers[0]:
            continue
        counting = _counting_place(numbers, _parts(members[0])[0::2])
        counting_of[pattern] = counting
        for f, n in zip(members, numbers, strict=True):
            key = (pattern, os.path.dirname(f), *n[:counting], *n[counting + 1 :])
            group = groups.setdefault(key, {})
            if n[counting] in group:
                raise _numbered_alike(group[n[counting]], f, files, where)
            group[n[counting]] = f
    kept: list[dict[str, str]] = []  # the groups of two planes or more, in order
    holders: dict[str, list[int]] = {}  # plane number: the kept groups that hold it
    for group in groups.values():
        if len(group) < 2:
            continue
        # Two stacks need not hold the same planes (a channel one plane short): two planes
        # numbered alike in each are enough, where one stack's numbers never repeat.
        shared = Counter(k for v in group for k in holders.get(v, ()))
        match = next((k for k, count in shared.items() if count >= 2), None)
        if match is not None:
            _several_stacks(kept[match], group, files, counting_of, where)
        for v in group:
            holders.setdefault(v, []).append(len(kept))
        kept.append(group)
    for pattern, members in by_pattern.items():
        if pattern in counting_of:
            _refuse_letter_signs(members, counting_of, counting_of[pattern], files, where)
            _refuse_repeated(members, counting_of, counting_of[pattern], files, where)
    _refuse_named_apart(by_pattern, counting_of, files, where)
    for pattern, place in counting_of.items():
        if len({_plain(_parts(f)[2 * place + 1]) for f in by_pattern[pattern]}) > 1:
            # (a lone file beside the stack, 'overview_tile_1.tif', counts no positions: the
            # stack was refused as numbered by it, naming it twice)
            _refuse_positions(by_pattern[pattern], place, where)
            _refuse_one_plane(by_pattern[pattern], place, where)


def _refuse_named_apart(by_pattern: dict[str, list[str]], counting_of: dict[str, int],
                        files: Sequence[str], where: str) -> None:  # fmt: skip
    """Refuse two patterns of two files or more in one folder: stacks named apart beyond their
    numbers (cellA_z01 ... z05, cellB_z06 ... z10: two cells whose numbers run on) were fused
    as one stack of 10, exit 0. Files of one pattern apart by another number (run1_z00
    ..., run2_z06 ...: a second run going on) are one stack still."""
    seen: dict[str, dict[str, str]] = {}  # folder: the first such stack (plane: file)
    for pattern, members in by_pattern.items():
        if pattern not in counting_of:
            continue
        place = 2 * counting_of[pattern] + 1
        per_folder: dict[str, dict[str, str]] = {}
        for f in members:
            per_folder.setdefault(os.path.dirname(f), {})[_plain(_parts(f)[place])] = f
        for folder, stack in per_folder.items():
            if len(stack) >= 2 and folder in seen:
                _several_stacks(seen[folder], stack, files, counting_of, where)
            if len(stack) >= 2:
                seen[folder] = stack


def _refuse_letter_signs(members: Sequence[str], counting_of: dict[str, int], place: int,
                         files: Sequence[str], where: str) -> None:  # fmt: skip
    """Refuse plane numbers signed by an ``m`` and a ``p`` with no plane 0 among them and no
    ``z`` or ``focus`` label before them: ``sample_m1``, ``sample_m2`` beside ``sample_p1`` ...
    ``sample_p3`` are two series more likely than focus offsets, and were fused as one signed
    stack of 5, with a warning of a plane 0 missing, since 01980d2 read m and p as signs.
    ``focus_m2`` ... ``focus_p2`` and ``sample_m1``, ``sample_0``, ``sample_p1`` are one stack.
    `place`: the members' plane number's."""
    k = 2 * place + 1
    parts = [_parts(f) for f in members]
    if _FOCUS_LABEL.search(parts[0][k - 1].casefold()) or any(
        _plain(p[k]).lstrip("-") == "0" for p in parts + _zero_apart(parts[0], k, members[0], files)
    ):
        return
    stacks: dict[str, dict[str, str]] = {}  # the letter: plane number (unsigned): file
    for f, p in zip(members, parts, strict=True):
        letter = _parts(f, as_read=False)[k - 1][-1:].lower() if _sign(p[k]) else ""
        stacks.setdefault(letter if letter in ("m", "p") else "", {})[_plain(p[k]).lstrip("-")] = f
    signed = [stacks[s] for s in ("m", "p", "") if s in stacks]
    if ("m" in stacks or "p" in stacks) and len(signed) > 1:
        _several_stacks(signed[0], signed[1], files, counting_of, where)


def _zero_apart(parts: list[str], k: int, member: str, files: Sequence[str]) -> list[list[str]]:
    """The names (split) of `files` in the folder of `member` named as `parts` (its name split,
    its number at `k`) but for a separator before the number, read as the number's sign:
    ``cell-0`` ("cell", "-0") beside ``cell-m1`` ("cell-", "-1"), a plane 0 unseen, so the
    stack was refused as two."""
    if parts[k - 1][-1:] not in ("-", "+"):
        return []
    texts = parts[0::2]
    texts[k // 2] = texts[k // 2][:-1]
    apart = "#".join(texts).casefold()
    split = [_parts(f) for f in files if os.path.dirname(f) == os.path.dirname(member)]
    return [p for p in split if "#".join(p[0::2]).casefold() == apart]


def _refuse_repeated(members: Sequence[str], counting_of: dict[str, int], place: int,
                     files: Sequence[str], where: str) -> None:  # fmt: skip
    """Refuse files of one pattern whose plane numbers repeat twice or more, whatever their
    other numbers: stacks whose names hold a number changing per plane (a time stamp, a frame
    counter, a drifting stage) made a group of each file above, and two time points or
    channels were fused as one stack, exit 0. Each file goes to the first
    stack that lacks its plane number, in stack order. `place`: the members' plane number's."""
    stacks: list[dict[str, str]] = []
    for f in members:
        plane = _plain(_parts(f)[2 * place + 1])
        free = next((s for s in stacks if plane not in s), None)
        if free is None:
            free = {}
            stacks.append(free)
        free[plane] = f
    if len(stacks) > 1 and len(stacks[1]) >= 2:
        _several_stacks(stacks[0], stacks[1], files, counting_of, where)
    if len(stacks) > 1:  # one file claiming another's plane (a lone plane of another channel)
        ((plane, lone),) = stacks[1].items()
        raise _numbered_alike(stacks[0][plane], lone, files, where)


# The text before a number that names it a stage position, a field of view of its own: Nikon's
# "xy", ZEN's "Scene", "site", "tile", "stage" ("pos" may be a focus position: not read so).
_POSITION_LABEL = re.compile(r"(?:^|[^a-z])(?:xy|scene|site|tile|stage)[_-]?$")


def _refuse_positions(members: Sequence[str], place: int, where: str) -> None:
    """Refuse files numbered by a stage position or a time point, not by focus: MetaMorph's
    ``exp_w1DAPI_s1_t1.TIF`` ... ``_s12_t1.TIF`` (its z-series are files of their own),
    Nikon's ``xy01c1.tif`` ..., Micro-Manager's ``..._time000000000_z000`` ... ``_time
    000000011_z000`` are fields of view or time points apart, and were fused as a focus
    stack, exit 0. `place`: the number counting them."""
    parts = [p.casefold() for p in _parts(members[0])]
    label, after = parts[2 * place], parts[2 * place + 2]
    before = parts[2 * place - 2] if place else ""
    if _POSITION_LABEL.search(label) or (re.search(r"(?:^|_)s$", label) and after == "_t"):
        kind, apart = "stage position", "fields of view apart"
    elif re.search(r"(?:^|[^a-z])time[_-]?$", label) or (
        re.search(r"(?:^|_)t$", label) and re.search(r"(?:^|_)s$", before)  # "_s1_t1"
    ):
        kind, apart = "time point", "time points of a time-lapse"
    else:
        return
    shown = [os.path.basename(f) for f in (members[0], members[-1])]
    said = re.search(r"[a-z]*[_-]?$", _parts(members[0])[2 * place], re.IGNORECASE).group()
    raise ValueError(
        f"{where}: its files ({shown[0]!r} ... {shown[1]!r}) are numbered by their {kind} "
        f"({said!r}), not by focus: they are {apart}, not the planes of one focus stack; give "
        f"a folder or glob of one {kind}'s planes, or the file holding its z-series (where "
        "these are planes after all, rename them with their plane number after a 'z', 'z01' "
        "..., or pass them from Python as a list of files, read in the order given)"
    )  # (a list was all it offered, which the CLI's one SRC cannot be)


# The text before a number that names it a channel, a time point or a stage coordinate.
_SERIES_LABEL = re.compile(r"(?:^|[^a-z])(?:c|ch|channel|w|t|tp|time|timepoint|x|y)[_-]?$")


def _refuse_one_plane(members: Sequence[str], place: int, where: str) -> None:
    """Refuse files at one focal plane (a number labelled ``z`` or ``focus`` of one value)
    counted by a channel, time point or stage coordinate (``cell_z1_ch0`` ... ``_ch2``,
    ``cell_z1_t001`` ...): fused as a focus stack, exit 0, once such a z counted no planes
    (0e1d43d). `place`: the number counting them."""
    parts = [_parts(f) for f in members]
    if len(members) < 2 or not _SERIES_LABEL.search(parts[0][2 * place].casefold()):
        return
    plane = next((i for i in range(1, len(parts[0]), 2) if i != 2 * place + 1
                  and _FOCUS_LABEL.search(parts[0][i - 1].casefold())
                  and len({_plain(p[i]) for p in parts}) == 1), None)  # fmt: skip
    if plane is None:
        return
    shown = [os.path.basename(f) for f in (members[0], members[-1])]
    said = re.search(r"[a-z]*[_-]?$", parts[0][2 * place], re.IGNORECASE).group()
    focal = re.search(r"[a-z]*[_-]?$", parts[0][plane - 1], re.IGNORECASE).group()
    raise ValueError(
        f"{where}: its files ({shown[0]!r} ... {shown[1]!r}) are all at one focal plane "
        f"({focal}{parts[0][plane]}) and numbered by {said!r}, a channel, time point or "
        "stage coordinate: not the planes of one focus stack; give a folder or glob of one "
        "stack's planes (where these are planes after all, rename them with their plane "
        "number after a 'z', or pass them from Python as a list of files, read in the order "
        "given)"
    )


def _numbered_alike(a: str, b: str, files: Sequence[str], where: str) -> ValueError:
    return ValueError(
        f"{where}: {_shown(a, files)!r} and {_shown(b, files)!r} are numbered alike, so their "
        "order in the stack is a guess; remove or rename one of them, or select the planes "
        "with a glob"
    )


def _several_stacks(
    first: dict[str, str],
    group: dict[str, str],
    files: Sequence[str],
    counting_of: dict[str, int],
    where: str,
) -> None:
    """Raise the refusal of two stacks, `first` and `group` (plane number: file): numbered
    alike, or, where they share no number, named apart beyond their numbers."""
    sizes = f"{len(first)}" if len(first) == len(group) else f"{len(first)} and {len(group)}"
    shared = first.keys() & group.keys()
    if shared:
        plane = min(shared, key=lambda v: natural_key(first[v]))
        a, b = first[plane], group[plane]
        why = (f"are both numbered {plane} in stacks of {sizes} planes (channels, time "
               "points, tiles or series apart)")  # fmt: skip
    else:
        a, b = max(first.values(), key=natural_key), min(group.values(), key=natural_key)
        why = (f"are named apart beyond their numbers, in stacks of {sizes} planes (two "
               "samples, channels or acquisitions whose numbers run on)")  # fmt: skip
    counting = [counting_of[_pattern(f, one_format=True)] for f in (a, b)]
    pattern = _glob_one_stack(list(first.values()), counting[0], files)
    pattern = pattern or _glob_one_stack(list(group.values()), counting[1], files)
    raise ValueError(
        f"{where} holds more than one stack: {_shown(a, files)!r} and "
        f"{_shown(b, files)!r} {why}, and would be fused as "
        f"one stack of {len(files)} planes; "
        + (f"select one stack with a glob such as {pattern!r}" if pattern else
           "move one stack's files to a folder of their own")
    )  # fmt: skip


def _counting_place(numbers: Sequence[Sequence[str]], texts: Sequence[str] = ()) -> int:
    """The place of the number that counts the planes: the one labelled ``z`` or ``focus``
    (`texts`: the text before each number) of the most values, else the one of the most
    values. A frame counter (``frame_000123_ch0_z00``) has more values than z in a folder of
    two channels, and counted them apart: one stack of 10 planes, exit 0.
    A labelled number of one value counts no planes: ``stack_z2_img001`` .. ``img010`` (a
    stack's number) was refused as ten files numbered alike."""
    labelled = [p for p, t in enumerate(texts[: len(numbers[0])])
                if _FOCUS_LABEL.search(t.casefold())
                and len({n[p] for n in numbers}) > 1]  # fmt: skip
    return max(labelled or range(len(numbers[0])),
               key=lambda p: (len({n[p] for n in numbers}), p))  # fmt: skip


def restart_warning(files: Sequence[str], where: str) -> str | None:
    """A warning where the planes' counter looks restarted: zero-padded whole numbers counting
    up by 1 that skip once to the top of their width (``IMG_0001``, ``IMG_0002``, then
    ``IMG_9998``, ``IMG_9999``): a camera's counter that passed 9999 and began again at 0001,
    whose later planes sort first. Fused in name order in silence (an adversarial run on
    inputs, 2026-12-06)."""
    pattern = Counter(_pattern(f) for f in files).most_common(1)[0][0]
    members = [f for f in files if _pattern(f) == pattern]  # in stack order
    numbers = [_parts(f)[1::2] for f in members]
    if len(members) < 3 or not numbers[0]:
        return None
    values = [n[_counting_place(numbers)] for n in numbers]
    width = len(values[0])
    if any(len(v) != width or not v.isdigit() for v in values) or width < 3:
        return None
    counts = [int(v) for v in values]
    steps = [b - a for a, b in zip(counts, counts[1:], strict=False)]
    skips = [k for k, step in enumerate(steps) if step != 1]
    if len(skips) != 1 or counts[-1] != 10**width - 1:
        return None
    k = skips[0]
    return (
        f"{where}: the planes' numbers run from {values[0]} to {values[k]} "
        f"({os.path.basename(members[k])!r}), then from {values[k + 1]} to {values[-1]} "
        f"({os.path.basename(members[-1])!r}): if a camera's counter passed {values[-1]} and "
        f"began again, its later planes come first; the planes are fused in name order: rename "
        "them if that is not the focus order"
    )


def gap_warning(files: Sequence[str], where: str) -> str | None:
    """A warning where the planes' whole numbers count on in one step but skip some
    (``z01`` ... ``z05``, ``z07`` ... ``z10``: a plane lost in transfer). The fusion takes the
    planes as evenly spaced: its focus fit and the depth map count planes, so past a gap they
    are a plane off. Fused in silence. Numbers that are not such a count are left:
    decimals (focus positions in um, rounded), steps that are not multiples of the usual
    one (a frame counter), a time's minutes or seconds, or a usual step that is not most of
    the steps (an adaptive focus step)."""
    pattern = Counter(_pattern(f) for f in files).most_common(1)[0][0]
    members = [f for f in files if _pattern(f) == pattern]  # in stack order
    numbers = [_parts(f)[1::2] for f in members]
    if len(members) < 3 or not numbers[0]:
        return None
    place = _focus_places(members).get(members[0], _counting_place(numbers))
    written = [n[place] for n in numbers]
    if not all(v.lstrip("+-").isdigit() for v in written):  # decimals, exponents
        return None
    after_number = place and _parts(members[0])[2 * place] in ("", ":", ".")
    if after_number and len(written[0].lstrip("+-")) == 2:
        return None  # a time's minutes or seconds ("13-45-01"): it skips as the camera lags
    # else a "-" in every name is text, but after a z label ("z-3", "z-2", "z-1")
    signed = len({_sign(v) for v in written}) > 1 or minus_signs(
        _parts(members[0])[2 * place], written
    )
    values = [int(v) if signed else int(v.lstrip("+-")) for v in written]
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    step = min(steps)
    if step <= 0 or any(d % step for d in steps) or 2 * steps.count(step) <= len(steps):
        return None
    gaps = [k for k, d in enumerate(steps) if d != step]
    if not gaps:
        return None
    digits = [v.lstrip("+-") for v in written]
    width = len(digits[0]) if any(len(d) > 1 and d[0] == "0" for d in digits) else 1

    def shown(v: int) -> str:
        return f"{'-' if v < 0 else ''}{abs(v):0{width}d}"

    missing = [range(values[k] + step, values[k + 1], step) for k in gaps]
    count = sum(len(r) for r in missing)
    said = [shown(r[0]) if len(r) == 1 else f"{shown(r[0])} to {shown(r[-1])}" for r in missing]
    text = ", ".join(said[:_NAMES_SHOWN]) + (f" and {len(said) - _NAMES_SHOWN} more gaps"
                                             if len(said) > _NAMES_SHOWN else "")  # fmt: skip
    k = gaps[0]
    return (
        f"{where}: the planes are numbered in steps of {step} from {shown(values[0])} to "
        f"{shown(values[-1])}, but {count} plane{'s are' if count > 1 else ' is'} missing: "
        f"{text} (the first gap after {os.path.basename(members[k])!r}); the fusion takes "
        "the planes as evenly spaced in focus, so its depth is a plane off past each gap: if "
        "a plane was lost (an interrupted copy), copy it again"
    )


def _shown(path: str, files: Sequence[str]) -> str:
    """A file's name, with its folder where the files lie in several."""
    if len({os.path.dirname(f) for f in files}) == 1:
        return os.path.basename(path)
    return path


def _glob_one_stack(stack: Sequence[str], counting: int, files: Sequence[str]) -> str | None:
    """A glob matching the files of `stack` and no other of `files`: their number at
    `counting` as ``*``, or as ``[0-9]`` per digit where ``*`` matches another stack's too
    (``cell_z*.tif`` matched ``cell_z01_dapi.tif``: a review of real naming schemes,
    2026-12-06); None where neither does."""
    split = [_parts(f, as_read=False) for f in stack]
    parts = split[0]
    shapes = {re.sub(r"\d", "#", p[2 * counting + 1]) for p in split}
    numbers = ["*"]
    if len(shapes) == 1:
        numbers.append("".join("[0-9]" if c == "#" else glob.escape(c) for c in shapes.pop()))
    # a number changing within the stack (a time stamp per plane) is a "*" too, and a text
    # spelled apart within it (signs as m and p, "focus_m2", "focus_0": no glob was found)
    varying = {i for i in range(len(parts)) if len({p[i] for p in split}) > 1}
    others = [f for f in files if f not in set(stack)]
    for number in numbers:
        out = [number if i == 2 * counting + 1 else glob.escape(p) if i not in varying
               else "*" if i % 2 else _either([q[i] for q in split])
               for i, p in enumerate(parts)]  # fmt: skip
        name = re.sub(r"(?<!\[)\*{2,}", "*", "".join(out))  # "focus_**.tif": one "*"
        pattern = os.path.join(os.path.dirname(stack[0]), name)
        if all(fnmatch.fnmatchcase(f, pattern) for f in stack) and not any(
            fnmatch.fnmatchcase(f, pattern) for f in others
        ):
            return pattern
    return None
