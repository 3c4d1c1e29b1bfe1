"""Host networks: the fixed trunk that seeds grow into, cut into stages with a slot after each.

A host is a list of stages ``stage_0 .. stage_n``: stage ``i < n`` ends where slot ``i`` sits,
stage ``n`` is the head. ``MorphogeneticModel`` groups stages between the slots it selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from esper_engine.contracts import HostKind


class CNNHost(nn.Module):
    """Conv blocks (3x3 conv, BatchNorm, ReLU, max-pool), a slot after each, pooled linear head."""

    host_kind: ClassVar[HostKind] = "cnn"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        # Small on purpose: the growth study (bench/growth.py) needs a host that stays clearly
        # below host + seeds. With a tuned lr, 4-8-16 reached 0.88 on synthetic-images in the
        # default budget, within ~3 points of host + seeds; 3-6-12 stays near 0.79.
        widths: Sequence[int] = (3, 6, 12),
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("CNNHost needs at least one block width")
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            for i in range(len(widths))
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)
        )
        self.slot_ids: list[str] = [f"block{i + 1}" for i in range(len(widths))]
        self.slot_dims: dict[str, int] = dict(zip(self.slot_ids, widths, strict=True))

    @property
    def n_stages(self) -> int:
        return len(self.blocks) + 1

    def run_stage(self, i: int, h: Tensor) -> Tensor:
        return self.blocks[i](h) if i < len(self.blocks) else self.head(h)

    def run_stage_with_input(self, i: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """Block ``i``'s output and what its units read (its input): a ``widen`` seed's input."""
        return self.blocks[i](h), h

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.n_stages):
            x = self.run_stage(i, x)
        return x


class DecoderLayer(nn.Module):
    """Pre-LN causal decoder layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def _attend(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: Tensor) -> Tensor:
        x = self._attend(x)
        return x + self.mlp(self.ln2(x))

    def forward_with_mlp_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The layer's output and its MLP's input (``ln2`` of the attention's output)."""
        x = self._attend(x)
        u = self.ln2(x)
        return x + self.mlp(u), u


class TransformerHost(nn.Module):
    """Byte-level causal LM: embeddings, pre-LN decoder layers, a slot after each segment."""

    host_kind: ClassVar[HostKind] = "transformer"

    def __init__(
        self,
        vocab: int = 256,
        seq_len: int = 128,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 3,
        layers_per_segment: int = 1,
    ) -> None:
        super().__init__()
        if n_layers < 1 or layers_per_segment < 1 or n_layers % layers_per_segment:
            raise ValueError(
                f"n_layers {n_layers} must be a positive multiple of "
                f"layers_per_segment {layers_per_segment}"
            )
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        # GPT-style small embeddings: unit-variance ones would swamp the residual stream at init.
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.layers_per_segment = layers_per_segment
        # A slot sits after layer i (1-based) at the end of each segment.
        self.slot_ids: list[str] = [
            f"layer{i}" for i in range(layers_per_segment, n_layers + 1, layers_per_segment)
        ]
        self.slot_dims: dict[str, int] = dict.fromkeys(self.slot_ids, d_model)

    @property
    def n_stages(self) -> int:
        return len(self.slot_ids) + 1

    def embed(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        if t > self.seq_len:
            raise ValueError(f"sequence length {t} exceeds the host's seq_len {self.seq_len}")
        return self.tok_emb(x) + self.pos_emb.weight[:t]

    def run_stage(self, i: int, h: Tensor) -> Tensor:
        if i == len(self.slot_ids):
            return self.head(self.ln_f(h))
        if i == 0:
            h = self.embed(h)
        for layer in self.layers[i * self.layers_per_segment : (i + 1) * self.layers_per_segment]:
            h = layer(h)
        return h

    def run_stage_with_input(self, i: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """Stage ``i < n``'s output and what its last layer's MLP units read: a ``widen`` seed's
        input (its new hidden units sit beside that MLP's)."""
        if i == 0:
            h = self.embed(h)
        layers = self.layers[i * self.layers_per_segment : (i + 1) * self.layers_per_segment]
        for layer in layers[:-1]:
            h = layer(h)
        return layers[-1].forward_with_mlp_input(h)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.n_stages):
            x = self.run_stage(i, x)
        return x
