"""The ``fstack-dask`` command line: ``fuse``, ``demo`` and ``info``.

Run ``fstack-dask --help`` (or ``python -m fstack_dask --help``). Options on
the command line override the values of a ``--config`` YAML file, which
override the defaults (see ``configs/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import logging
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .._errors import interruptions_of_this_call
from .._imports import deliver_held_signals, take_held_signal
from .args import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    PROG,
    UsageError,
    build_parser,
    cluster_override,
    configure,
    printable,
    scene_src,
    shown,
)
from .host import changes_kept, ignore_warnings, keep_to_itself, lower_level, set_level
from .stopping import (
    STOP_SIGNALS,
    Terminated,
    deaf,
    end_zarr_io,
    ending,
    leave,
    on_stop_signals_raise,
    quiet_broken_pools,
    quiet_gone_readers,
    quiet_swallowed_interrupts,
    stop_behind,
)

__all__ = ["main"]

# -------------------------------------------------------------------- commands


def _cmd_fuse(args: argparse.Namespace) -> int:
    config = configure(args)
    kw = config.fuse_kwargs()
    from .._runs.fusion import auto_kept

    with _report_progress_notes(), auto_kept():  # (the cluster path plans twice)
        return _fuse(args, config, kw)


def _fuse(args: argparse.Namespace, config: Any, kw: dict[str, Any]) -> int:
    from .._runs.fuse_zarr import fuse_zarr

    args.src = scene_src(args.src, args.scene)
    if config.cluster.kind != "local":
        _quiet_distributed()
        # Refuse bad input before connecting to a scheduler or queueing batch jobs;
        # fuse_zarr checks all this again.
        from .._locations import resolve
        from .._outputs.destination import Destination
        from .._runs.fuse_zarr import is_tiff_destination
        from .._runs.tiff_output import check_tiff_destination
        from .info import plan_from_options

        def refuse(source: Any, **entries: Any) -> None:
            dst = resolve(args.dst, name="dst", storage_options=kw["dst_storage_options"],
                          writable=True)  # fmt: skip
            if is_tiff_destination(args.dst):
                check_tiff_destination(dst, source.protected(), overwrite=kw["overwrite"],
                                       resume=args.resume)  # fmt: skip
            else:
                destination = Destination(dst, protect=source.protected(), **entries)
                destination.check(overwrite=kw["overwrite"], resume=args.resume)

        # dst refused before "auto" reads its sample too (it was read first), then again
        # with the plan's entries
        fusion = plan_from_options(args.src, kw, before_sample=refuse)
        refuse(fusion.source, entries=fusion.spec.entries)
    start = time.perf_counter()
    with config.cluster_context() as scheduler:
        out = fuse_zarr(
            args.src,
            args.dst,
            **kw,
            resume=args.resume,
            progress=not args.no_progress,
            scheduler=scheduler,
        )
    seconds = time.perf_counter() - start
    image = out["0"]
    # OME-Zarr names its dimensions; a TIFF dst's Zarr view (tifffile's) lists them as an
    # attribute, and holds the maps as images of their own
    names = getattr(image.metadata, "dimension_names", None) or image.attrs.get(
        "_ARRAY_DIMENSIONS", ()
    )
    axes = "".join(names).lower()
    extras = [name for name in ("depth", "selectivity") if name in out or kw.get(f"{name}_map")]
    plus = f" + {', '.join(extras)}" if extras else ""
    # a name with a newline or other control character is shown quoted: one line, as errors
    print(
        f"wrote {shown(args.dst)}: {axes} {tuple(image.shape)} {image.dtype}{plus} "
        f"in {seconds:.2f} s",
        flush=True,
    )
    return EXIT_OK


@contextlib.contextmanager
def _report_progress_notes(level: int = logging.INFO) -> Iterator[None]:
    """Show fstack_dask's notes (the files read, resuming, a stale lock taken over, progress
    lines) and warnings on stderr, each once, as ``fstack-dask: ...`` lines (not passed on to
    a host's handlers too).

    A warning is both logged and raised as a Python warning (``_errors.warn``); here the log
    record is the one shown, so the Python warning is silenced.
    """
    from .._errors import FstackDaskWarning

    logger = logging.getLogger("fstack_dask")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler.addFilter(_Once())
    handler.addFilter(_ThisCall(handler))
    handler.setLevel(level)
    # (put back as main returns, with the other calls' in the process: .host)
    lower_level("fstack_dask", level)
    ignore_warnings("", FstackDaskWarning)
    # shown by this handler alone: a host's own (a script's logging.basicConfig(), a batch
    # job's log) showed each note a second time
    keep_to_itself("fstack_dask")
    logger.addHandler(handler)
    call = _CALL.set(handler)
    try:
        yield
    finally:
        _CALL.reset(call)
        logger.removeHandler(handler)


#: The handler of the command under way in this context (:class:`_ThisCall`).
_CALL: contextvars.ContextVar[logging.Handler | None] = contextvars.ContextVar(
    "fstack_dask_command", default=None
)


class _ThisCall(logging.Filter):
    """A command's own records: two calls at once in two threads of a host each showed every
    record on the shared logger, each note printed twice. One from a thread of no command (a
    run's worker thread) is shown by the first handler of ours alone."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        call = _CALL.get()
        if call is not None:
            return call is self.handler
        ours = [h for h in logging.getLogger("fstack_dask").handlers
                if any(isinstance(f, _ThisCall) for f in h.filters)]  # fmt: skip
        return not ours or ours[0] is self.handler


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kind = "warning: " if record.levelno >= logging.WARNING else ""
        return f"{PROG}: {kind}{printable(record.getMessage())}"


class _Once(logging.Filter):
    """Each message once: a run on a cluster plans twice (its checks come before connecting),
    and would say the same things twice."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "fstack_dask.progress":
            return True  # progress lines may repeat
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


#: The demo's range: a stack the fusion is defined on (5 planes or more for the
#: selectivity fit; an image that is one), made in memory in seconds. (Beyond it: a MemoryError
#: or an error about --axes, after the planes were written: an adversarial run.)
DEMO_LIMITS = {"--size": (32, 4096), "--planes": (5, 200)}


def _cmd_demo(args: argparse.Namespace) -> int:
    for option, value in (("--size", args.size), ("--planes", args.planes)):
        low, high = DEMO_LIMITS[option]
        if not low <= value <= high:
            raise UsageError(f"{option} must be an integer from {low} to {high}, got {value}")
    if args.seed < 0:
        raise UsageError(f"--seed must be an integer >= 0, got {args.seed}")
    cluster = cluster_override(args.scheduler)
    from .config import Config
    from .demo import run_demo

    config = Config() if cluster is None else Config().with_overrides(cluster=cluster)
    with config.cluster_context() as scheduler, _report_progress_notes(logging.WARNING):
        run_demo(
            args.dir, size=args.size, planes=args.planes, rgb=bool(args.rgb), seed=args.seed,
            overwrite=args.overwrite, progress=not args.no_progress, scheduler=scheduler,
        )  # fmt: skip
    return EXIT_OK


# ------------------------------------------------------------------------ main


def _exit_code(exc: BaseException) -> int:
    from .._errors import DestinationLockedError, SourceValueError
    from .._sources.common import MissingExtraError

    if isinstance(exc, MissingExtraError):  # found before anything is written: install it
        return EXIT_USAGE
    if isinstance(exc, (DestinationLockedError, SourceValueError, PermissionError)):
        return EXIT_FAILURE
    if isinstance(exc, (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError)):
        return EXIT_USAGE
    return EXIT_FAILURE


# The library's messages name Python parameters; on the command line, name the options.
_API_TO_OPTION = (
    ("overwrite=True and resume=False", "--overwrite and without --resume"),
    ("resume=True", "--resume"),
    ("pass axes= with", "pass --axes with"),
    ("omit axes= or pass axes=", "omit --axes or pass --axes "),
    ("omit axes=", "omit --axes"),
    ("e.g. axes='zyx'", "e.g. --axes zyx"),
    ("overwrite=True", "--overwrite"),
    ("pass nhsize=", "pass --nhsize "),
    ("nhsize='auto' chose", "--nhsize auto chose"),
    ("device='cuda'", "--device cuda"),
    ("use device='cpu'", "use --device cpu"),
    ("or device='cpu'", "or --device cpu"),
    ("check dst_storage_options=", "check --dst-storage-options"),
    ("check storage_options=", "check --storage-options"),
    ("dst_storage_options only apply", "--dst-storage-options only apply"),
    ("storage_options only apply", "--storage-options only apply"),
)


#: Checks the library makes against the source (``levels`` beyond the image, ``level`` not in
#: it, ``focus`` of another length, ``axes`` of another rank) begin with the keyword's name:
#: on the command line, the option's, where it was given there
#: (``channels='rgb' needs a channel axis`` too: a fuzzer of option combinations).
#: (Only these openings: "chunks (..) do not match" is the source's, "axes of ..." a file's.)
_LEADING_KEYWORD = re.compile(
    r"^(?:(?P<must>levels|focus|nhsize|sth|alpha|channels) must"
    r"|(?P<equals>level|chunks|channels)=|(?P<quoted>axes) ')"
)


def _as_options(text: str) -> str:
    """The library's ``text`` naming the command line's options for its parameters."""
    for api, option in _API_TO_OPTION:
        text = text.replace(api, option)
    return text


def _message(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    text = _as_options(" ".join(str(exc).split()))  # one line, whatever the exception holds
    if getattr(args, "auto", False) is True and getattr(args, "nhsize", None) is None:
        text = text.replace("--nhsize auto chose", "--auto chose")  # what was given
    # the option, or the config file's key where the budget came from there
    named = getattr(args, "memory_per_task_named", "--memory-per-task")
    text = text.replace("memory_per_task=", f"{named} ")
    text = text.replace("lower memory_per_task ", f"lower {named} ")  # a stall's
    lead = _LEADING_KEYWORD.match(text)
    name = lead and (lead["must"] or lead["equals"] or lead["quoted"])
    if name and getattr(args, name, None) not in (None, False):
        text = f"--{name} {text[len(name) + 1 :]}"
    from .._sources.common import MissingExtraError

    told = (UsageError, ValueError, TypeError, OSError, RuntimeError, MissingExtraError)
    if isinstance(exc, told) and text:
        if _bare_permission_error(exc):  # say what this user may not do to which path
            from .._locations import permission_missing

            return f"permission denied: this user {permission_missing(exc.filename)}"
        if isinstance(exc, OSError) and exc.filename and exc.filename not in text:
            text = f"{text}: {exc.filename!r}"
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _bare_permission_error(exc: BaseException) -> bool:
    """An EACCES from the system, as Python words it (``[Errno 13] Permission denied: 'p'``),
    on a local path: it names neither what was denied nor why (a twentieth adversarial run)."""
    return (
        isinstance(exc, PermissionError)
        and isinstance(exc.filename, str)
        and exc.filename2 is None
        and str(exc) == f"[Errno {exc.errno}] {exc.strerror}: {exc.filename!r}"
        and "://" not in exc.filename
        and _names_a_place(exc.filename)
    )


def _names_a_place(name: str) -> bool:
    """Whether ``name`` is a path from here (not a name within a folder opened by descriptor,
    as a removal walking a tree gives)."""
    import os

    return os.path.isabs(name) or os.path.lexists(name) or os.path.isdir(os.path.dirname(name))


def _quiet_abandoned_coroutines() -> None:
    """Keep an interrupt's report to its one line.

    A signal can land between zarr creating a coroutine and its event loop running it; the
    coroutine, dropped with the interrupted frames, would add Python's "coroutine ... was
    never awaited" warning (three more lines) as the command exits.
    """
    ignore_warnings(r"coroutine .* was never awaited", RuntimeWarning)


def _error(message: str) -> None:
    from .._locations import redact_urls  # a token in a URL an error names (aiohttp's)

    print(f"{PROG}: error: {printable(redact_urls(message))}", file=sys.stderr, flush=True)


@interruptions_of_this_call
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fstack-dask`` command line and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 for a usage or validation error, 1 for a runtime
        failure, 130 when interrupted, 143 when terminated, 128 + N when stopped by another
        signal N that ends a job (SIGHUP, SIGUSR1, SIGUSR2, SIGXCPU; see ``fstack-dask --help``).
        Called as the program (``argv`` None), an interrupted run whose task never returned
        (a read on a dead mount) ends the process at once (:func:`.stopping.leave`). A
        caller's ``main([...])`` handles SIGTERM alone, and leaves the process's other
        handlers as they are (``faulthandler.register``'s, which Python reports as SIG_DFL).

    Examples
    --------
    >>> main(["--version"])
    fstack-dask 0.1.0
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _held_stop(argv) or (_error(str(exc)) or EXIT_USAGE)
    except SystemExit as exc:  # --help, --version
        return _held_stop(argv) or (exc.code if isinstance(exc.code, int) else EXIT_OK)
    except KeyboardInterrupt:
        return _held_stop(argv) or (_error("interrupted") or EXIT_INTERRUPTED)
    program = argv is None  # the program itself, not a caller's call: its process's hooks
    stops = STOP_SIGNALS if program else ("SIGTERM",)  # (a host's handlers Python cannot see)
    quiets = (quiet_broken_pools, quiet_gone_readers, quiet_swallowed_interrupts)
    restore, unquiet, interrupted, code = _nothing, [], False, EXIT_FAILURE
    kept = contextlib.nullcontext() if program else changes_kept(lambda: interrupted)
    kept.__enter__()  # (a caller's process: its filters and loggers as they were, at the end)
    try:  # (a signal that lands as soon as its handler is in place is reported too)
        restore = on_stop_signals_raise(stops)
        if program:  # those that came while it started (fstack_dask.__main__)
            deliver_held_signals()
        for quiet in quiets if program else ():
            unquiet.append(quiet())
        from .._dask_config import check_dask_config

        check_dask_config()  # before any command imports dask, which would hang on it
        code = int(_COMMANDS[args.command](args))
    except BaseException as error:
        stop = stop_behind(error)  # (wrapped where it landed in a class body: stopping.py)
        if stop is None and (args.traceback or not isinstance(error, Exception)):
            raise
        if stop is None:
            _error(_message(error, args))
            code = _exit_code(error)
        else:
            interrupted = True
            code = _say_stopped(stop, args, stops, program=program)
        stop = None  # (its traceback holds the run's frames: see .host.changes_kept)
    finally:
        if program:  # said and decided: a signal from now on ends it so (not SIG_DFL's -15)
            ending(code, stops)
        restore()
        for undo in reversed(unquiet):
            undo()
        kept.__exit__(None, None, None)
        if program:  # (after leave: no task of ours is running)
            with deaf(stops):
                end_zarr_io(interrupted=interrupted)
    return code


def _say_stopped(
    exc: KeyboardInterrupt, args: argparse.Namespace, stops: Sequence[str], *, program: bool
) -> int:
    """Say in one line how the run was stopped, and return its exit status; the program
    ends there, even with a task stuck (:func:`.stopping.leave`)."""
    with deaf(stops):  # pressed again meanwhile: the program is ending as asked
        _quiet_abandoned_coroutines()
        left = _as_options(getattr(exc, "left", None) or "")  # (a swap cut short)
        hint = f"; {left}" if left else "; rerun the same command with --resume to continue"
        _error(f"{_stopped(exc)}{hint if args.command == 'fuse' else ''}")
        code = EXIT_INTERRUPTED
        if isinstance(exc, Terminated):  # 128 + the signal's number, as a shell reports
            code = EXIT_TERMINATED if exc.signum == signal.SIGTERM else 128 + exc.signum
        if program:
            leave(code)
    return code


def _held_stop(argv: Sequence[str] | None) -> int | None:
    """The program's exit status where a stop signal held while it started (``__main__``)
    came before its arguments ended it (``--help``, a usage error), having said so: the
    signal was dropped, exit 0 or 2. None where none was held, or main() is a call."""
    signum = take_held_signal() if argv is None else None
    if signum is None:
        return None
    stop = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
    _error(_stopped(stop))
    if signum == signal.SIGINT:
        return EXIT_INTERRUPTED
    return EXIT_TERMINATED if signum == signal.SIGTERM else 128 + signum


def _nothing() -> None:
    return None


def _stopped(exc: KeyboardInterrupt) -> str:
    """How the run was stopped: "interrupted" (Ctrl-C), "terminated" (SIGTERM), or
    "terminated by SIGHUP" (another of the signals that end a job)."""
    if not isinstance(exc, Terminated):
        return "interrupted"
    if exc.signum == signal.SIGTERM:
        return "terminated"
    return f"terminated by {signal.Signals(exc.signum).name}"


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import cmd_info

    return cmd_info(args)


_COMMANDS = {"fuse": _cmd_fuse, "demo": _cmd_demo, "info": _cmd_info}


def _quiet_distributed() -> None:
    """distributed logs warnings, errors and shutdown noise to stderr; on the command line
    the one-line error is ours to write.

    distributed sets its loggers' levels when it is imported, so this imports it first (the
    command line calls it only for runs on a cluster).
    """
    import distributed  # noqa: F401 - sets its loggers up, which we then turn down

    # A cluster's dashboard moves to a free port where 8787 is taken (a notebook's cluster):
    # distributed's warning of it, four lines, broke a refusal's one line (a CI run)
    ignore_warnings(r"Port \d+ is already in use", UserWarning)

    names = ("distributed", "distributed.client", "distributed.worker", "distributed.nanny",
             "distributed.scheduler", "distributed.core", "distributed.comm", "tornado",
             "tornado.application", "asyncio")  # fmt: skip
    for logger in names:
        set_level(logger, logging.CRITICAL)
