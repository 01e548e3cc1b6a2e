"""Runs: getting a fusion computed, from an opened source to a finished output.

What lives here: ``fuse_zarr``, choosing the run for its dst (``fuse_zarr``), one run into
an OME-Zarr store as a sequence of named steps (``run``), a run into a TIFF dst through a
working store beside it (``tiff_output``), the fusion's
plan from metadata (``fusion``), blocks, their order and memory (``plan``), one block's work
(``blocks``), the pyramid's blocks (``pyramid``), the passes over level 0 and then each
level (``passes``), what ``dst`` holds and whether a resume continues this run (``resume``), the
schedulers and the bounded window of tasks in flight (``schedulers``), progress
(``progress``), where ``device="cuda"`` is checked once the scheduler is known (``device``),
and the lazy ``fuse`` graph (``lazy``).

May import: sources, the algorithm, outputs and the shared top-level modules. Never the CLI.
"""
