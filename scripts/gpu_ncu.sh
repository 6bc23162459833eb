#!/usr/bin/env bash
# On the GPU machine: Nsight Compute on kernels of the training step, in the step's own
# launches (bench_train without its CUDA graph, so ncu sees each kernel; clocks as they run,
# power cap included), and what bounds each one (scripts/ncu_summary.py): clock, tensor pipe,
# shared memory, DRAM and L2, stall reasons, and for the first profiled launch the
# instructions that collect the most stall samples.
#   KERNELS='SwiGLUBackward|QKVRoPE' MODEL=gpt2 SKIP=24 COUNT=2 [BIN=build-carry/bin] \
#     [REGIONS='k loop=9a00:bb60,epilogue=bb60:14d00'] bash scripts/gpu_ncu.sh
# KERNELS: a regex over demangled kernel names. SKIP: matching launches left out first (take a
# later step's: bench_train --profile lists the calls per step), COUNT: launches profiled.
# REGIONS: address ranges of the SASS listing to split the first launch's samples by.
# PROGRAM / ARGS: another program of $BIN instead, e.g. PROGRAM=bench_fused_qkv
# ARGS='--shapes seed --reps 3' (the default is bench_train on $MODEL without its graph).
# The report, its CSV pages and the summary go to $OUT/ncu.tgz; the summary is echoed.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
BIN=${BIN:-build-gpu/bin}
KERNELS=${KERNELS:?KERNELS=a regex of kernel names}
MODEL=${MODEL:-gpt2}
SKIP=${SKIP:-0}
COUNT=${COUNT:-1}
PROGRAM=${PROGRAM:-bench_train}
ARGS=${ARGS:---data .deps/tinyshakespeare.txt --models $MODEL --recompute none --steps 3 --warmup 1 --no-cuda-graph}
mkdir -p "$OUT"
WORK=$(mktemp -d)
if [ ! -x "$BIN/$PROGRAM" ]; then
  BIN=build-gpu/bin
  bash scripts/gpu_build.sh "$PROGRAM" || exit 1
fi

SECONDS=0
timeout 500 ncu --clock-control none --set full --import-source no --kernel-name-base demangled \
  --kernel-name "regex:$KERNELS" --launch-skip "$SKIP" --launch-count "$COUNT" -o "$WORK/report" \
  "$BIN/$PROGRAM" $ARGS > "$WORK/ncu.log" 2>&1
echo "ncu rc=$? ${SECONDS}s"
if [ ! -s "$WORK/report.ncu-rep" ]; then
  tail -20 "$WORK/ncu.log"
  exit 1
fi
ncu --import "$WORK/report.ncu-rep" --page details --csv > "$WORK/details.csv"
ncu --import "$WORK/report.ncu-rep" --page raw --csv > "$WORK/raw.csv"
ncu --import "$WORK/report.ncu-rep" --page source --csv --print-source sass > "$WORK/sass.csv"
python3 scripts/ncu_summary.py --details "$WORK/details.csv" --raw "$WORK/raw.csv" \
  --sass "$WORK/sass.csv" ${REGIONS:+--regions "$REGIONS"} | tee "$WORK/summary.txt"
tar czf "$OUT/ncu.tgz" -C "$WORK" .
