#!/usr/bin/env bash
# Installs what fusegpt needs (Debian/Ubuntu, idempotent) and builds it.
#   scripts/setup.sh                  -> build/ (CUDA on when nvcc is found)
#   BUILD_DIR=build-cpu FG_CUDA=OFF scripts/setup.sh   -> a CPU-only build
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

packages=(cmake ninja-build g++ libhdf5-dev libgtest-dev libcli11-dev nlohmann-json3-dev python3-h5py)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cuda_flag=()
[ -n "${FG_CUDA:-}" ] && cuda_flag=(-DFG_CUDA="$FG_CUDA")
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
echo "setup: built into $BUILD_DIR/ (executables in $BUILD_DIR/bin)"
