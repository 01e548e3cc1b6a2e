"""Outputs: the OME-Zarr image a run writes, and everything that keeps users' data safe.

What lives here: the output's description and durable block writes (``write``), the
pyramid's levels and their 2 x 2 means (``pyramid``), the display windows from the image's
data (``display``), the pyramidal OME-TIFF converted from a
finished OME-Zarr store and moved into place (``tiff``), ``write_stack``, PNG previews
(``png``), what a run may do with ``dst`` (``destination_checks``) and how it claims and
swaps (``destination``),
which files of an output are ours and the order a removal takes them in (``removal``), what
an interrupted overwrite leaves beside dst and what becomes of it (``leftovers``), the
folder moves behind that: exclusive creates, the atomic exchange, what
a replaced folder keeps (``folders``), the swap's fallback where dst cannot be renamed,
entry by entry (``inplace``), a destination's life through one run (``lifecycle``),
which folders are our outputs and which of their entries are ours, by record
(``ownership``), the state folder's id file, run record and done-markers (``state``), the source's
fingerprint kept with an output (``fingerprint``), the lock as a lease (``lock``), and
when a lock's holder may still be running, so that it is live or stale (``staleness``).

May import: the shared top-level modules only. Never sources, the algorithm, runs or the
CLI: a run hands this part plain values (a spec, a record, a block's arrays).
"""
