#!/usr/bin/env bash
# Checks that the engine compiles for a CPU other than x86: a syntax-only pass of the
# aarch64 cross compiler over every .cpp of engine/ (but engine/cuda/), which fails on
# x86 intrinsics outside their #if. Needs g++-aarch64-linux-gnu (apt-get install it).
set -u
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-g++ > /dev/null; then
  echo "check-portable: aarch64-linux-gnu-g++ not found (apt-get install g++-aarch64-linux-gnu)" >&2
  exit 2
fi
status=0
for file in engine/*.cpp engine/cpu/*.cpp engine/ref/*.cpp engine/ops/*.cpp engine/nn/*.cpp engine/optim/*.cpp \
            engine/io/*.cpp; do
  # distributed_mpi.cpp needs an MPI's headers; they are the same on every CPU.
  extra=()
  [[ $file == engine/distributed_mpi.cpp ]] && extra=($(mpicxx --showme:incdirs 2>/dev/null | sed 's/[^ ]*/-I&/g'))
  if ! aarch64-linux-gnu-g++ -std=c++20 -fsyntax-only -fopenmp -Wall -Wextra -I"$PWD" "${extra[@]}" "$file"; then
    echo "check-portable: $file does not compile for aarch64" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "check-portable: every engine source compiles for aarch64"
exit "$status"
