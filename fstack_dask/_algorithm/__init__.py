"""The algorithm: Pertuz et al. (2013) per pixel and per block, free of dask and storage.

What lives here: the per-pixel mathematics written once for the CPU and the GPU
(``pixel``, ``jit``), the NumPy engine that is the readable specification (``numpy_engine``),
the compiled CPU engine (``compiled``, ``fused``), the CUDA engine (``cuda``,
``cuda_kernels``), ``fuse_block`` which runs one block on one of them (``block``), the
choice of ``nhsize``/``sth`` from the data (``auto``), the in-memory ``focus_stack``, and the
device argument and whether this process has a usable GPU (``device``).

May import: the shared top-level modules (``fstack_dask._params``, ``_errors``, ...) only.
Never sources, outputs, runs or the CLI: whoever knows the scheduler decides where blocks
run and hands the engine a plain value.
"""
