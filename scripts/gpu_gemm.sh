#!/usr/bin/env bash
# On the GPU machine: the Hopper GEMM's tests (fg_test_ops, *GemmHopper*) and bench_gemm
# against cuBLASLt (its heuristic's pick, what training uses). Runs prebuilt binaries from $BIN when both are
# there (built elsewhere and carried); otherwise configures like gpu_check.sh (needs
# .deps/) and builds only fg_test_ops and bench_gemm. COMMIT names the commit in the
# tables. Logs and the markdown go to $OUT. A timeout (rc=124) in the tests means a hang.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
mkdir -p "$OUT"
BIN=${BIN:-build-gpu/bin}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader | tee "$OUT/gpu.txt"

if [ ! -x "$BIN/fg_test_ops" ] || [ ! -x "$BIN/bench_gemm" ]; then
  BIN=build-gpu/bin
  bash scripts/gpu_build.sh fg_test_ops bench_gemm || exit 1
fi

SECONDS=0
timeout 120 "$BIN/fg_test_ops" --gtest_filter='*GemmHopper*' > "$OUT/test.log" 2>&1
echo "tests rc=$? ${SECONDS}s"
grep -E "^\[  PASSED|^\[  FAILED|tests ran" "$OUT/test.log"
grep -E "Failure|relative error|Which is|Expected|trace|SKIPPED|error" "$OUT/test.log" | head -60

SECONDS=0
timeout 150 "$BIN/bench_gemm" --out "$OUT/results_gemm.md" \
  --commit "$COMMIT" > "$OUT/bench.log" 2>&1
echo "bench rc=$? ${SECONDS}s"
cat "$OUT/results_gemm.md" 2>/dev/null
tail -5 "$OUT/bench.log" | grep -i "error" || true
