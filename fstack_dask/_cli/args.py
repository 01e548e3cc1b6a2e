"""The ``fstack-dask`` command line's options: the parser, exit statuses, and how the
options and a ``--config`` file combine into one validated configuration."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any, NoReturn

from .._version import __version__

__all__ = ["UsageError", "build_parser", "cluster_override", "configure", "printable", "shown"]

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
  {EXIT_TERMINATED}  terminated (SIGTERM, e.g. a batch job's time limit); likewise
  128+N  stopped the same way by signal N: SIGHUP (the terminal or ssh session
       gone), SIGUSR1 or SIGUSR2 (a batch system's warning, e.g. SLURM's --signal),
       SIGXCPU (a CPU-time limit); an ignored one (nohup) stays ignored

Errors are reported as one line, "fstack-dask: error: <message>", on stderr
(--traceback shows the full traceback instead). Warnings ("fstack-dask: warning:
...", e.g. a file not named like the other planes) leave the status at 0."""

PRECEDENCE = (
    "Values are taken from, in increasing priority: the built-in defaults, the --config "
    "YAML file, then the options given here."
)

SRC_HELP = (
    "the focus stack: a folder of TIFF, PNG or JPEG planes (one per file, in name order), a "
    "quoted glob of them ('planes/*.tif'), a multi-page TIFF (OME-TIFF, ImageJ), an HDF5 "
    "dataset (file.h5/group/dataset), a CZI, ND2 or LIF file, or a Zarr array or OME-Zarr "
    "image (path or URL)"
)

SCHEDULER_HELP = (
    "synchronous, threads or processes (a local Dask scheduler), or the address of a "
    "running distributed scheduler such as tcp://host:8786; overrides the config's "
    "cluster section (default: threads)"
)


def _wrap(*paragraphs: str) -> str:
    """Paragraphs filled to 79 columns (the help formatter keeps them as they are)."""
    return "\n\n".join(textwrap.fill(p, 79) for p in paragraphs)


def printable(text: str) -> str:
    """``text`` with each character a terminal acts on or cannot show (a newline, ESC, BEL,
    a right-to-left override, a byte of a name that is not UTF-8) written as a Python string
    literal writes it: a crafted file name or metadata value cannot clear the screen, forge a
    line of output, or stop a strict UTF-8 stdout (an adversarial run on names, 2026-12-06)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(path: object) -> str:
    """A path as a message shows it: as it is, or quoted as Python quotes it where it holds
    a character :func:`printable` would escape."""
    text = str(path)
    return text if text.isprintable() else repr(text)


class UsageError(Exception):
    """A command-line mistake: reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line instead of usage + message + exit.

    Abbreviated options are refused: ``--nhsiz`` must not silently mean ``--nhsize``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


# --------------------------------------------------------------------- parsing


def _csv_numbers(text: str) -> list[float]:
    from .config_values import ascii_float

    values = [ascii_float(p) for p in text.replace(";", ",").split(",")]
    if None in values:  # (float() also read "1_0" and "٣")
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,1,2.5, got {text!r}"
        )
    return values  # type: ignore[return-value]


def _int_arg(text: str) -> int:
    from .config_values import ascii_int

    value = ascii_int(text)
    if value is None:  # (int() also read "1_0" and "٩"; "²" failed naming nothing)
        raise argparse.ArgumentTypeError(f"expected an integer such as 3, got {text!r}")
    return value


def _float_arg(text: str) -> float:
    from .config_values import ascii_float

    value = ascii_float(text)
    if value is None:  # (float() also read "0_2" as 2.0 and "０.２")
        raise argparse.ArgumentTypeError(f"expected a number such as 0.2 or 1e-3, got {text!r}")
    return value


def _chunks_arg(text: str) -> Any:
    if text.strip().lower() == "auto":
        return "auto"
    parts = [p.strip() for p in text.lower().replace("x", ",").split(",")]
    # ASCII digits only: int() also reads "٦٤" and "1_0" (an adversarial run)
    values = [int(p) for p in parts if p.isascii() and p.isdigit()]
    if len(values) != len(parts):
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
        help="axes of an array without dimension names (a plain Zarr or HDF5 array, an "
        "unlabelled TIFF), one letter per dimension, e.g. zyx, czyx, yxz (z: focus, c: "
        "channel, other letters: batch); plane files have a fixed order and refuse it",
    )
    g.add_argument(
        "--scene",
        metavar="N|NAME",
        help="the scene (CZI), position (ND2), image (LIF) or series (TIFF) to fuse when SRC "
        "holds several: its index or name (the same as SRC/N)",
    )
    g.add_argument(
        "--level",
        type=_int_arg,
        metavar="N",
        help="pyramid level of an OME-Zarr or pyramidal TIFF source to fuse (default 0: full "
        "resolution)",
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
        "fused on its own; auto (default): rgb for colour samples, and for 3 uint8 channels "
        "unless the format says they are separate (OME/ImageJ TIFF pages, omero colours)",
    )


