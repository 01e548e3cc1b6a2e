"""dask's configuration files, checked before dask is imported: :func:`check_dask_config`.

Apart from :mod:`._params` because it must import nothing heavy: it runs before NumPy and dask
are imported, outside the lazy import that holds a Ctrl-C (a Ctrl-C landing in NumPy's C
initialisation comes back as NumPy's ImportError, many lines, exit 1).
"""

from __future__ import annotations

import os
import stat
import sys

__all__ = ["check_dask_config"]


def check_dask_config() -> None:
    """Refuse, before dask is imported, a configuration file that its import would read
    without end.

    dask reads each file its configuration paths name (``DASK_CONFIG``, ``~/.config/dask``,
    ``/etc/dask``, ...) to its end when imported: ``DASK_CONFIG=/dev/zero`` (or a FIFO) hung
    ``fstack-dask info`` and filled memory, deaf to Ctrl-C, until the kernel killed it (an
    adversarial run). A few ``stat`` calls; ``os.devnull`` reads empty and passes.
    """
    if "dask.config" in sys.modules:  # read already
        return
    for path in _dask_config_files():
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or os.path.samefile(path, os.devnull):
                continue
        except OSError:  # dask skips what it cannot open
            continue
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        )
        raise ValueError(
            f"dask's configuration {path!r} (DASK_CONFIG or a folder dask reads) is {kind}, "
            f"which dask would read without end when imported; expected YAML files"
        )


def _dask_config_files() -> list[str]:
    """The paths dask's import reads (``dask.config.collect_yaml`` of ``_get_paths``)."""
    import site

    folders = [os.getenv("DASK_ROOT_CONFIG", "/etc/dask"), os.path.join(sys.prefix, "etc", "dask"),
               *(os.path.join(p, "etc", "dask") for p in getattr(site, "PREFIXES", [])),
               os.path.join(os.path.expanduser("~"), ".config", "dask")]  # fmt: skip
    if "DASK_CONFIG" in os.environ:
        folders.append(os.environ["DASK_CONFIG"])
    files = []
    for folder in dict.fromkeys(folders):
        if not os.path.isdir(folder):
            files.append(folder)
            continue
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        exts = (".json", ".yaml", ".yml")
        files += [os.path.join(folder, n) for n in names if os.path.splitext(n)[1].lower() in exts]
    return files
