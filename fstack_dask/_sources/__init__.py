"""Sources: every reader of a focus stack, each returning one :class:`~.source.Source`.

What lives here: which reader for which input (``open``), the ``Source`` description and
its identity for resumes (``source``), Zarr and OME-Zarr (``zarr``, with ``zarr_metadata``
for its metadata files checked before zarr reads them, ``zarr_unfinished`` for a node
inside an unfinished output and ``zarr_coords`` for the coordinate arrays xarray stores
beside an array), TIFF (``tiff``, with
``tiff_checks`` for headers that lie, ``tiff_array`` for reading a series by region and
``tiff_metadata`` for pixel sizes, units and channels from its tags and descriptions),
folders and globs of plane files (``images``, with
``plane_files`` for the files a folder, glob or list names, ``plane_names`` for their
order, the files used, names that break the others' pattern, litter, ``plane_stacks`` for
whether they count one stack (several refused, a restarted counter or a gap said),
``image_headers`` for what each file's header says and ``image_planes`` for the array that
decodes the planes on demand), HDF5
(``hdf5``), microscope vendors' files, each through its own library (``czi``, ``nd2``,
``lif``, with what they share, scenes and region reads, in ``vendor``), arrays in memory
(``arrays``), what the readers share (``common``,
``stack_meta``), an in-memory source handed to worker processes once (``share``), and
reading one block with its halo (``fetch``) through a cache that decodes each stored unit
about once (``unit_cache``).

May import: the shared top-level modules only (``fstack_dask._locations``, ``_ngff``,
``_params``, ``_errors``, ...). Never the algorithm, outputs, runs or the CLI.
"""
