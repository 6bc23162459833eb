#!/usr/bin/env python3
"""fusegpt against PyTorch on the GPU machine, in one of two modes.

layer (the default when no mode is given): the fused residual + RMSNorm + QKV + bias
  + RoPE layer.
  1. correctness: our q, k, v, h, rstd and every gradient (fused_qkv_io on files)
     against PyTorch in fp32 on the same bf16 inputs, relative error ||a - b|| / ||b||
     <= 1e-2 (NaN fails); PyTorch's own bf16 eager result is shown beside it for scale;
  2. speed at the bench shapes (bf16): PyTorch eager and torch.compile, forward and
     forward + backward, CUDA events, medians, inputs rotated out of L2, against ours
     (bench_fused_qkv's JSON from the same machine, or run here).

train: whole training steps of the GPT that fusegpt trains (bench/torch_gpt.py, the
  same model as trainer/model.cpp) in PyTorch eager and torch.compile(model) (default
  mode; the optimizer step stays eager). One step = forward + mean cross-entropy under
  torch.autocast(bf16) with fp32 master weights, backward, clip_grad_norm_(1.0),
  AdamW(fused=True, lr 1e-4, betas (0.9, 0.95), decay 0.1 on matrices), zero_grad(
  set_to_none=True). Attention is F.scaled_dot_product_attention(is_causal=True) held
  to the flash backend (--sdpa). Token batches are random, drawn on the GPU before the
  clock starts. Each step is timed with CUDA events, no host synchronization in
  between; the warm-up steps (torch.compile compiles there) are dropped and the median
  of --steps is reported as ms/step, tokens/s = B*T / ms/step, and
  MFU = (6 N B T + 6 B T^2 D L) / (ms/step * 989.4 TFLOP/s), N = parameters without
  the token embedding table (bench_train's formula); peak memory is
  torch.cuda.max_memory_allocated over the run. With --ours-json (bench_train --json
  from the same machine) the table puts our tokens/s, MFU and peak memory beside them.

  PYTHONUNBUFFERED=1 python3 bench/compare_torch.py [layer] [--bin build-gpu/bin] [--ours-json F]
  PYTHONUNBUFFERED=1 python3 bench/compare_torch.py train [--ours-json F] [--models baby,gpt2,seed]
      [--steps 30] [--warmup 10]
"""
import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time

try:  # imported here so that --help works where PyTorch is not installed
    import torch
    import torch.nn.functional as F

    from torch_gpt import EPS, GPT, THETA, GPTConfig, adamw, rope, rope_tables
except ImportError as e:
    torch = None
    TORCH_IMPORT_ERROR = e

ROTATE_BYTES = 256 << 20
SHAPES = [
    dict(name="seed", B=2, T=4096, D=4096, H=32, Hkv=32, bias=True),
    dict(name="gpt2", B=8, T=1024, D=768, H=12, Hkv=12, bias=False),
    dict(name="baby", B=64, T=256, D=384, H=6, Hkv=6, bias=False),
    dict(name="gqa", B=2, T=4096, D=4096, H=32, Hkv=8, bias=False),
]
# Correctness at the same hidden sizes and heads, fewer rows, and some options flipped:
# partial rotary, no residual, position offsets.
CHECKS = [
    dict(name="seed", B=1, T=256, D=4096, H=32, Hkv=32, bias=True, residual=True, rot=128, offset=0),
    dict(name="gpt2", B=2, T=200, D=768, H=12, Hkv=12, bias=False, residual=True, rot=64, offset=0),
    dict(name="baby", B=4, T=256, D=384, H=6, Hkv=6, bias=True, residual=False, rot=32, offset=5),
    dict(name="gqa", B=1, T=300, D=4096, H=32, Hkv=8, bias=False, residual=True, rot=128, offset=1000),
]

