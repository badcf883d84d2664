"""A tiny GPT for the course: text that ships with Python, a character tokeniser and the model.

Notebook 02 builds this model step by step and checks that it matches this file; notebooks 03 and
04 and train_ddp.py import it, so the notebook and the batch job train exactly the same model.
Nothing is downloaded: the text is the Python documentation that comes with the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def stdlib_text() -> str:
    """The documentation topics of the Python language reference, as shipped with Python itself.

    `pydoc_data.topics` is what `help("with")` shows; the topics are joined in sorted order so the
    text is the same on every run. Distributions that leave pydoc_data out get the source code of
    a few standard-library modules instead (also text that ships offline).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        import inspect
        import json
        import pathlib
        import textwrap

        return "\n\n".join(inspect.getsource(m) for m in (json, pathlib, textwrap, inspect))
    return "\n\n".join(topics[name].strip() for name in sorted(topics))


class CharTokenizer:
    """One token per character: a vocabulary of the characters that occur in the text."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


@dataclass
class GPTConfig:
    vocab_size: int
    context: int = 64        # tokens the model sees at once
    d_model: int = 64        # width of every token's vector
    n_heads: int = 4
    n_layers: int = 2
    dropout: float = 0.0

    @classmethod
    def for_size(cls, vocab_size: int, data_size: str) -> GPTConfig:
        """`small` trains in seconds on 2 CPU cores; `full` (about 11 M parameters) is for a GPU."""
        if data_size == "small":
            return cls(vocab_size)
        return cls(vocab_size, context=256, d_model=384, n_heads=6, n_layers=6, dropout=0.1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)    # queries, keys and values in one matmul
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # the fused kernel computes softmax(q k^T / sqrt(d) + causal mask) v (FlashAttention on GPUs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():      # GPT-2: scale the residual projections by depth
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        logits = self.head(self.ln_f(self.blocks(x)))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    @torch.no_grad()
    def generate(self, idx, n_new: int, temperature: float = 1.0, generator=None):
        """Sample n_new tokens after idx, one at a time, from the model's next-token distribution."""
        self.eval()
        for _ in range(n_new):
            logits, _ = self(idx[:, -self.cfg.context:])
            probs = torch.softmax(logits[:, -1] / temperature, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def random_windows(data: torch.Tensor, batch: int, context: int, generator: torch.Generator):
    """`batch` random windows of the token tensor: inputs and the same windows shifted by one."""
    starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
    x = torch.stack([data[s:s + context] for s in starts.tolist()])
    y = torch.stack([data[s + 1:s + context + 1] for s in starts.tolist()])
    return x, y


@torch.no_grad()
def estimate_loss(model, data: torch.Tensor, batches: int, batch: int, device, seed: int = 0) -> float:
    """Mean loss on `batches` fixed random windows of `data` (the same windows on every call)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(batches):
        x, y = random_windows(data, batch, model.cfg.context, gen)
        losses.append(model(x.to(device), y.to(device))[1].item())
    model.train()
    return sum(losses) / len(losses)
