"""Runs: getting a fusion computed, from an opened source to a finished output.

What lives here: ``fuse_zarr``, choosing the run for its dst (``fuse_zarr``), one run into
an OME-Zarr store as a sequence of named steps (``run``), a run into a TIFF dst through a
working store beside it (``tiff_output``), the fusion's plan from metadata (``fusion``),
blocks, their order and memory (``plan``), reading a sharded source by shards or by their
chunks (``reading``), one block's work (``blocks``), the pyramid's
blocks (``pyramid``), the passes over level 0 and then each level (``passes``), what ``dst``
holds and whether a resume continues this run (``resume``), whether the source changed under
a run, its finished blocks read again where its files did (``source_changes``), which
scheduler a run gets and getting it ready (``scheduler_choice``), a local cluster's workers
kept through an interrupt of the process that made them (``shield``), the bounded window of tasks
in flight on it (``schedulers``), how tasks of many blocks report each block
(``reports``), waiting for tasks, a stalled cluster and a lost scheduler (``waiting``), a
stopped run's last calls to a cluster's workers, bounded (``cleanup``), which runs may still
write from a process, so that a stopped run's late tasks write nothing (``fence``), what
became of a batch cluster's jobs (ended, held, pending for good, failed at start-up:
``batch_jobs``), PBS's holds, read from the job script as qsub reads it, and qstat's states
(``pbs_jobs``), halo
exchange, which decodes each source unit once on any scheduler: its plan of waves and row
segments (``waves``), its driver (``exchange``), a wave's strips as they run and what each
submits next (``exchange_strips``), what a worker does (``halo``) and where its
tasks run (``runners``), a dry run of its plan that counts each worker's decodes and fuses
without reading anything (``dry_run``), our worker processes (``pool``), the C allocator
while a run's tasks use it: a worker's thresholds and the kept cores' own mappings
(``allocator``), progress (``progress``), where ``device="cuda"`` is checked once the
scheduler is known (``device``), and the lazy ``fuse`` (``lazy``) with its graph, validated,
planned and built as a ``map_overlap`` (``lazy_layers``), its blocks and
what its tasks run on each block (``lazy_chunks``) and its halo, dask's overlap with the strips
copied out of each chunk (``lazy_overlap``), built in tiles of blocks that each read
their own input (``lazy_bands``).

May import: sources, the algorithm, outputs and the shared top-level modules. Never the CLI.
"""