# train mode: the models of bench_train, as (GPTConfig keyword arguments, batch B);
# T = max_seq_len. "tiny" is a smoke test for --device cpu and is left out of --help.
TRAIN_MODELS = {
    "baby": (dict(vocab_size=65, n_layer=6, n_head=6, d_model=384, max_seq_len=256), 64),
    "gpt2": (dict(vocab_size=50304, n_layer=12, n_head=12, d_model=768, max_seq_len=1024), 16),
    "seed": (dict(vocab_size=32000, n_layer=4, n_head=32, d_model=4096, max_seq_len=4096, qkv_bias=True), 1),
    "tiny": (dict(vocab_size=64, n_layer=2, n_head=4, d_model=64, max_seq_len=64), 4),
}
PEAK_FLOPS = 989.4e12  # H100/H200 SXM dense bf16
GIB = float(1 << 30)
NAN = float("nan")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def make_layer(H, Hkv, hd, rot, residual):
    def layer(x, res, g, w, b, cos, sin):
        h = x + res if residual else x
        hf = h.float()
        rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + EPS)
        n = (hf * rstd * g.float()).to(x.dtype)
        qkv = F.linear(n, w, b)
        B, T, _ = x.shape
        q, k, v = qkv.split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = rope(q.reshape(B, T, H, hd), cos, sin, rot)
        k = rope(k.reshape(B, T, Hkv, hd), cos, sin, rot)
        return q, k, v.reshape(B, T, Hkv, hd), h

    return layer


def rel_err(a, b):
    a, b = a.double(), b.double()
    e = (a - b).norm().item() / max(b.norm().item(), 1e-300)
    return e if math.isfinite(e) else float("nan")


def write_bin(path, t):
    with open(path, "wb") as f:
        f.write(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())


def read_bin(path, shape, dtype, device):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=dtype).reshape(shape).to(device)


def check_shape(c, bin_dir, dev):
    B, T, D, H, Hkv, rot = c["B"], c["T"], c["D"], c["H"], c["Hkv"], c["rot"]
    hd = D // H
    N = (H + 2 * Hkv) * hd
    gen = torch.Generator(device=dev).manual_seed(7)
    bf = torch.bfloat16

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, device=dev) * std).to(bf)

    inputs = dict(x=rnd(B, T, D), residual=rnd(B, T, D),
                  norm_weight=(torch.rand(D, generator=gen, device=dev) + 0.5).to(bf),
                  wqkv=rnd(N, D, std=0.02), bias=rnd(N, std=0.02),
                  dq=rnd(B, T, H, hd), dk=rnd(B, T, Hkv, hd), dv=rnd(B, T, Hkv, hd), dh=rnd(B, T, D))
    pos, cos, sin = rope_tables(T, rot, c["offset"], dev)
    with tempfile.TemporaryDirectory() as d:
        cfg = dict(B=B, T=T, D=D, H=H, Hkv=Hkv, rotary_dim=rot, bias=c["bias"],
                   residual=c["residual"], eps=EPS, theta=THETA, dtype="bf16")
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        for name, t in inputs.items():
            if (name == "residual" and not c["residual"]) or (name == "bias" and not c["bias"]):
                continue
            write_bin(os.path.join(d, name + ".bin"), t)
        write_bin(os.path.join(d, "positions.bin"), pos)
        subprocess.run([os.path.join(bin_dir, "fused_qkv_io"), d], check=True)
        shapes = dict(q=(B, T, H, hd), k=(B, T, Hkv, hd), v=(B, T, Hkv, hd), h=(B, T, D),
                      dx=(B, T, D), dnorm_weight=(D,), dwqkv=(N, D), dbias=(N,))
        ours = {k: read_bin(os.path.join(d, k + ".out.bin"), s, bf, dev) for k, s in shapes.items()
                if k != "dbias" or c["bias"]}
        ours["rstd"] = read_bin(os.path.join(d, "rstd.out.bin"), (B * T,), torch.float32, dev)

    layer = make_layer(H, Hkv, hd, rot, c["residual"])

    def run(dtype):
        leaves = {k: inputs[k].to(dtype).requires_grad_() for k in ("x", "residual", "norm_weight", "wqkv", "bias")}
        res = leaves["residual"] if c["residual"] else None
        b = leaves["bias"] if c["bias"] else None
        q, k, v, h = layer(leaves["x"], res, leaves["norm_weight"], leaves["wqkv"], b, cos, sin)
        wrt = [leaves["x"], leaves["norm_weight"], leaves["wqkv"]] + ([b] if c["bias"] else [])
        grads = torch.autograd.grad([q, k, v, h], wrt, [inputs[n].to(dtype) for n in ("dq", "dk", "dv", "dh")])
        hf = h.detach().float()
        out = dict(q=q, k=k, v=v, h=h, dx=grads[0], dnorm_weight=grads[1], dwqkv=grads[2],
                   rstd=torch.rsqrt(hf.pow(2).mean(-1) + EPS).reshape(-1))
        if c["bias"]:
            out["dbias"] = grads[3]
        return {k: t.detach() for k, t in out.items()}

    ref, eager = run(torch.float32), run(bf)
    rows = []
    for name in ours:
        e_ours, e_eager = rel_err(ours[name], ref[name]), rel_err(eager[name], ref[name])
        rows.append((c["name"], name, e_ours, e_eager, e_ours <= 1e-2))
    return rows