def _add_algorithm_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("algorithm (Pertuz et al. 2013)")
    g.add_argument(
        "--nhsize",
        metavar="N|auto",
        help="focus-measure window size in pixels (default 9), or auto: chosen from the data",
    )
    g.add_argument(
        "--auto",
        action="store_true",
        default=None,
        help="choose --nhsize and --sth from the data (noise level and texture of a fixed "
        "sample of tiles) instead of the reference's 9 and 13; for noisy stacks",
    )
    if full:
        g.add_argument(
            "--alpha",
            type=_float_arg,
            metavar="A",
            help="steepness of the selectivity-to-weight map, in [1e-6, 1] (default 0.2)",
        )
        g.add_argument(
            "--sth",
            metavar="S|auto",
            help="selectivity threshold in dB (default 13), or auto: chosen from the data",
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
        type=str.lower,  # as device= in Python, whatever the case
        choices=("cpu", "cuda"),
        help="where each block is fused: cpu (default) or cuda, the CUDA GPU of each worker "
        '(pip install "fstack_dask[gpu]")',
    )
    if full:
        g.add_argument(
            "--levels",
            metavar="N|auto",
            help="multiscale levels besides full resolution, each 2x2 averaged (default auto: "
            "until the image fits in one chunk, for a TIFF DST in one 512 px tile; 0 for none)",
        )
        g.add_argument(
            "--dst-storage-options",
            metavar="JSON",
            help="fsspec options for a remote DST, as a JSON object",
        )
        g.add_argument(
            "--stall-timeout",
            type=_float_arg,
            metavar="SECONDS",
            help="on a cluster, fail when no block finishes for this long (default 600)",
        )


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration file (keys: configs/README.md in the fstack_dask repository); "
        "options given here override it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=_wrap(
            "Out-of-core all-in-focus fusion of focus stacks (Pertuz et al. 2013), with Dask: "
            "folders or globs of TIFF, PNG or JPEG planes, multi-page TIFF (OME-TIFF, ImageJ), "
            "HDF5, Zarr or OME-Zarr, CZI, ND2 or LIF in; a multiscale OME-Zarr image or a "
            "pyramidal OME-TIFF out.",
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
        help="fuse a focus stack into an all-in-focus OME-Zarr image or OME-TIFF",
        description=_wrap(
            "Fuse the focus stack SRC into the all-in-focus image DST: an OME-Zarr 0.5 image, or "
            "a pyramidal OME-TIFF where DST ends in .tif or .tiff. Prints one line at the end: "
            "the output, its axes, shape and dtype, and the time taken.",
            PRECEDENCE,
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fuse.add_argument("src", metavar="SRC", help=SRC_HELP)
    fuse.add_argument(
        "dst",
        metavar="DST",
        help="output OME-Zarr image group, a folder such as fused.ome.zarr (path or URL), or a "
        "pyramidal OME-TIFF (a local path ending in .tif or .tiff)",
    )
    _add_config_option(fuse)
    _add_input_options(fuse)
    _add_algorithm_options(fuse, full=True)
    _add_layout_options(fuse, full=True)
    run = fuse.add_argument_group("run")
    run.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replace DST if it is an earlier fstack_dask output (the new output is written "
        "beside it and swapped in once complete); an empty folder is written into, and "
        "anything else (a file, another Zarr store, a folder with other files) is refused",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into DST (same parameters): only missing blocks "
        "are computed",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="do not show progress (a bar on a terminal, else a line every 30 s)",
    )
    run.add_argument("--scheduler", metavar="NAME|ADDRESS", help=SCHEDULER_HELP)

    demo = sub.add_parser(
        "demo",
        help="write a synthetic focus stack as TIFF planes, fuse it, write PNG previews",
        description=_wrap(
            "Write a synthetic focus stack with known ground truth as a folder of TIFF planes, "
            "DIR/planes/ (as a microscope saves them), fuse that folder into "
            "DIR/fused.ome.zarr (a multiscale OME-Zarr with depth and selectivity maps), write "
            "PNG previews (plane.png: the middle plane, fused.png, depth.png, truth.png) and "
            "print the PSNR of the fused image and of the middle plane against the ground "
            "truth. The same as 'fstack-dask fuse DIR/planes DIR/fused.ome.zarr --depth-map "
            "--selectivity-map' on your data."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("dir", metavar="DIR", help="output directory (created if missing)")
    demo.add_argument("--size", type=_int_arg, default=512,
                      help="image side in pixels, 32 to 4096 (default 512)")  # fmt: skip
    demo.add_argument("--planes", type=_int_arg, default=21,
                      help="number of focal planes, 5 to 200 (default 21)")  # fmt: skip
    demo.add_argument(
        "--rgb", action="store_true", help="colour (uint8 RGB) stack instead of grey uint16"
    )
    demo.add_argument("--seed", type=_int_arg, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--scheduler",
        metavar="NAME|ADDRESS",
        help=SCHEDULER_HELP.split("; overrides")[0] + " (default: threads)",
    )
    demo.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier demo wrote in DIR"
    )
    demo.add_argument("--no-progress", action="store_true", help="do not show a progress bar")

    info = sub.add_parser(
        "info",
        help="describe a focus stack and how fuse would process it (chunks, tasks, memory)",
        description=_wrap(
            "Print the axes, shape, dtype, chunks, OME version and scale of SRC (for plane "
            "files: how many, the first and the last), and the blocks, halo, task count and "
            "memory per task that fuse would use with the same options; warn as fuse would. "
            "For an fstack_dask output: its levels, scale, source, parameters, and whether it "
            "is complete or can be resumed. Reads metadata only.",
            PRECEDENCE,
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("src", metavar="SRC", help=SRC_HELP + "; or an fstack_dask output")
    _add_config_option(info)
    _add_input_options(info)
    _add_algorithm_options(info, full=False)
    _add_layout_options(info, full=False)
    return parser


def scene_src(src: str, scene: str | None) -> str:
    """SRC with ``--scene`` appended as the path through the file that names it."""
    if scene is None:
        return src
    import os

    from .._sources.open import _TIFF, VENDOR_FORMATS

    if os.path.splitext(src.rstrip("/"))[1].lower() not in (*VENDOR_FORMATS, *_TIFF):
        raise UsageError(
            f"--scene applies to CZI, ND2, LIF and TIFF files (a TIFF's series), and SRC "
            f"{src!r} is none; name the image another way (--level, or the path to it)"
        )
    if not scene.strip() or "/" in scene:
        raise UsageError(f"--scene must be a scene's index or name, got {scene!r}")
    if any(ch in src for ch in "*?[") and not os.path.exists(src):
        raise UsageError(
            f"--scene applies to one file, and SRC {src!r} is a pattern of plane files"
        )
    return f"{src.rstrip('/')}/{scene}"


def cluster_override(value: str | None) -> dict[str, Any] | None:
    """``--scheduler`` as a replacement cluster section, or None when not given."""
    from .config_values import LOCAL_SCHEDULERS

    if value is None:
        return None
    if value in LOCAL_SCHEDULERS:
        return {"kind": "local", "scheduler": value}
    from .._runs.scheduler_choice import is_address

    if is_address(value):  # (distributed's own messages, naming no option, before)
        return {"kind": "distributed", "address": value}
    raise UsageError(
        f"--scheduler must be synchronous, threads, processes or a scheduler address such as "
        f"tcp://host:8786, got {value!r}"
    )


def configure(args: argparse.Namespace):
    """The config file (if any) with the command-line options applied on top."""
    from .config import Config, check_value, load_config

    # "" is refused there, not taken for no file: ``--config "$CFG"`` with CFG unset ran on
    # the defaults, exit 0 (a sweep of contract 4)
    config = load_config(args.config) if getattr(args, "config", None) is not None else Config()

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
    put("algorithm", "auto", "auto", "--auto")
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
    if not given("memory_per_task") and "resources.memory_per_task" in config.given:
        # what a message about the budget names (it named the option)
        args.memory_per_task_named = "resources.memory_per_task"
    put("resources", "device", "device", "--device")
    cluster = cluster_override(getattr(args, "scheduler", None))
    if cluster is not None:
        sections["cluster"] = cluster
    return config.with_overrides(**sections)
