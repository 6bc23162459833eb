#!/usr/bin/env bash
# On the GPU machine: build, run every test (the GPU ones included), the
# gradient checks (CTEST=0, GRADCHECK=0 skip them) and, with BABY_STEPS > 0, the
# tinyshakespeare "baby" run.
# Needs .deps/ (scripts/make_deps.sh): the GPU machine has HDF5 libraries but
# no headers, and no CLI11 or nlohmann-json. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
mkdir -p "$OUT"
BABY_STEPS=${BABY_STEPS:-0}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

bash scripts/gpu_build.sh || exit 1

if [ "${CTEST:-1}" = 1 ]; then
  SECONDS=0
  ctest --test-dir build-gpu -j6 --timeout 600 > "$OUT/ctest.log" 2>&1
  echo "ctest: ${SECONDS}s"
  grep -E "tests passed|tests failed" "$OUT/ctest.log"
  grep -E "\(Failed\)|\(Timeout\)|Exception" "$OUT/ctest.log" | head -40
  grep -c "(Skipped)" "$OUT/ctest.log" | sed 's/^/skipped: /'
  ctest --test-dir build-gpu --rerun-failed --output-on-failure > "$OUT/failed.log" 2>&1 \
    || grep -E "Failure|Expected|Which is|actual|relative|error" "$OUT/failed.log" | head -60
fi

if [ "${GRADCHECK:-1}" = 1 ]; then  # f64 on the CPU too: minutes
  build-gpu/bin/gradcheck --ops --model > "$OUT/gradcheck.log" 2>&1
  echo "gradcheck rc=$?"
  grep -E "checks," "$OUT/gradcheck.log"
fi

if [ "$BABY_STEPS" -gt 0 ]; then
  SECONDS=0
  build-gpu/bin/train_gpt --device cuda --data .deps/tinyshakespeare.txt --tokenizer char \
    --n-layer 6 --n-head 6 --d-model 384 --max-seq-len 256 --seq 256 --batch 64 \
    --lr 1e-3 --min-lr 1e-4 --warmup 100 --decay-steps 5000 --steps "$BABY_STEPS" --beta2 0.99 \
    --clip 1.0 --eval-every 250 --eval-batches 8 --log "$OUT/baby.jsonl" > "$OUT/baby.log" 2>&1
  echo "baby rc=$? wall ${SECONDS}s"
  tail -3 "$OUT/baby.log"
fi

# The baby config's first steps on the CPU (f32 reference), GPU f32 and GPU bf16.
if [ "${BABY_COMPARE:-0}" -gt 0 ]; then
  for dev in "cpu f32" "cuda f32" "cuda bf16"; do
    set -- $dev
    build-gpu/bin/train_gpt --device $1 --dtype $2 --data .deps/tinyshakespeare.txt --tokenizer char \
      --n-layer 6 --n-head 6 --d-model 384 --max-seq-len 256 --seq 256 --batch 64 --lr 1e-3 \
      --min-lr 1e-4 --warmup 100 --decay-steps 5000 --steps "$BABY_COMPARE" --beta2 0.99 --clip 1.0 \
      --eval-every 0 --quiet --log "$OUT/first_$1_$2.jsonl" > /dev/null 2>&1
    echo "first steps $1 $2: $(python3 -c "import json,sys; print(' '.join('%.5f' % json.loads(l)['loss'] for l in open(sys.argv[1])))" "$OUT/first_$1_$2.jsonl")"
  done
fi

# GPT-2-small size throughput (V = 50304, byte-level data), with and without recompute.
if [ "${GPT2_STEPS:-0}" -gt 0 ]; then
  for rc in none full; do
    build-gpu/bin/train_gpt --device cuda --data .deps/tinyshakespeare.txt --tokenizer byte \
      --vocab-size 50304 --n-layer 12 --n-head 12 --d-model 768 --max-seq-len 1024 --seq 1024 \
      --batch 16 --steps "$GPT2_STEPS" --warmup 2 --eval-every 0 --recompute $rc \
      --log "$OUT/gpt2_$rc.jsonl" > "$OUT/gpt2_$rc.log" 2>&1
    echo "gpt2 recompute=$rc rc=$?"; tail -1 "$OUT/gpt2_$rc.log"
  done
fi