def time_ms(fn, reps, warmup):
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    try:  # a device head start, so host overhead does not show as device idle time
        torch.cuda._sleep(int(0.05 * 1.98e9))
    except Exception:
        pass
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i in range(reps):
        ev[i][0].record()
        fn(warmup + i)
        ev[i][1].record()
    torch.cuda.synchronize()
    return median(a.elapsed_time(b) for a, b in ev)


def bench_shape(s, reps, warmup, compile_too):
    dev = "cuda"
    B, T, D, H, Hkv = s["B"], s["T"], s["D"], s["H"], s["Hkv"]
    hd, rot = D // H, D // H
    N = (H + 2 * Hkv) * hd
    bf = torch.bfloat16
    set_bytes = 2 * (3 * B * T * D + B * T * N)
    sets = max(2, ROTATE_BYTES // set_bytes + 1)
    xs = [torch.randn(B, T, D, device=dev, dtype=bf).requires_grad_() for _ in range(sets)]
    rs = [torch.randn(B, T, D, device=dev, dtype=bf).requires_grad_() for _ in range(sets)]
    gs = [(torch.randn(B, T, H, hd, device=dev, dtype=bf) * 0.01, torch.randn(B, T, Hkv, hd, device=dev, dtype=bf) * 0.01,
           torch.randn(B, T, Hkv, hd, device=dev, dtype=bf) * 0.01, torch.randn(B, T, D, device=dev, dtype=bf) * 0.01)
          for _ in range(sets)]
    g = (torch.rand(D, device=dev) + 0.5).to(bf).requires_grad_()
    w = (torch.randn(N, D, device=dev) * 0.02).to(bf).requires_grad_()
    b = (torch.randn(N, device=dev) * 0.02).to(bf).requires_grad_() if s["bias"] else None
    _, cos, sin = rope_tables(T, rot, 0, dev)
    leaves = [g, w] + ([b] if b is not None else [])
    layer = make_layer(H, Hkv, hd, rot, True)
    out = {}
    fns = [("eager", layer)]
    if compile_too:
        fns.append(("compile", torch.compile(layer, dynamic=False)))
    for label, f in fns:
        def fwd(i):
            f(xs[i % sets], rs[i % sets], g, w, b, cos, sin)

        def fwd_bwd(i):
            o = f(xs[i % sets], rs[i % sets], g, w, b, cos, sin)
            torch.autograd.grad(o, [xs[i % sets], rs[i % sets]] + leaves, gs[i % sets])

        t0 = time.time()
        fwd_bwd(0)  # compiles forward and backward the first time
        torch.cuda.synchronize()
        out[label + "_compile_s"] = time.time() - t0
        out[label + "_fwd"] = time_ms(fwd, reps, warmup)
        out[label + "_fwd_bwd"] = time_ms(fwd_bwd, reps, warmup)
    return out


def run_layer(args):
    """layer mode: correctness, then speed; 1 when a check failed."""
    start = time.time()
    dev = "cuda"
    lines = [f"GPU: {torch.cuda.get_device_name(0)}; PyTorch {torch.__version__}; bf16; medians of "
             f"{args.reps} after {args.warmup} warm-up", ""]

    # 1. Correctness.
    lines += ["| check shape | tensor | ours vs fp32 | torch bf16 eager vs fp32 | ours <= 1e-2 |", "|---|---|---|---|---|"]
    ok = True
    for c in CHECKS:
        for name, tensor, e_ours, e_eager, good in check_shape(c, args.bin, dev):
            ok = ok and good
            lines.append(f"| {name} B{c['B']} T{c['T']} rot{c['rot']}{' bias' if c['bias'] else ''}"
                         f"{'' if c['residual'] else ' no-res'} pos+{c['offset']} | {tensor} | "
                         f"{e_ours:.2e} | {e_eager:.2e} | {'yes' if good else 'NO'} |")
        print(f"checked {c['name']} ({time.time() - start:.0f} s)", file=sys.stderr)
    print("\n".join(lines[2:]))

    # 2. Speed.
    if args.ours_json:
        with open(args.ours_json) as f:
            ours = json.load(f)["shapes"]
    else:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([os.path.join(args.bin, "bench_fused_qkv"), "--json", f.name], check=True,
                           stdout=subprocess.DEVNULL)
            ours = json.load(open(f.name))["shapes"]
    speed = ["", "| shape | ours fwd | eager fwd | compile fwd | ours fwd+bwd | eager fwd+bwd | "
                 "compile fwd+bwd | eager/ours (fwd, fwd+bwd) | compile/ours (fwd, fwd+bwd) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in SHAPES:
        compile_too = time.time() - start < args.budget_s
        t = bench_shape(s, args.reps, args.warmup, compile_too)
        o = ours.get(s["name"], {})
        of, ofb = o.get("fwd_ms", float("nan")), o.get("fwd_bwd_ms", float("nan"))
        cf, cfb = t.get("compile_fwd", float("nan")), t.get("compile_fwd_bwd", float("nan"))
        speed.append(f"| {s['name']} | {of:.3f} ms | {t['eager_fwd']:.3f} ms | {cf:.3f} ms | {ofb:.3f} ms | "
                     f"{t['eager_fwd_bwd']:.3f} ms | {cfb:.3f} ms | {t['eager_fwd'] / of:.2f}x, "
                     f"{t['eager_fwd_bwd'] / ofb:.2f}x | {cf / of:.2f}x, {cfb / ofb:.2f}x |")
        print(f"timed {s['name']} ({time.time() - start:.0f} s; compile took "
              f"{t.get('compile_compile_s', float('nan')):.0f} s)", file=sys.stderr)
        print(speed[-1])
    lines += speed
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    return 0 if ok else 1



# ---- train mode ----


def train_flops(cfg, n_params, B, T):
    """bench_train's count per step: 6 N B T + 6 B T^2 D L (N without the embedding table)."""
    return 6 * n_params * B * T + 6 * B * T * T * cfg.d_model * cfg.n_layer


def attention_backend(args):
    """A fresh context that holds SDPA to the flash backend (--sdpa flash, on the GPU)."""
    if args.sdpa == "flash" and args.device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def token_batches(V, B, T, n, device):
    """n (inputs, targets) pairs of random tokens (B, T), drawn up front on the device."""
    gen = torch.Generator(device=device).manual_seed(1234)
    out = []
    for _ in range(n):
        seq = torch.randint(0, V, (B, T + 1), device=device, generator=gen)
        out.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return out


def step_times_ms(step, n, device):
    """Runs step(0..n-1) back to back; the time of each in ms (CUDA events on the GPU)."""
    if device != "cuda":
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            step(i)
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for i in range(n):
        ev[i][0].record()
        step(i)
        ev[i][1].record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in ev]


def train_run(name, backend, args):
    """One model under one backend ("eager" or "compile"): warm-up, then timed steps."""
    kwargs, B = TRAIN_MODELS[name]
    cfg = GPTConfig(**kwargs)
    T, dev = cfg.max_seq_len, args.device
    torch.manual_seed(0)
    model = GPT(cfg).to(dev)  # fp32 master weights
    opt = adamw(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    loss_fn = torch.compile(model) if backend == "compile" else model
    batches = token_batches(cfg.vocab_size, B, T, args.warmup + args.steps, dev)
    losses = []

    def step(i):
        x, y = batches[i]
        with torch.autocast(dev, dtype=torch.bfloat16), attention_backend(args):
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    t0 = time.time()
    for i in range(args.warmup):
        step(i)
    if dev == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.time() - t0
    ms = median(step_times_ms(lambda i: step(args.warmup + i), args.steps, dev))
    n_params = model.num_params(embedding=False)
    return dict(ms_per_step=ms, tokens_per_s=B * T / (ms * 1e-3),
                mfu=train_flops(cfg, n_params, B, T) / (ms * 1e-3 * PEAK_FLOPS),
                peak_bytes=torch.cuda.max_memory_allocated() if dev == "cuda" else NAN,
                warmup_s=warmup_s, loss=losses[-1].item(), n_params=n_params)


def free_device_memory(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_run_safe(name, backend, args):
    """train_run, with an OOM or any other failure reported as {"error": ...}."""
    free_device_memory(args.device)
    try:
        return train_run(name, backend, args)
    except torch.cuda.OutOfMemoryError:
        return dict(error="out of memory")
    except Exception as e:  # a compile failure must not stop the other runs
        return dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    finally:
        torch._dynamo.reset()  # drop compiled graphs (and what they hold) between runs
        free_device_memory(args.device)


def load_ours(path):
    """bench_train --json: the fastest entry per (model, recompute)."""
    with open(path) as f:
        rows = json.load(f)
    best = {}
    for r in rows:
        key = (r["model"], r.get("recompute", "none"))
        if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
            best[key] = r
    return best


def fmt_tps(r):
    if not r:
        return "-"
    if "error" in r:
        return r["error"]
    return f"{r['tokens_per_s']:,.0f}" + (" (graph)" if r.get("cuda_graph") else "")


def fmt_ratio(a, b):
    ok = a and b and "error" not in a and "error" not in b
    return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x" if ok else "-"


def fmt_mfu(r):
    if not r or "error" in r or r.get("mfu") is None:
        return "-"
    mfu = r["mfu"]
    return f"{100 * (mfu if mfu <= 1 else mfu / 100):.1f} %"  # a fraction, or already a percentage


def fmt_gib(r):
    ok = r and "error" not in r and math.isfinite(r.get("peak_bytes", NAN))
    return f"{r['peak_bytes'] / GIB:.1f}" if ok else "-"


def torch_table(names, results):
    lines = ["| model | B x T | params (no emb.) | backend | ms/step | tokens/s | MFU | peak GiB | warm-up s | last loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        kwargs, B = TRAIN_MODELS[name]
        for backend, r in results[name].items():
            if "error" in r:
                lines.append(f"| {name} | {B} x {kwargs['max_seq_len']} | | {backend} | {r['error']} | | | | | |")
                continue
            lines.append(f"| {name} | {B} x {kwargs['max_seq_len']} | {r['n_params'] / 1e6:.1f} M | {backend} | "
                         f"{r['ms_per_step']:.2f} | {fmt_tps(r)} | {fmt_mfu(r)} | {fmt_gib(r)} | "
                         f"{r['warmup_s']:.1f} | {r['loss']:.4f} |")
    return lines


def ratio_table(names, results, ours):
    """Ours (fastest of each recompute setting) beside eager and compile."""
    lines = ["| model | ours (recompute none) tok/s | ours (recompute full) tok/s | eager tok/s | compile tok/s | "
             "ours/eager | ours/compile | MFU ours | MFU compile | peak GiB ours / eager / compile |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        none, full = ours.get((name, "none")), ours.get((name, "full"))
        best = none or full  # the ratios take recompute none, full where none is missing
        eager, comp = results[name].get("eager"), results[name].get("compile")
        lines.append(f"| {name} | {fmt_tps(none)} | {fmt_tps(full)} | {fmt_tps(eager)} | {fmt_tps(comp)} | "
                     f"{fmt_ratio(best, eager)} | {fmt_ratio(best, comp)} | {fmt_mfu(best)} | {fmt_mfu(comp)} | "
                     f"{fmt_gib(best)} / {fmt_gib(eager)} / {fmt_gib(comp)} |")
    return lines


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()})"


def run_train(args):
    """train mode: every model under every backend, then the tables; 1 when a run failed."""
    try:
        import triton

        triton_version = f", Triton {triton.__version__}"
    except ImportError:
        triton_version = ""
    header = [f"{device_name(args.device)}; PyTorch {torch.__version__}{triton_version}; "
              f"{datetime.date.today().isoformat()}",
              f"bf16 autocast, fp32 master weights, AdamW(fused=True) lr 1e-4, clip 1.0; backends: "
              f"{', '.join(args.backends)} (torch.compile(model), default mode; optimizer eager); "
              f"SDPA {args.sdpa if args.device == 'cuda' else 'auto (CPU)'}; "
              f"median ms/step of {args.steps} steps after {args.warmup} warm-up; MFU against 989.4 TFLOP/s", ""]
    print("\n".join(header), file=sys.stderr)
    start = time.time()
    results = {}
    for name in args.models:
        results[name] = {}
        for backend in args.backends:
            r = results[name][backend] = train_run_safe(name, backend, args)
            what = r["error"] if "error" in r else (
                f"{r['ms_per_step']:.2f} ms/step, {r['tokens_per_s']:,.0f} tokens/s, MFU {fmt_mfu(r)}, "
                f"peak {fmt_gib(r)} GiB, warm-up {r['warmup_s']:.1f} s, loss {r['loss']:.4f}")
            print(f"{name} {backend}: {what} ({time.time() - start:.0f} s)", file=sys.stderr)
    lines = header + torch_table(args.models, results)
    if args.ours_json:
        lines += ["", f"ours: {args.ours_json}", ""] + ratio_table(args.models, results, load_ours(args.ours_json))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    return 1 if any("error" in r for m in results.values() for r in m.values()) else 0


# ---- command line ----

MODES = ("layer", "train")


def comma_list(choices):
    def parse(s):
        items = [x for x in s.split(",") if x]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got {s!r}")
        return items

    return parse


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = ap.add_subparsers(dest="mode", metavar="{layer,train}")

    layer = modes.add_parser("layer", help="the fused QKV layer: correctness and speed (the default)",
                             description="The fused residual + RMSNorm + QKV + bias + RoPE layer against PyTorch.")
    layer.add_argument("--bin", default="build-gpu/bin", help="folder with fused_qkv_io and bench_fused_qkv")
    layer.add_argument("--ours-json", help="bench_fused_qkv --json output from this machine (else run it)")
    layer.add_argument("--reps", type=int, default=50)
    layer.add_argument("--warmup", type=int, default=10)
    layer.add_argument("--budget-s", type=float, default=1e9,
                       help="skip torch.compile for shapes started after this many seconds")
    layer.add_argument("--md", help="also write the tables to this file")

    train = modes.add_parser("train", help="whole training steps of our GPT in eager and torch.compile",
                             description="Training steps of fusegpt's GPT in PyTorch eager and torch.compile "
                                         "(see the module help for what is measured).")
    train.add_argument("--ours-json", help="bench_train --json output from this machine: adds the ratio table")
    train.add_argument("--models", type=comma_list(list(TRAIN_MODELS)), default=["baby", "gpt2", "seed"],
                       help="comma-separated, from baby, gpt2, seed (default: all three)")
    train.add_argument("--backends", type=comma_list(["eager", "compile"]), default=["eager", "compile"],
                       help="comma-separated, from eager, compile (default: both)")
    train.add_argument("--steps", type=int, default=30, help="timed steps; the median is reported")
    train.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    train.add_argument("--sdpa", choices=["flash", "auto"], default="flash",
                       help="attention backend: flash only, or PyTorch's own choice")
    train.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                       help="cpu: a smoke test of the script only (use --models tiny)")
    train.add_argument("--md", help="also write the tables to this file")

    if not argv or argv[0] not in MODES + ("-h", "--help"):
        argv = ["layer"] + list(argv)  # old command lines name no mode
    args = ap.parse_args(argv)
    if args.mode == "train" and (args.steps < 1 or args.warmup < 0):
        ap.error("train: --steps must be >= 1 and --warmup >= 0")
    return args


def main(argv):
    args = parse_args(argv)
    if torch is None:
        print(f"compare_torch: PyTorch is needed to run ({TORCH_IMPORT_ERROR})", file=sys.stderr)
        return 2
    if args.mode == "train" and args.device == "cuda" and not torch.cuda.is_available():
        print("compare_torch: no CUDA device (train --device cpu is a smoke test)", file=sys.stderr)
        return 2
    return run_train(args) if args.mode == "train" else run_layer(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
