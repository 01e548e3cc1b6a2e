"""What PBS (PBS Pro, OpenPBS, Torque) says of a dask-jobqueue cluster's batch jobs while a run
has no worker: the hold its job script or its ``qsub`` asks for (``-h``), read as qsub reads
them, and qstat's state and hold types of each job (:mod:`.batch_jobs` says them)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

__all__ = ["asks_hold", "states"]

# qsub's short options that take a value (the rest of their word, else the next word), the
# union of OpenPBS's and Torque's getopt strings (qsub_sup.c, qsub_functions.c): the word after
# "-N" is a job name, "-N -h" no hold. The letters of neither (a site's own) end a word's flags.
_VALUED = set("aAbcCdDeFijJkKlLmMNopPqrRStTuvwW")
_FLAGS = set("EfGhInVXxz")  # (without a value: "-Vh" holds, as getopt reads it)


def asks_hold(script: str, submit_command: str = "qsub") -> bool:
    """Whether qsub holds the jobs it submits from ``script`` with ``submit_command`` (its
    ``-h``, a user hold: they start only once released, ``qrls``), as qsub reads them: each
    directive (``#PBS``, or ``PBS_DPREFIX``, or the command's ``-C``), indented or not, up to
    the script's first command, a line ending with ``\\`` joined to the next. Not ``-a`` (a
    start time) nor ``-W depend=``: waits the user asked for, which end by themselves."""
    command = _options(shlex.split(submit_command)[1:])
    prefix = command.get("C", os.environ.get("PBS_DPREFIX", "#PBS"))
    if "h" in command:
        return True
    if not prefix:  # (qsub -C "": no directive read)
        return False
    lines = script.splitlines()[1:]  # (the first, its #!, is no directive)
    while lines:
        line = lines.pop(0)
        stripped = line.lstrip()
        if stripped.startswith(prefix):
            while line.rstrip().endswith("\\") and lines:  # (qsub's continued directive)
                line = line.rstrip()[:-1] + lines.pop(0)
            words = _words(line.lstrip()[len(prefix) :])
            if words is not None and "h" in _options(words):
                return True
        elif stripped and not line.startswith((":", "#!")) and not stripped.startswith("#"):
            return False  # (qsub reads no directive after the first command)
    return False


def _words(text: str) -> list[str] | None:
    """A directive's words as qsub's make_argv splits them: quotes kept out, their text whole,
    a backslash taking the next character as it is; None for an unmatched quote (qsub refuses
    the script). No comments: '#' is a character of its word."""
    words: list[str] = []
    word, quote, escaped, started = [], "", False, False
    for char in text:
        if escaped:
            word.append(char)
            escaped = False
        elif quote:
            if char == quote:
                quote = ""
            else:
                word.append(char)
        elif char in "\"'":
            quote, started = char, True
        elif char == "\\":
            escaped = started = True
        elif char.isspace():
            if started or word:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(char)
            started = True
    if quote:
        return None
    if started or word:
        words.append("".join(word))
    return words


def _options(words: list[str]) -> dict[str, str]:
    """qsub's options among ``words`` as GNU getopt reads them (words not options skipped, "--"
    the end): each letter, with its value for one that takes one."""
    found: dict[str, str] = {}
    words = list(words)
    while words:
        word = words.pop(0)
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            continue
        for at, letter in enumerate(word[1:], 1):
            if letter in _VALUED:
                value = word[at + 1 :] or (words.pop(0) if words else "")
                found[letter] = value
                break
            if letter not in _FLAGS:
                break  # (an option qsub does not know: it refuses the script)
            found[letter] = ""
    return found


def states(ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """qstat's state (``job_state``: Q, H, W, R ...) and hold types (``Hold_Types``: u a user's,
    o an operator's, s the system's, which a dependency's wait is) of each job of ``ids`` it
    knows, by id as dask-jobqueue keeps it (``123`` of ``123.server``); None where qstat did
    not answer."""
    try:
        res = subprocess.run(["qstat", "-f", *ids], capture_output=True, text=True, timeout=10,
                             check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0 and "Job Id:" not in res.stdout:
        # every id unknown (ended and forgotten) reads as none known; another failure: unknown
        return {} if re.search(r"Unknown Job Id|has finished", res.stderr) else None
    found: dict[str, tuple[str, str]] = {}
    for block in re.split(r"^(?=Job Id:)", res.stdout, flags=re.M):
        job = re.match(r"Job Id:\s*(\d+)", block)
        state = re.search(r"^\s+job_state = (\S+)", block, re.M)
        if job and state and job.group(1) in ids:
            hold = re.search(r"^\s+Hold_Types = (\S+)", block, re.M)
            found[job.group(1)] = (state.group(1), hold.group(1) if hold else "n")
    return found
