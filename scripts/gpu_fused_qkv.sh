#!/usr/bin/env bash
# On the GPU machine: the fused QKV layer's GPU tests, bench_fused_qkv and the PyTorch
# comparison, in one call. Binaries come prebuilt in $BIN (build them on the dev machine
# and carry the folder: `ninja -C BUILD fg_test_ops bench_fused_qkv fused_qkv_io`, copy
# BUILD/bin/{fg_test_ops,bench_fused_qkv,fused_qkv_io} to build-carry/bin), or, with
# BUILD=1, configured and built here like scripts/gpu_check.sh does (needs .deps/).
# TORCH=0 skips the PyTorch comparison. Logs and tables go to $OUT; the tables are printed last.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
BIN=${BIN:-build-carry/bin}
[ "${BUILD:-0}" = 1 ] && BIN=build-gpu/bin
TORCH_BUDGET_S=${TORCH_BUDGET_S:-150}
mkdir -p "$OUT"
SECONDS=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv,noheader | tee "$OUT/gpu.txt"

if [ "${BUILD:-0}" = 1 ]; then
  bash scripts/gpu_build.sh fg_test_ops bench_fused_qkv fused_qkv_io || exit 1
fi

"$BIN/fg_test_ops" --gtest_filter='*QKV*:*Rope*:*RMSNorm*:*GemmColScaled*' > "$OUT/tests.log" 2>&1
echo "tests rc=$? (${SECONDS}s)"
grep -E "^\[  (PASSED|FAILED|SKIPPED) \]|tests ran" "$OUT/tests.log" | head -40
grep -E "Failure|relative error|alpha vector|separate pass" "$OUT/tests.log" | head -40

"$BIN/bench_fused_qkv" --md "$OUT/bench.md" --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$? (${SECONDS}s)"

if [ "${TORCH:-1}" = 1 ]; then
  PYTHONUNBUFFERED=1 python3 bench/compare_torch.py --bin "$BIN" --ours-json "$OUT/bench.json" \
    --md "$OUT/torch.md" --budget-s "$TORCH_BUDGET_S" > "$OUT/torch.log" 2>&1
  echo "compare_torch rc=$? (${SECONDS}s)"
  grep -E "Error|error|Traceback" "$OUT/torch.log" | head -20
fi

cat "$OUT/bench.md"
echo
if [ "${TORCH:-1}" = 1 ]; then cat "$OUT/torch.md" 2>/dev/null || tail -30 "$OUT/torch.log"; fi
