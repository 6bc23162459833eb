#!/usr/bin/python3
"""Checks a fusegpt checkpoint against the schema in docs/checkpoint.md.

    /usr/bin/python3 scripts/check_checkpoint.py CK.h5

Opens the file with h5py, computes every parameter name and shape from /config
(DESIGN.md "The model"), and checks names, shapes and dtypes of /model and the
optimizer groups, the root, /config, /optimizer, /trainer and /tokenizer
attributes. Prints what it checked; exits 1 with one line per problem.
"""

import argparse
import sys

import numpy as np

try:
    import h5py
except ImportError:  # pragma: no cover
    sys.exit("check_checkpoint: needs h5py (Debian: apt-get install python3-h5py)")

FORMAT = "fusegpt"
FORMAT_VERSION = 1
ROOT_ATTRS = ("format", "format_version", "step", "tokens_seen")
ROOT_GROUPS = ("config", "model", "optimizer", "tokenizer", "trainer")
# GPTConfig fields (trainer/config.h visit_fields): int64, float64, or bool stored as int64 0/1.
CONFIG_FIELDS = {
    "vocab_size": "int",
    "n_layer": "int",
    "n_head": "int",
    "n_kv_head": "int",
    "d_model": "int",
    "d_ff": "int",
    "max_seq_len": "int",
    "rope_theta": "float",
    "rotary_dim": "int",
    "norm_eps": "float",
    "qkv_bias": "bool",
    "tie_embeddings": "bool",
}
OPTIMIZER_ATTRS = {"lr": "float", "beta1": "float", "beta2": "float", "eps": "float",
                   "weight_decay": "float", "step": "int"}
TOKENIZER_KINDS = ("byte", "char")
BYTE_VOCAB = 256


class Checker:
    def __init__(self, path):
        self.path = path
        self.problems = []
        self.checked = 0

    def fail(self, message):
        self.problems.append(message)

    def expect(self, ok, message):
        self.checked += 1
        if not ok:
            self.fail(message)
        return ok

    def attr(self, obj, name, kind):
        """Checks that obj has scalar attribute `name` of kind int/float/bool/str; returns it."""
        where = f"{obj.name} attribute '{name}'"
        if not self.expect(name in obj.attrs, f"{where} is missing"):
            return None
        value = obj.attrs[name]
        if kind == "str":
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            self.expect(isinstance(value, str), f"{where} is {type(value).__name__}, expected a string")
            return value
        arr = np.asarray(value)
        want = {"int": np.dtype("int64"), "bool": np.dtype("int64"), "float": np.dtype("float64")}[kind]
        if not self.expect(arr.shape in ((), (1,)), f"{where} has shape {arr.shape}, expected a scalar"):
            return None
        if not self.expect(arr.dtype == want, f"{where} is {arr.dtype}, expected {want}"):
            return None
        value = arr.reshape(()).item()
        if kind == "bool":
            self.expect(value in (0, 1), f"{where} is {value}, expected 0 or 1")
        return value

    def exact_names(self, what, got, want):
        missing = [n for n in want if n not in got]
        extra = [n for n in got if n not in want]
        self.expect(not missing, f"{what}: missing {', '.join(missing)}")
        self.expect(not extra, f"{what}: unexpected {', '.join(extra)}")


def round_up(x, m):
    return (x + m - 1) // m * m


