#!/usr/bin/env bash
# On the GPU machine, one call: build everything, the GPU tests of the training
# step (ops it uses, CUDA-graph capture, graph vs eager), bench_train with
# per-kernel profiles beside PyTorch eager and torch.compile (gpu_bench_train.sh).
# The baby run: CTEST=0 GRADCHECK=0 BABY_STEPS=5000 bash scripts/gpu_check.sh. Needs .deps/
# (scripts/make_deps.sh). Logs are packed into $OUT/logs.tgz (the device tool
# returns few files); the tables are echoed.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
LOGS=$(mktemp -d)
TESTS=${TESTS:-1}
LOG_DIR="$LOGS" bash scripts/gpu_build.sh || exit 1

if [ "$TESTS" = 1 ]; then
  SECONDS=0
  build-gpu/bin/fg_test_ops --gtest_filter='*CrossEntropy*:*LMHead*:*AdamW*:*GradNorm*:*Swiglu*:*Capture*:*Graph*' \
    > "$LOGS/test_ops.log" 2>&1; echo "ops tests rc=$? ${SECONDS}s"
  build-gpu/bin/fg_test_trainer --gtest_filter='*Cuda*:Train.*:NonFinite*' > "$LOGS/test_trainer.log" 2>&1
  echo "trainer tests rc=$? ${SECONDS}s"
  build-gpu/bin/fg_test_autograd > "$LOGS/test_autograd.log" 2>&1; echo "autograd tests rc=$? ${SECONDS}s"
  build-gpu/bin/fg_test_core > "$LOGS/test_core.log" 2>&1; echo "core tests rc=$? ${SECONDS}s"
  grep -hE "^\[  (PASSED|FAILED) |Failure|Which is|error" "$LOGS"/test_*.log | head -40
fi

OUT="$LOGS" BIN=build-gpu/bin bash scripts/gpu_bench_train.sh

cp "$LOGS"/bench_train.md "$LOGS"/compare_train.md "$LOGS"/bench_train.json "$OUT"/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$LOGS" .
