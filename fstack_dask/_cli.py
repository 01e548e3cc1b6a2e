"""The ``fstack-dask`` command line: ``fuse``, ``demo`` and ``info``.

Run ``fstack-dask --help`` (or ``python -m fstack_dask --help``). Options on
the command line override the values of a ``--config`` YAML file, which
override the defaults (see ``configs/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from ._version import __version__

__all__ = ["main"]

PROG = "fstack-dask"
EXIT_OK = 0
EXIT_FAILURE = 1  # the run itself failed: I/O, permissions, a locked dst, the cluster, a task
EXIT_USAGE = 2  # the command cannot run as given: options, config, src or dst refused up front
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

EXIT_CODES = f"""\
exit status:
  {EXIT_OK}    success
  {EXIT_USAGE}    usage or validation error, found before anything is written: bad option or
       config file, missing or unreadable src (FileNotFoundError, ValueError,
       TypeError), dst exists without --overwrite or lies inside src
  {EXIT_FAILURE}    runtime failure: I/O or permission error, no space left on the device,
       dst locked by another run, a corrupt source chunk, cluster or task failure
       (OSError, RuntimeError, anything unexpected); finished blocks are kept
       for --resume, and a dst with none is removed
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); a fuse run can be continued with --resume

Errors are reported as one line, "fstack-dask: error: <message>", on stderr
(--traceback shows the full traceback instead)."""

PRECEDENCE = (
    "Values are taken from, in increasing priority: the built-in defaults, the --config "
    "YAML file, then the options given here."
)

SCHEDULER_HELP = (
    "synchronous, threads or processes (a local Dask scheduler), or the address of a "
    "running distributed scheduler such as tcp://host:8786; overrides the config's "
    "cluster section (default: threads)"
)


def _wrap(*paragraphs: str) -> str:
    """Paragraphs filled to 79 columns (the help formatter keeps them as they are)."""
    return "\n\n".join(textwrap.fill(p, 79) for p in paragraphs)


class _UsageError(Exception):
    """A command-line mistake: reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line instead of usage + message + exit.

    Abbreviated options are refused: ``--nhsiz`` must not silently mean ``--nhsize``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see {self.prog} --help)")


# --------------------------------------------------------------------- parsing


def _csv_numbers(text: str) -> list[float]:
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,1,2.5, got {text!r}"
        ) from None


def _chunks_arg(text: str) -> Any:
    if text.strip().lower() == "auto":
        return "auto"
    parts = [p.strip() for p in text.lower().replace("x", ",").split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected N, NY,NX (positive integers) or auto, got {text!r}"
        )
    return values[0] if len(values) == 1 else (values[0], values[1])


def _add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument(
        "--axes",
        help="axes of a plain Zarr array without dimension names, one letter per dimension, "
        "e.g. zyx, czyx, yxz (z: focus, c: channel, other letters: batch)",
    )
    g.add_argument(
        "--level",
        type=int,
        metavar="N",
        help="pyramid level of an OME-Zarr source to fuse (default 0: full resolution)",
    )
    g.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec options for a remote SRC, as a JSON object, e.g. '{\"anon\": true}'",
    )
    g.add_argument(
        "--channels",
        choices=("auto", "rgb", "independent"),
        help="rgb: one weight map shared by 3 colour channels; independent: each channel "
        "fused on its own; auto (default): rgb for 3 uint8 channels",
    )


def _add_algorithm_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("algorithm (Pertuz et al. 2013)")
    g.add_argument(
        "--nhsize", type=int, metavar="N", help="focus-measure window size in pixels (default 9)"
    )
    if full:
        g.add_argument(
            "--alpha",
            type=float,
            metavar="A",
            help="steepness of the selectivity-to-weight map, in (0, 1] (default 0.2)",
        )
        g.add_argument(
            "--sth", type=float, metavar="S", help="selectivity threshold in dB (default 13)"
        )
        g.add_argument(
            "--focus",
            type=_csv_numbers,
            metavar="F0,F1,...",
            help="focus position of each plane, strictly monotonic (default 0,1,2,...)",
        )