def parameter_table(cfg):
    """Names and shapes from DESIGN.md "Parameter names", weights [out, in]."""
    V, L, D = cfg["vocab_size"], cfg["n_layer"], cfg["d_model"]
    H = cfg["n_head"]
    Hkv = cfg["n_kv_head"] or H
    hd = D // H
    F = cfg["d_ff"] or round_up(8 * D // 3, 64)
    qkv = (H + 2 * Hkv) * hd
    table = [("tok_embeddings.weight", (V, D))]
    for i in range(L):
        p = f"layers.{i}."
        table.append((p + "attn_norm.weight", (D,)))
        table.append((p + "attn.wqkv.weight", (qkv, D)))
        if cfg["qkv_bias"]:
            table.append((p + "attn.wqkv.bias", (qkv,)))
        table.append((p + "attn.wo.weight", (D, D)))
        table.append((p + "mlp_norm.weight", (D,)))
        table.append((p + "mlp.w_gate_up.weight", (2 * F, D)))
        table.append((p + "mlp.w_down.weight", (D, F)))
    table.append(("norm.weight", (D,)))
    if not cfg["tie_embeddings"]:
        table.append(("lm_head.weight", (V, D)))
    return table


def check_config(c, f):
    group = f["config"]
    c.exact_names("/config attributes", list(group.attrs.keys()), list(CONFIG_FIELDS))
    cfg = {name: c.attr(group, name, kind) for name, kind in CONFIG_FIELDS.items()}
    if any(v is None for v in cfg.values()):
        return None
    ok = c.expect(cfg["vocab_size"] > 0 and cfg["n_layer"] > 0 and cfg["n_head"] > 0,
                  "/config: vocab_size, n_layer and n_head must be > 0")
    ok = ok and c.expect(cfg["d_model"] > 0 and cfg["d_model"] % cfg["n_head"] == 0,
                         f"/config: d_model {cfg['d_model']} is not a multiple of n_head {cfg['n_head']}")
    ok = ok and c.expect(cfg["n_kv_head"] >= 0 and cfg["n_head"] % (cfg["n_kv_head"] or cfg["n_head"]) == 0,
                         f"/config: n_head {cfg['n_head']} is not a multiple of n_kv_head {cfg['n_kv_head']}")
    ok = ok and c.expect(cfg["d_ff"] >= 0, f"/config: d_ff {cfg['d_ff']} is negative")
    if ok:
        hd = cfg["d_model"] // cfg["n_head"]
        rot = cfg["rotary_dim"] or hd
        c.expect(cfg["rotary_dim"] >= 0 and rot % 2 == 0 and rot <= hd,
                 f"/config: rotary_dim {rot} must be even and <= head_dim {hd}")
    return cfg if ok else None


def check_tensors(c, group, table):
    """Every dataset in `group` is float32 with the table's name and shape, nothing else."""
    names = list(group.keys())
    c.exact_names(group.name, names, [n for n, _ in table])
    for name, shape in table:
        if name not in group:
            continue
        ds = group[name]
        where = f"{group.name}/{name}"
        if not c.expect(isinstance(ds, h5py.Dataset), f"{where} is not a dataset"):
            continue
        c.expect(ds.dtype == np.dtype("float32"), f"{where} is {ds.dtype}, expected float32")
        c.expect(tuple(ds.shape) == tuple(shape),
                 f"{where} has shape {tuple(ds.shape)} but the schema wants {tuple(shape)}")


def check(path):
    c = Checker(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        return [f"cannot open as HDF5: {e}"], 0, []
    report = []
    with f:
        c.exact_names("root attributes", list(f.attrs.keys()), list(ROOT_ATTRS))
        fmt = c.attr(f, "format", "str")
        c.expect(fmt == FORMAT, f"format is {fmt!r}, expected {FORMAT!r}")
        version = c.attr(f, "format_version", "int")
        c.expect(version == FORMAT_VERSION, f"format_version is {version}, expected {FORMAT_VERSION}")
        step = c.attr(f, "step", "int")
        tokens = c.attr(f, "tokens_seen", "int")
        c.expect(step is None or step >= 0, f"step is {step}, expected >= 0")
        c.expect(tokens is None or tokens >= 0, f"tokens_seen is {tokens}, expected >= 0")
        report.append(f"root: format {fmt!r} version {version}, step {step}, tokens_seen {tokens}")

        c.exact_names("root groups", list(f.keys()), list(ROOT_GROUPS))
        missing = [g for g in ROOT_GROUPS if not isinstance(f.get(g), h5py.Group)]
        if missing:
            c.fail(f"missing group(s) {', '.join('/' + g for g in missing)}")
            return c.problems, c.checked, report

        cfg = check_config(c, f)
        if cfg is None:
            c.fail("/config is incomplete or invalid; parameter shapes not checked")
            return c.problems, c.checked, report
        report.append("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))

        table = parameter_table(cfg)
        numel = sum(int(np.prod(s)) for _, s in table)
        check_tensors(c, f["model"], table)
        report.append(f"/model: {len(table)} float32 parameters, {numel} values")

        opt = f["optimizer"]
        c.exact_names("/optimizer attributes", list(opt.attrs.keys()), list(OPTIMIZER_ATTRS))
        values = {n: c.attr(opt, n, k) for n, k in OPTIMIZER_ATTRS.items()}
        c.exact_names("/optimizer groups", list(opt.keys()), ["exp_avg", "exp_avg_sq"])
        for name in ("exp_avg", "exp_avg_sq"):
            if c.expect(isinstance(opt.get(name), h5py.Group), f"missing group /optimizer/{name}"):
                check_tensors(c, opt[name], table)
        report.append("/optimizer: " + ", ".join(f"{k}={v}" for k, v in values.items())
                      + f"; exp_avg, exp_avg_sq: {len(table)} float32 tensors each")

        trainer = f["trainer"]
        c.expect(len(trainer.keys()) == 0, f"/trainer holds objects {list(trainer.keys())}, expected attributes only")
        for name, value in trainer.attrs.items():
            arr = np.asarray(value)
            ok = isinstance(value, (str, bytes)) or (
                arr.shape in ((), (1,)) and arr.dtype in (np.dtype("int64"), np.dtype("float64")))
            c.expect(ok, f"/trainer attribute '{name}' is {arr.dtype}{arr.shape}, expected an int64, float64 or string scalar")
        report.append(f"/trainer: {len(trainer.attrs)} attributes ({', '.join(sorted(trainer.attrs.keys()))})")

        tok = f["tokenizer"]
        kind = c.attr(tok, "kind", "str")
        c.exact_names("/tokenizer attributes", list(tok.attrs.keys()), ["kind"])
        if c.expect(kind in TOKENIZER_KINDS, f"/tokenizer kind is {kind!r}, expected one of {TOKENIZER_KINDS}"):
            if kind == "byte":
                c.exact_names("/tokenizer", list(tok.keys()), [])
                c.expect(BYTE_VOCAB <= cfg["vocab_size"],
                         f"byte tokenizer needs vocab_size >= {BYTE_VOCAB}, /config has {cfg['vocab_size']}")
                report.append(f"/tokenizer: byte ({BYTE_VOCAB} ids)")
            else:
                c.exact_names("/tokenizer", list(tok.keys()), ["vocab"])
                vocab = tok.get("vocab")
                if isinstance(vocab, h5py.Dataset):
                    c.expect(vocab.dtype == np.dtype("uint8"), f"/tokenizer/vocab is {vocab.dtype}, expected uint8")
                    c.expect(vocab.ndim == 1, f"/tokenizer/vocab has shape {vocab.shape}, expected 1-d")
                    chars = np.asarray(vocab[()]).reshape(-1)
                    c.expect(len(chars) > 0, "/tokenizer/vocab is empty")
                    c.expect(len(set(chars.tolist())) == len(chars), "/tokenizer/vocab repeats a character")
                    c.expect(len(chars) <= cfg["vocab_size"],
                             f"/tokenizer/vocab has {len(chars)} characters but /config vocab_size is {cfg['vocab_size']}")
                    report.append(f"/tokenizer: char, {len(chars)} characters")
    return c.problems, c.checked, report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="fusegpt checkpoint (.h5)")
    args = parser.parse_args()
    problems, checked, report = check(args.checkpoint)
    for line in report:
        print(line)
    if problems:
        for p in problems:
            print(f"check_checkpoint: {args.checkpoint}: {p}", file=sys.stderr)
        print(f"check_checkpoint: {args.checkpoint}: FAILED, {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_checkpoint: {args.checkpoint}: OK ({checked} checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
