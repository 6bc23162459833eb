"""fusegpt's Llama-style GPT in plain PyTorch, for benchmarking against it.

The same model as trainer/model.cpp and DESIGN.md "The model": the same config
fields (trainer/config.h), parameter names and shapes (weights [out, in]), init and
math. Written as a PyTorch user would write it: nn.Linear / nn.RMSNorm / nn.Embedding,
F.scaled_dot_product_attention, and mixed precision left to torch.autocast, so the
residual stream stays fp32 where ours carries it in bf16. Also home of the RoPE
helpers that compare_torch.py's layer mode checks our fused kernel with.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-5
THETA = 10000.0


def rope_tables(T, rot, offset, device, theta=THETA):
    """positions, cos, sin (T, rot/2) in fp32 with the framework's angles: pos * theta^(-2i/rot)."""
    i = torch.arange(rot // 2, dtype=torch.float64)
    inv_freq = torch.exp2(-2.0 * i / rot * math.log2(theta)).float().to(device)
    pos = torch.arange(offset, offset + T, dtype=torch.int32, device=device)
    angle = pos.float()[:, None] * inv_freq[None, :]
    return pos, torch.cos(angle), torch.sin(angle)


def rope(x, cos, sin, rot):
    """Rotate-half RoPE on the first rot dims of each head; x (B, T, heads, hd)."""
    half = rot // 2
    c = cos[None, :, None, :].to(x.dtype)
    s = sin[None, :, None, :].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rot], x[..., rot:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


@dataclass
class GPTConfig:
    """trainer/config.h's GPTConfig: the same fields, defaults and derived sizes."""

    vocab_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 0  # 0: same as n_head
    d_model: int = 64
    d_ff: int = 0  # 0: round_up(8 * d_model / 3, 64)
    max_seq_len: int = 64
    rope_theta: float = THETA
    rotary_dim: int = 0  # 0: head_dim
    norm_eps: float = EPS
    qkv_bias: bool = False
    tie_embeddings: bool = False

    def head_dim(self):
        return self.d_model // self.n_head

    def kv_heads(self):
        return self.n_kv_head if self.n_kv_head > 0 else self.n_head

    def ff_dim(self):
        return self.d_ff if self.d_ff > 0 else (8 * self.d_model // 3 + 63) // 64 * 64

    def rope_dim(self):
        return self.rotary_dim if self.rotary_dim > 0 else self.head_dim()

    def qkv_dim(self):
        return (self.n_head + 2 * self.kv_heads()) * self.head_dim()


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wqkv = nn.Linear(cfg.d_model, cfg.qkv_dim(), bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, n, cos, sin):  # n (B, T, D)
        c = self.cfg
        B, T, D = n.shape
        H, Hkv, hd, rot = c.n_head, c.kv_heads(), c.head_dim(), c.rope_dim()
        q, k, v = self.wqkv(n).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)  # head-major columns
        q = rope(q.view(B, T, H, hd), cos, sin, rot).transpose(1, 2)  # (B, H, T, hd)
        k = rope(k.view(B, T, Hkv, hd), cos, sin, rot).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, Hkv, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)
        return self.wo(a.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w_gate_up = nn.Linear(cfg.d_model, 2 * cfg.ff_dim(), bias=False)  # gate rows first, then up
        self.w_down = nn.Linear(cfg.ff_dim(), cfg.d_model, bias=False)

    def forward(self, n):
        g, u = self.w_gate_up(n).chunk(2, dim=-1)
        return self.w_down(F.silu(g) * u)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Parameters named as in DESIGN.md (tok_embeddings.weight, layers.{i}.attn.wqkv.weight, ...)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        _, cos, sin = rope_tables(cfg.max_seq_len, cfg.rope_dim(), 0, "cpu", cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # (max_seq_len, rot/2)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """DESIGN.md's init: N(0, 0.02), wo and w_down N(0, 0.02/sqrt(2L)), norms 1, biases 0."""
        std_residual = 0.02 / math.sqrt(2.0 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif name.endswith(("attn.wo.weight", "mlp.w_down.weight")):
                p.normal_(0.0, std_residual)
            else:
                p.normal_(0.0, 0.02)

    def head_weight(self):
        return self.tok_embeddings.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, idx, targets):
        """Mean next-token cross-entropy; idx, targets (B, T) int64."""
        T = idx.size(1)
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.tok_embeddings(idx)  # (B, T, D)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = F.linear(self.norm(x), self.head_weight())  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def num_params(self, embedding=True):
        """All parameters; without the token embedding table when embedding is False."""
        n = sum(p.numel() for p in self.parameters())
        return n if embedding else n - self.tok_embeddings.weight.numel()


def adamw(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True):
    """AdamW as ours: decoupled decay on parameters with >= 2 dims only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=fused)
