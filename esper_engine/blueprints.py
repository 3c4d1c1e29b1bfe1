"""Seed blueprints: the module types a slot can grow, with their parameter counts.

Every seed is residual, ``seed(h) = h + f(h)``, with the last layer of ``f`` zero-initialised so a
freshly germinated seed is exactly the identity and does not disturb the host. Seeds normalise with
GroupNorm or LayerNorm only: BatchNorm would make a sample's output depend on its batch, which
breaks fused (batch-stacked) counterfactual evaluation.
CNN seeds take ``[B, C, H, W]`` (dim = C); Transformer seeds take ``[B, T, D]`` (dim = D).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Blueprint:
    """A named seed type: ``build(dim)`` makes the module, ``param_count(dim)`` sizes it."""

    name: str
    host_kind: str
    description: str
    _build: Callable[[int], nn.Module]
    _count: Callable[[int], int]

    def build(self, dim: int) -> nn.Module:
        return self._build(dim)

    def param_count(self, dim: int) -> int:
        return self._count(dim)


class Residual(nn.Module):
    """``h + body(h)``; the body's last layer starts at zero, so the seed starts as the identity."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _groups(channels: int) -> int:
    """GroupNorm group count: up to 8 groups that divide the channel count."""
    return math.gcd(channels, 8)


# --- CNN seeds ---------------------------------------------------------------------------------


def _light_hidden(c: int) -> int:
    return max(16, c)


def _heavy_hidden(c: int) -> int:
    return max(32, 2 * c)


def _se_hidden(c: int) -> int:
    return max(4, c // 4)


def _conv_light(c: int) -> nn.Module:
    h = _light_hidden(c)
    return Residual(
        nn.Sequential(
            nn.Conv2d(c, h, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(h), h),
            nn.ReLU(),
            _zero(nn.Conv2d(h, c, 1)),
        )
    )


def _conv_heavy(c: int) -> nn.Module:
    h = _heavy_hidden(c)
    return Residual(
        nn.Sequential(
            nn.Conv2d(c, h, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(h), h),
            nn.ReLU(),
            _zero(nn.Conv2d(h, c, 3, padding=1)),
        )
    )


class SqueezeExcite(nn.Module):
    """Channel attention; a tanh gate (not sigmoid) so a zeroed last layer gives exactly 0."""

    def __init__(self, c: int) -> None:
        super().__init__()
        r = _se_hidden(c)
        self.squeeze = nn.Linear(c, r)
        self.excite = _zero(nn.Linear(r, c))

    def forward(self, h: Tensor) -> Tensor:
        gate = torch.tanh(self.excite(F.relu(self.squeeze(h.mean(dim=(2, 3))))))
        return h * gate[:, :, None, None]


def _squeeze_excite(c: int) -> nn.Module:
    return Residual(SqueezeExcite(c))


def _depthwise(c: int) -> nn.Module:
    return Residual(
        nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
            nn.GroupNorm(_groups(c), c),
            nn.ReLU(),
            _zero(nn.Conv2d(c, c, 1)),
        )
    )


def _cnn_norm(c: int) -> nn.Module:
    return Residual(_zero(nn.GroupNorm(_groups(c), c)))


# --- Transformer seeds -------------------------------------------------------------------------


def _lora_rank(d: int) -> int:
    return min(8, d)


def _attn_width(d: int) -> int:
    return max(8, d // 2)


def _lora(d: int) -> nn.Module:
    r = _lora_rank(d)
    return Residual(nn.Sequential(nn.Linear(d, r, bias=False), _zero(nn.Linear(r, d, bias=False))))


def _mlp_small(d: int) -> nn.Module:
    return Residual(
        nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), _zero(nn.Linear(d, d)))
    )


class CausalSelfAttention(nn.Module):
    """Small causal self-attention: position t only ever reads positions <= t."""

    def __init__(self, d: int) -> None:
        super().__init__()
        width = _attn_width(d)
        self.heads = max(1, width // 16)
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * width)
        self.out = _zero(nn.Linear(width, d))

    def forward(self, h: Tensor) -> Tensor:
        b, t, _ = h.shape
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


def _attention(d: int) -> nn.Module:
    return Residual(CausalSelfAttention(d))


def _lm_norm(d: int) -> nn.Module:
    return Residual(_zero(nn.LayerNorm(d)))


def _catalogue() -> dict[str, dict[str, Blueprint]]:
    cnn = [
        Blueprint(
            "conv_light",
            "cnn",
            "3x3 conv to 16+ channels, GroupNorm, ReLU, 1x1 conv back",
            _conv_light,
            lambda c: 9 * c * _light_hidden(c) + 2 * _light_hidden(c) + _light_hidden(c) * c + c,
        ),
        Blueprint(
            "conv_heavy",
            "cnn",
            "two 3x3 convs through 32+ channels",
            _conv_heavy,
            lambda c: 18 * c * _heavy_hidden(c) + 2 * _heavy_hidden(c) + c,
        ),
        Blueprint(
            "attention",
            "cnn",
            "squeeze-excitation channel gate",
            _squeeze_excite,
            lambda c: 2 * c * _se_hidden(c) + _se_hidden(c) + c,
        ),
        Blueprint(
            "depthwise",
            "cnn",
            "depthwise-separable 3x3 conv",
            _depthwise,
            lambda c: c * c + 12 * c,
        ),
        Blueprint("norm", "cnn", "GroupNorm with a learned affine", _cnn_norm, lambda c: 2 * c),
    ]
    lm = [
        Blueprint(
            "lora",
            "transformer",
            "low-rank adapter (rank 8)",
            _lora,
            lambda d: 2 * d * _lora_rank(d),
        ),
        Blueprint(
            "mlp_small",
            "transformer",
            "LayerNorm + D->D->D MLP",
            _mlp_small,
            lambda d: 2 * d * d + 4 * d,
        ),
        Blueprint(
            "attention",
            "transformer",
            "small causal self-attention",
            _attention,
            lambda d: 2 * d + 4 * _attn_width(d) * d + 3 * _attn_width(d) + d,
        ),
        Blueprint(
            "norm", "transformer", "LayerNorm with a learned affine", _lm_norm, lambda d: 2 * d
        ),
    ]
    return {"cnn": {b.name: b for b in cnn}, "transformer": {b.name: b for b in lm}}


BLUEPRINTS: dict[str, dict[str, Blueprint]] = _catalogue()


def blueprint_names(host_kind: str) -> list[str]:
    """Blueprint names for a host kind, in catalogue order (stable: action indices rely on it)."""
    return list(_kind(host_kind))


def get_blueprint(host_kind: str, name: str) -> Blueprint:
    """Look a blueprint up; a one-line ValueError names the known ones."""
    known = _kind(host_kind)
    if name not in known:
        raise ValueError(f"unknown {host_kind} blueprint {name!r}; known: {', '.join(known)}")
    return known[name]


def _kind(host_kind: str) -> dict[str, Blueprint]:
    if host_kind not in BLUEPRINTS:
        raise ValueError(f"unknown host kind {host_kind!r}; known: {', '.join(BLUEPRINTS)}")
    return BLUEPRINTS[host_kind]
