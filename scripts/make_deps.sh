#!/usr/bin/env bash
# Collects what the GPU machine lacks into .deps/ (git-ignored; pass it in the
# device tool's carry): HDF5, CLI11 and nlohmann-json headers, and the corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps
cp -r /usr/include/hdf5/serial/. .deps/hdf5
cp -r /usr/include/CLI /usr/include/nlohmann .deps/
cp ../shared/data/tinyshakespeare.txt .deps/
grep -qx "/.deps/" .git/info/exclude 2>/dev/null || echo "/.deps/" >> .git/info/exclude
