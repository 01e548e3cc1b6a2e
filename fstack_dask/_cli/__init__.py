"""The command line: ``fstack-dask fuse | info | demo``, its options and config files.

What lives here: ``main`` and the commands (``main``), the argument parser (``args``),
config files and their keys (``config``, ``config_values``), ``info`` (``info``, with what it
says of an output of ours in ``info_output``),
``demo`` (``demo``), how a run told to stop ends (``stopping``), and what a command changes
in a host that calls it, put back (``host``).

May import: everything below it (runs, sources, the algorithm, outputs, the shared modules).
"""

from .main import main

__all__ = ["main"]
