#!/usr/bin/env bash
# On the GPU machine: the Hopper GEMM's tests (fg_test_ops, *GemmHopper*) and bench_gemm
# against cuBLASLt (its heuristic's pick, what training uses), for every schedule of the
# kernel (GemmSchedule; SCHEDULES names a subset). Runs prebuilt binaries from $BIN when
# both are there (built elsewhere and carried); otherwise configures like gpu_check.sh (needs
# .deps/) and builds only fg_test_ops and bench_gemm. COMMIT names the commit in the tables.
# Logs and the markdown go to $OUT. Each schedule's tests run in their own process under a
# timeout (rc=124 there means a hang in that schedule); only the schedules that pass are
# benchmarked, in one run that writes the table row by row.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
mkdir -p "$OUT"
BIN=${BIN:-build-gpu/bin}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
SCHEDULES=${SCHEDULES:-cooperative pingpong cooperative_2cta pingpong_2cta}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader | tee "$OUT/gpu.txt"

if [ ! -x "$BIN/fg_test_ops" ] || [ ! -x "$BIN/bench_gemm" ]; then
  BIN=build-gpu/bin
  bash scripts/gpu_build.sh fg_test_ops bench_gemm || exit 1
fi

SECONDS=0
timeout 60 "$BIN/fg_test_ops" --gtest_filter='GemmHopperEdge.*' > "$OUT/test_edge.log" 2>&1
echo "tests GemmHopperEdge rc=$? ${SECONDS}s"
grep -E "^\[  PASSED|^\[  FAILED" "$OUT/test_edge.log"
passed=()
for s in $SCHEDULES; do
  SECONDS=0
  timeout 60 "$BIN/fg_test_ops" --gtest_filter="*GemmHopper.*_$s" > "$OUT/test_$s.log" 2>&1
  rc=$?
  echo "tests $s rc=$rc ${SECONDS}s"
  grep -E "^\[  PASSED|^\[  FAILED|tests ran" "$OUT/test_$s.log"
  grep -E "Failure|relative error|Which is|Expected|trace|SKIPPED|error" "$OUT/test_$s.log" | head -30
  [ $rc -eq 0 ] && passed+=("$s")
done
if [ ${#passed[@]} -eq 0 ]; then
  echo "no schedule passed its tests: no benchmark"
  exit 1
fi

list=$(IFS=,; echo "${passed[*]}")
SECONDS=0
timeout 240 "$BIN/bench_gemm" --schedules "$list" --out "$OUT/results_gemm.md" \
  --commit "$COMMIT" > "$OUT/bench.log" 2>&1
echo "bench ($list) rc=$? ${SECONDS}s"
cat "$OUT/results_gemm.md" 2>/dev/null
tail -5 "$OUT/bench.log" | grep -i "error" || true
