"""The argument types of every kernel launch, recorded in numba's CUDA simulator.

``tests/test_gpu.py`` runs :func:`main` with ``NUMBA_ENABLE_CUDASIM=1``: every case of
:mod:`cuda_cases` is fused with ``engine="cuda"`` while each launch's arguments are typed by
``numba.typeof`` (the simulator's device arrays type as a GPU's do: dtype, dimensions,
layout), and the distinct ``(kernel, signature)`` pairs are pickled to the path given
(``main([path, *case_names])``: those cases only). The PTX test then compiles exactly those
signatures for sm_90, so the signatures it checks are the ones the engine launches, not a
copy of them kept by hand; the disk cache's test compiles the uint16 case's.
"""

from __future__ import annotations

import pickle
import sys
import warnings

import numba

from fstack_dask._algorithm import cuda as _cuda
from fstack_dask._algorithm.block import fuse_block


def main(argv: list[str]) -> int:
    from cuda_cases import cases

    warnings.simplefilter("ignore", RuntimeWarning)
    seen: dict[tuple, None] = {}
    launch = _cuda._Workspace.launch
    names = {id(k): name for name, k in _cuda._target()[1].items()}

    def recording(self, kernel, work, *args):
        seen[(names[id(kernel)], tuple(numba.typeof(a) for a in args))] = None
        return launch(self, kernel, work, *args)

    _cuda._Workspace.launch = recording
    chosen = set(argv[1:])
    for name, (block, kwargs) in cases().items():
        if chosen and name not in chosen:
            continue
        fuse_block(block, engine="cuda", with_depth=True, with_selectivity=True, **kwargs)
    with open(argv[0], "wb") as f:
        pickle.dump(list(seen), f)
    print(len(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