def _add_layout_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("output and resources")
    if full:
        g.add_argument(
            "--depth-map",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="also write the depth map (array 'depth', float32)",
        )
        g.add_argument(
            "--selectivity-map",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="also write the selectivity map (array 'selectivity', float32, dB)",
        )
    g.add_argument(
        "--chunks",
        type=_chunks_arg,
        metavar="N|NY,NX",
        help="y/x block and output chunk size (default auto: the largest block that fits "
        "--memory-per-task, aligned to the source chunks)",
    )
    g.add_argument(
        "--memory-per-task",
        metavar="SIZE",
        help="memory one task may use, e.g. 256MiB, 1GiB, 500MB (default 256MiB); with "
        "--device cuda, on the host and on the GPU",
    )
    g.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="where each block is fused: cpu (default) or cuda, the CUDA GPU of each worker "
        '(pip install "fstack_dask[gpu]")',
    )
    if full:
        g.add_argument(
            "--levels",
            metavar="N|auto",
            help="multiscale levels besides full resolution, each 2x2 averaged (default auto: "
            "until the image fits in one chunk; 0 for none)",
        )
        g.add_argument(
            "--dst-storage-options",
            metavar="JSON",
            help="fsspec options for a remote DST, as a JSON object",
        )
        g.add_argument(
            "--stall-timeout",
            type=float,
            metavar="SECONDS",
            help="on a cluster, fail when no block finishes for this long (default 600)",
        )


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration file (see configs/README.md); options given here override it",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=_wrap(
            "Out-of-core all-in-focus fusion of focus stacks stored as Zarr / OME-Zarr "
            "(Pertuz et al. 2013), with Dask.",
            "Commands: fuse (fuse a stack), demo (try it on a synthetic stack), info (what a "
            "fuse run would do). 'fstack-dask COMMAND --help' lists each command's options.",
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, show the full Python traceback instead of one line",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fuse = sub.add_parser(
        "fuse",
        help="fuse a focus stack (Zarr / OME-Zarr) into an OME-Zarr all-in-focus image",
        description=_wrap(
            "Fuse the focus stack SRC into the OME-Zarr 0.5 all-in-focus image DST. Prints one "
            "line at the end: the output, its axes, shape and dtype, and the time taken.",
            PRECEDENCE,
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fuse.add_argument("src", metavar="SRC", help="Zarr array or OME-Zarr image (path or URL)")
    fuse.add_argument("dst", metavar="DST", help="output OME-Zarr image group (path or URL)")
    _add_config_option(fuse)
    _add_input_options(fuse)
    _add_algorithm_options(fuse, full=True)
    _add_layout_options(fuse, full=True)
    run = fuse.add_argument_group("run")
    run.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replace an existing DST (a Zarr store or an empty directory)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into DST (same parameters): only missing blocks "
        "are computed",
    )
    run.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    run.add_argument("--scheduler", metavar="NAME|ADDRESS", help=SCHEDULER_HELP)
    fuse.set_defaults(func=_cmd_fuse)

    demo = sub.add_parser(
        "demo",
        help="make a synthetic focus stack, fuse it and write PNG previews",
        description=_wrap(
            "Write a synthetic focus stack with known ground truth to DIR/stack.ome.zarr, "
            "fuse it into DIR/fused.ome.zarr (with depth and selectivity maps), write PNG "
            "previews (plane.png: the middle plane, fused.png, depth.png, truth.png) and print "
            "the PSNR of the fused image and of the middle plane against the ground truth."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("dir", metavar="DIR", help="output directory (created if missing)")
    demo.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    demo.add_argument("--planes", type=int, default=21, help="number of focal planes (default 21)")
    demo.add_argument(
        "--rgb", action="store_true", help="colour (uint8 RGB) stack instead of grey uint16"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--scheduler", metavar="NAME|ADDRESS", help=SCHEDULER_HELP)
    demo.add_argument(
        "--overwrite", action="store_true", help="replace the stores of an earlier demo in DIR"
    )
    demo.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser(
        "info",
        help="describe a focus stack and how fuse would process it (chunks, tasks, memory)",
        description=_wrap(
            "Print the axes, shape, dtype, chunks, OME version and scale of SRC, and the "
            "blocks, halo, task count and memory per task that fuse would use with the same "
            "options. Reads metadata only.",
            PRECEDENCE,
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("src", metavar="SRC", help="Zarr array or OME-Zarr image (path or URL)")
    _add_config_option(info)
    _add_input_options(info)
    _add_algorithm_options(info, full=False)
    _add_layout_options(info, full=False)
    info.set_defaults(func=_cmd_info)
    return parser


def _cluster_override(value: str | None) -> dict[str, Any] | None:
    """``--scheduler`` as a replacement cluster section, or None when not given."""
    from ._config import LOCAL_SCHEDULERS

    if value is None:
        return None
    if value in LOCAL_SCHEDULERS:
        return {"kind": "local", "scheduler": value}
    if ":" in value and value.strip() == value and " " not in value:
        return {"kind": "distributed", "address": value}
    raise _UsageError(
        f"--scheduler must be synchronous, threads, processes or a scheduler address such as "
        f"tcp://host:8786, got {value!r}"
    )


def _configure(args: argparse.Namespace):
    """The config file (if any) with the command-line options applied on top."""
    from ._config import Config, check_value, load_config

    config = load_config(args.config) if getattr(args, "config", None) else Config()

    def given(attr: str) -> bool:
        return getattr(args, attr, None) is not None

    sections: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, attr: str, option: str) -> None:
        if given(attr):
            value = getattr(args, attr)
            if section == "output" and key == "chunks" and value == "auto":
                value = None
            sections.setdefault(section, {})[key] = check_value[f"{section}.{key}"](value, option)

    put("algorithm", "nhsize", "nhsize", "--nhsize")
    put("algorithm", "alpha", "alpha", "--alpha")
    put("algorithm", "sth", "sth", "--sth")
    put("algorithm", "focus", "focus", "--focus")
    put("input", "axes", "axes", "--axes")
    put("input", "level", "level", "--level")
    put("input", "storage_options", "storage_options", "--storage-options")
    put("input", "channels", "channels", "--channels")
    put("output", "storage_options", "dst_storage_options", "--dst-storage-options")
    put("output", "levels", "levels", "--levels")
    put("resources", "stall_timeout", "stall_timeout", "--stall-timeout")
    put("output", "depth_map", "depth_map", "--depth-map")
    put("output", "selectivity_map", "selectivity_map", "--selectivity-map")
    put("output", "chunks", "chunks", "--chunks")
    put("output", "overwrite", "overwrite", "--overwrite")
    put("resources", "memory_per_task", "memory_per_task", "--memory-per-task")
    put("resources", "device", "device", "--device")
    cluster = _cluster_override(getattr(args, "scheduler", None))
    if cluster is not None:
        sections["cluster"] = cluster
    return config.with_overrides(**sections)


# -------------------------------------------------------------------- commands


_PLAN_KEYS = (
    "axes", "level", "channels", "nhsize", "focus", "alpha", "sth", "depth_map",
    "selectivity_map", "chunks", "memory_per_task", "storage_options", "device",
)  # fmt: skip


def _plan(src: str, kw: dict[str, Any]):
    """Open ``src`` and plan the fusion as ``fuse_zarr`` will: validates the source and every
    parameter, reads no pixel data."""
    from ._fusion import plan_fusion

    return plan_fusion(src, **{k: kw[k] for k in _PLAN_KEYS if k in kw})


def _cmd_fuse(args: argparse.Namespace) -> int:
    config = _configure(args)
    from ._pipeline import fuse_zarr

    kw = config.fuse_kwargs()
    if config.cluster.kind != "local":
        _quiet_distributed()
        # Refuse bad input before connecting to a scheduler or queueing batch jobs;
        # fuse_zarr checks all this again.
        from ._destination import Destination
        from ._locations import resolve

        fusion = _plan(args.src, kw)
        dst = resolve(args.dst, name="dst", storage_options=kw["dst_storage_options"],
                      writable=True)  # fmt: skip
        Destination(dst, protect=fusion.source.protected()).check(
            overwrite=kw["overwrite"], resume=args.resume
        )
    start = time.perf_counter()
    with _report_progress_notes(), config.cluster_context() as scheduler:
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
    axes = "".join(image.metadata.dimension_names or ())
    extras = [name for name in ("depth", "selectivity") if name in out]
    plus = f" + {', '.join(extras)}" if extras else ""
    print(
        f"wrote {args.dst}: {axes} {tuple(image.shape)} {image.dtype}{plus} in {seconds:.2f} s",
        flush=True,
    )
    return EXIT_OK


@contextlib.contextmanager
def _report_progress_notes() -> Iterator[None]:
    """Show fstack_dask's INFO notes (resuming, a stale lock taken over) on stderr."""
    logger = logging.getLogger("fstack_dask")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    handler.setLevel(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _cmd_demo(args: argparse.Namespace) -> int:
    for option, value, low in (("--size", args.size, 1), ("--planes", args.planes, 1)):
        if value < low:
            raise _UsageError(f"{option} must be an integer >= {low}, got {value}")
    if args.seed < 0:
        raise _UsageError(f"--seed must be an integer >= 0, got {args.seed}")
    cluster = _cluster_override(args.scheduler)
    from ._config import Config
    from ._demo import run_demo

    config = Config() if cluster is None else Config().with_overrides(cluster=cluster)
    with config.cluster_context() as scheduler:
        run_demo(
            args.dir, size=args.size, planes=args.planes, rgb=bool(args.rgb), seed=args.seed,
            overwrite=args.overwrite, progress=not args.no_progress, scheduler=scheduler,
        )  # fmt: skip
    return EXIT_OK


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _cmd_info(args: argparse.Namespace) -> int:
    config = _configure(args)
    import numpy as np

    from ._params import cpu_count

    kw = config.fuse_kwargs()
    fusion = _plan(args.src, kw)
    source, layout = fusion.source, fusion.layout
    workers = cpu_count() if config.cluster.kind == "local" else 1
    plan, cache = fusion.plan(workers)
    axes, shape = source.axes, source.shape
    size_of = dict(zip(axes, shape, strict=True))
    out = fusion.spec.array("0")
    if "c" not in axes:
        channels = "none"
    elif layout.rgb:
        channels = "rgb (3 channels fused with one shared weight map)"
    else:
        channels = f"independent ({size_of['c']} channel(s), each fused on its own)"
    if source.scale:
        scale = ", ".join(
            f"{a}={source.scale[a]:g}" + (f" {source.units[a]}" if a in source.units else "")
            for a in axes
            if a in source.scale and a != "c"
        )
    else:
        scale = "unknown (1.0 is written)"
    task = fusion.task_bytes(fusion.block)
    ny, nx = plan.grid
    fmt = f"OME-NGFF {source.ome_version}" if source.ome_version else source.kind
    lines = [
        ("source", source.location.url if source.location else source.description),
        ("format", fmt + (f", level {source.level}" if source.level else "")),
        ("axes", axes),
        ("shape", str(shape)),
        ("dtype", str(np.dtype(source.dtype))),
        ("source chunks", str(tuple(int(c) for c in source.unit_shape))),
        ("scale", scale),
        ("channels", channels),
        ("output", f"{out.axes} {out.shape} {np.dtype(out.dtype)}"),
        ("halo", f"{fusion.halo} px (nhsize {fusion.params['nhsize']})"),
        ("chunks (y, x)", f"{fusion.block[0]}, {fusion.block[1]}"),
        ("blocks", f"{ny} x {nx} (y x x) per image, {plan.n_images} image(s)"),
        ("tasks", str(plan.n_blocks)),
        ("strip", f"{plan.strip} block(s) wide (the order that shares decoded chunks)"),
        (
            "memory per task",
            f"{_mib(task)} (block with halo and the kernel's arrays; budget "
            f"{_mib(fusion.memory_per_task)})",
        ),
        ("memory per process", f"<= {workers} x {_mib(fusion.memory_per_task)} "
         f"(tasks {_mib(workers * task)}, decoded-chunk cache {_mib(cache)})"),
        ("device", _device_line(fusion, workers)),
    ]  # fmt: skip
    width = max(len(k) for k, _ in lines) + 2
    for key, value in lines:
        print(f"{key + ':':<{width}}{value}")
    if task > fusion.memory_per_task:
        print(
            f"warning: a task needs about {_mib(task)}, more than the "
            f"{_mib(fusion.memory_per_task)} budget; choose smaller --chunks "
            f"or a larger --memory-per-task",
            flush=True,
        )
    return EXIT_OK


def _device_line(fusion: Any, workers: int) -> str:
    if fusion.params["device"] != "cuda":
        return "cpu"
    from ._cuda import device_block_memory

    lay, halo = fusion.layout, fusion.halo
    shape = (fusion.block[0] + 2 * halo, fusion.block[1] + 2 * halo)
    gpu = device_block_memory(shape, lay.n_planes, lay.n_channels, fusion.source.dtype.itemsize,
                              float16=fusion.source.dtype == "float16")  # fmt: skip
    return (
        f"cuda: {_mib(gpu)} of GPU memory per task, <= {workers} x {_mib(gpu)} per process "
        "(one process per GPU)"
    )


# ------------------------------------------------------------------------ main


def _exit_code(exc: BaseException) -> int:
    from ._errors import DestinationLockedError, SourceValueError

    if isinstance(exc, (DestinationLockedError, SourceValueError, PermissionError)):
        return EXIT_FAILURE
    if isinstance(exc, (_UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError)):
        return EXIT_USAGE
    return EXIT_FAILURE


# The library's messages name Python parameters; on the command line, name the options.
_API_TO_OPTION = (
    ("overwrite=True and resume=False", "--overwrite and without --resume"),
    ("resume=True", "--resume"),
    ("pass axes= with", "pass --axes with"),
    ("omit axes= or pass axes=", "omit --axes or pass --axes "),
    ("e.g. axes='zyx'", "e.g. --axes zyx"),
    ("overwrite=True", "--overwrite"),
    ("device='cuda'", "--device cuda"),
    ("use device='cpu'", "use --device cpu"),
)


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the exception holds
    for api, option in _API_TO_OPTION:
        text = text.replace(api, option)
    if isinstance(exc, (_UsageError, ValueError, TypeError, OSError, RuntimeError)) and text:
        if isinstance(exc, OSError) and exc.filename and exc.filename not in text:
            text = f"{text}: {exc.filename!r}"
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


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
        failure, 130 when interrupted (see ``fstack-dask --help``).

    Examples
    --------
    >>> main(["--version"])
    fstack-dask 0.1.0
    0
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    previous = _on_sigterm_raise()
    try:
        return int(args.func(args))
    except KeyboardInterrupt as exc:
        hint = (
            "; rerun the same command with --resume to continue" if args.command == "fuse" else ""
        )
        if isinstance(exc, _Terminated):
            _error(f"terminated{hint}")
            return EXIT_TERMINATED
        _error(f"interrupted{hint}")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.traceback:
            raise
        _error(_message(exc))
        return _exit_code(exc)
    finally:
        with contextlib.suppress(ValueError):  # not in the main thread
            signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interruption so that a run stops cleanly (locks released,
    worker processes ended, finished blocks kept for --resume)."""


def _on_sigterm_raise():
    def handler(signum, frame):
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. called from a test thread)
        return signal.SIG_DFL


def _quiet_distributed() -> None:
    """distributed logs warnings, errors and shutdown noise to stderr; on the command line
    the one-line error is ours to write.

    distributed sets its loggers' levels when it is imported, so this imports it first (the
    command line calls it only for runs on a cluster).
    """
    import distributed  # noqa: F401 - sets its loggers up, which we then turn down

    names = ("distributed", "distributed.client", "distributed.worker", "distributed.nanny",
             "distributed.scheduler", "distributed.core", "distributed.comm", "tornado",
             "tornado.application", "asyncio")  # fmt: skip
    for logger in names:
        logging.getLogger(logger).setLevel(logging.CRITICAL)
