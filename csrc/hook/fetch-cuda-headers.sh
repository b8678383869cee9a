#!/usr/bin/env bash
# Fetch cuda.h / cudaTypedefs.h (and friends) from the pinned PyPI wheel
# nvidia-cuda-runtime, so the hook builds with gcc + CMake alone (no CUDA toolkit).
# The headers land in a cache OUTSIDE the repository and are reused when present.
# Prints the include directory on stdout (the only thing it prints there).
#
#   usage: csrc/hook/fetch-cuda-headers.sh [--copy-to DIR]
#     --copy-to DIR   also copy the include dir to DIR (e.g. .cuda/include for a
#                     machine without network, such as the GPU device machine)
set -euo pipefail

VERSION="${FLEXAI_CUDA_HEADERS_VERSION:-13.0.96}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/flexai/cuda-headers/${VERSION}"
INC="${CACHE}/include"
PY="${PYTHON:-python3}"

if [[ ! -f "${INC}/cudaTypedefs.h" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp}"' EXIT
  "${PY}" -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --python-version 3.11 \
      -d "${tmp}" "nvidia-cuda-runtime==${VERSION}" >&2
  whl="$(ls "${tmp}"/nvidia_cuda_runtime-*.whl | head -n1)"
  "${PY}" - "${whl}" "${tmp}/x" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if "/include/" in n])
PYEOF
  src="$(dirname "$(find "${tmp}/x" -name cudaTypedefs.h | head -n1)")"
  [[ -f "${src}/cuda.h" ]] || { echo "fetch-cuda-headers: cuda.h missing in ${whl}" >&2; exit 1; }
  mkdir -p "${CACHE}"
  rm -rf "${INC}.partial"
  cp -r "${src}" "${INC}.partial"
  mv "${INC}.partial" "${INC}"   # atomic: a half-copied cache is never seen as complete
fi

if [[ "${1:-}" == "--copy-to" ]]; then
  mkdir -p "$2"
  cp -r "${INC}/." "$2/"
fi
echo "${INC}"
