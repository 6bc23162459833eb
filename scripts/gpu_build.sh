#!/usr/bin/env bash
# On the GPU machine: configure build-gpu/ from .deps/ (the machine has HDF5
# libraries but no headers, and no CLI11 or nlohmann-json; scripts/make_deps.sh
# collects them) and build the targets named (all without arguments).
# Logs: $LOG_DIR/configure.log and build.log; prints the build time or the errors.
set -uo pipefail
LOG_DIR=${LOG_DIR:-${OUT:-/tmp/fg_out}}
mkdir -p "$LOG_DIR"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFG_CUDA=ON ${CMAKE_ARGS:-} \
  -DHDF5_ROOT=/usr/lib/x86_64-linux-gnu/hdf5/serial -DHDF5_C_INCLUDE_DIR="$PWD/.deps/hdf5" \
  -DCLI11_INCLUDE_DIR="$PWD/.deps" -DNLOHMANN_JSON_INCLUDE_DIR="$PWD/.deps" \
  > "$LOG_DIR/configure.log" 2>&1 || { tail -30 "$LOG_DIR/configure.log"; exit 1; }
SECONDS=0
ninja -C build-gpu "$@" > "$LOG_DIR/build.log" 2>&1 \
  || { grep -E "error" -A3 "$LOG_DIR/build.log" | head -60; exit 1; }
echo "build: ${SECONDS}s"
