#!/usr/bin/env bash
# Download, into .whl/ at the repository root, the wheels that benchmarks/gpu_check.sh installs
# offline on a GPU machine: fstack_dask's dependencies that its image lacks (dask, distributed,
# zarr and theirs), for its Python 3.12 on x86-64, and NumPy 2.4 in .whl/numpy/: the image
# ships NumPy 2.5, with which numba-cuda 0.30 cannot compile (docs/gpu.md, "On a GPU"), so
# gpu_check.sh puts 2.4 first on the path (and checks the refusal with the image's own 2.5).
# Run it here (where pip reaches a registry), then carry .whl to the GPU machine. numba,
# numba-cuda, SciPy, pytest and the CUDA libraries are the image's own and are not carried
# (two versions of one package would clash).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"  # never committed
rm -rf .whl && mkdir .whl
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "dask[array]==2026.8.0" "distributed==2026.8.0" "zarr==3.1.6" "numcodecs==0.16.6" \
  "xxhash==3.6.0"
# Already on the GPU machine's image (benchmarks/gpu_check.sh prints their versions there).
image_has="click cloudpickle fsspec jinja2 markupsafe msgpack numpy packaging psutil pyyaml
sortedcontainers toolz typing_extensions zipp numba llvmlite scipy"
for name in $image_has; do
  rm -f .whl/"${name}"-[0-9]*.whl
done
mkdir .whl/numpy
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl/numpy "numpy==2.4.6"
ls .whl .whl/numpy
du -sh .whl
