#!/usr/bin/env bash
# Installs the Debian packages polyak builds with, when any is missing (run as root).
# The CUDA toolkit is optional and is not installed here: CMake uses it when found.
# Open MPI is optional for a build (without it, no data-parallel training) but CI tests
# the data-parallel path, so it is installed here.
#   --fuzz  also what the fuzz targets need (tests/fuzz): clang, its libFuzzer and
#           sanitizer runtimes, and its OpenMP runtime (clang does not use GCC's libgomp).
set -euo pipefail
packages=(build-essential cmake libopenblas-dev zlib1g-dev doctest-dev libstb-dev nlohmann-json3-dev libcli11-dev
  openmpi-bin libopenmpi-dev)
if [[ ${1:-} == --fuzz ]]; then
  packages+=(clang libclang-rt-dev libomp-dev)
elif (($#)); then
  echo "usage: $0 [--fuzz]" >&2
  exit 2
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
