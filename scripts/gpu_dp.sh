#!/usr/bin/env bash
# On a machine with >= 2 GPUs: data parallel over NCCL against one GPU.
# (a) 1 GPU, global batch B; (b) 2 GPUs, the same global batch: the same losses;
# (c) 2 GPUs, batch 2B: throughput for the scaling efficiency. GPT-2-small size.
set -uo pipefail
OUT=${OUT:-/tmp/fg_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
CMAKE_ARGS=-DFG_BUILD_TESTS=OFF bash scripts/gpu_build.sh train_gpt fgrun || exit 1
STEPS=${STEPS:-20}
ARGS="--device cuda --data .deps/tinyshakespeare.txt --tokenizer byte --vocab-size 50304 --n-layer 12
  --n-head 12 --d-model 768 --max-seq-len 1024 --seq 1024 --steps $STEPS --warmup 5 --eval-every 0 --quiet"
build-gpu/bin/train_gpt $ARGS --batch 16 --log "$OUT/one.jsonl" || exit 1
build-gpu/bin/fgrun -n 2 -- build-gpu/bin/train_gpt $ARGS --batch 16 --log "$OUT/two.jsonl" || exit 1
build-gpu/bin/fgrun -n 2 -- build-gpu/bin/train_gpt $ARGS --batch 32 --log "$OUT/two_b32.jsonl" || exit 1
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = lambda n: [json.loads(l) for l in open(f"{out}/{n}.jsonl")]
one, two, big = load("one"), load("two"), load("two_b32")
print("step  1 GPU B16   2 GPUs B16   |diff|")
for a, b in zip(one, two):
    print(f"{a['step']:4d}  {a['loss']:.6f}   {b['loss']:.6f}   {abs(a['loss'] - b['loss']):.2e}")
med = lambda rows: sorted(r["tokens_per_s"] for r in rows[5:])[len(rows[5:]) // 2]
t1, t2 = med(one), med(big)
print(f"tokens/s: 1 GPU B16 {t1:.0f}, 2 GPUs B32 {t2:.0f}, scaling efficiency {t2 / (2 * t1):.3f}")
PY
