"""Seed blueprints: the module types a slot can grow.

Every seed is residual, ``seed(h) = h + f(h)``, with the last layer of ``f`` zero-initialised so a
freshly germinated seed is exactly the identity and does not disturb the host. Seeds normalise with
GroupNorm or LayerNorm only: BatchNorm would make a sample's output depend on its batch, which
breaks fused (batch-stacked) counterfactual evaluation.
CNN seeds take ``[B, C, H, W]`` (dim = C); Transformer seeds take ``[B, T, D]`` (dim = D).

Two kinds grow the host itself rather than adding an adapter beside it (``Blueprint.operator``):
- ``widen``: the block before the slot gains new units that read the block's own input (CNN: ``C``
  new 3x3 conv channels beside the block's, with GroupNorm, ReLU and the block's pool; Transformer:
  ``2 D`` new MLP hidden units of the segment's last layer, reading that layer's ``ln2`` output).
  Their outgoing weights start at zero (MSG-style), so the function is unchanged at germination;
  on a CNN they reach the next block through a zero-initialised 1x1 map onto the block's output
  channels, so the slot's width and every later shape stay fixed. The module is
  ``h + out(units(u))`` with ``u`` the block input (``reads_block_input``).
- ``stack``: a new block after the slot's block, initialised as a copy of it, behind a
  zero-initialised residual gate (G_stack-style): ``h + gate * f(h)``. Transformer: a deep copy of
  the segment's last decoder layer (``f(h) = layer(h) - h``). CNN: block k maps C_{k-1} to C_k
  channels and pools, so its copy keeps the conv (input channels folded onto the C_k channels as
  Net2Net does: input channel j reads block k's input channel j mod C_{k-1}, divided by the number
  of copies), takes the BatchNorm's affine into a GroupNorm, and drops the pool.
Both train at the host's learning rate (``Blueprint.lr_source``): they are host units.
Parameter counts are never computed by formula: ``sum(p.numel())`` of a built module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OPERATORS = ("residual", "widen", "stack")
LR_SOURCES = ("seed", "host")


@dataclass(frozen=True)
class SeedSite:
    """Where a seed is built: the slot's width, and for the growth operators the host and the
    index of the host stage that ends at the slot (the block they widen or copy)."""

    dim: int
    host: Any = None
    stage: int | None = None


@dataclass(frozen=True)
class Blueprint:
    """A named seed type: ``build(site)`` makes the module (``site`` may be the slot width alone
    for residual seeds). ``operator``: residual adapter, or a growth operator (widen, stack);
    ``lr_source``: the seed's optimizer runs at the seed lr or at the host's lr."""

    name: str
    host_kind: str
    description: str
    _build: Callable[[SeedSite], nn.Module]
    operator: str = "residual"
    lr_source: str = "seed"

    def build(self, site: SeedSite | int) -> nn.Module:
        if isinstance(site, int):
            site = SeedSite(site)
        if self.operator != "residual" and site.host is None:
            raise ValueError(f"blueprint {self.name!r} grows a host block: it needs the host")
        return self._build(site)


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


# --- growth operators ---------------------------------------------------------------------------


class WidenConv(nn.Module):
    """``extra`` new channels of a conv block (3x3 conv of the block's input, GroupNorm, ReLU,
    pool), reaching the block's output through a zero-initialised 1x1 map."""

    reads_block_input = True

    def __init__(self, c_in: int, c_out: int, extra: int, pool: nn.Module) -> None:
        super().__init__()
        self.units = nn.Sequential(
            nn.Conv2d(c_in, extra, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(extra), extra),
            nn.ReLU(),
            pool,
        )
        self.out = _zero(nn.Conv2d(extra, c_out, 1, bias=False))

    def forward(self, h: Tensor, block_input: Tensor) -> Tensor:
        return h + self.out(self.units(block_input))


class WidenMLP(nn.Module):
    """``extra`` new hidden units of a decoder layer's MLP: they read the layer's ``ln2`` output
    and their outgoing weights start at zero."""

    reads_block_input = True

    def __init__(self, d: int, extra: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, extra)
        self.down = _zero(nn.Linear(extra, d, bias=False))

    def forward(self, h: Tensor, block_input: Tensor) -> Tensor:
        return h + self.down(F.gelu(self.up(block_input)))


class GatedBlock(nn.Module):
    """A stacked block behind a zero-initialised residual gate: ``h + gate * f(h)``, where
    ``f(h) = block(h) - h`` for a block that carries its own residual (a decoder layer)."""

    def __init__(self, block: nn.Module, *, block_is_residual: bool) -> None:
        super().__init__()
        self.block = block
        self.block_is_residual = block_is_residual
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: Tensor) -> Tensor:
        f = self.block(h)
        if self.block_is_residual:
            f = f - h
        return h + self.gate * f


def _host_block(site: SeedSite) -> nn.Module:
    """The host block that ends at the slot (CNN block, or the segment's last decoder layer)."""
    host, stage = site.host, site.stage
    if host.host_kind == "cnn":
        return host.blocks[stage]
    return host.layers[(stage + 1) * host.layers_per_segment - 1]


def _cnn_block_parts(block: nn.Module) -> tuple[nn.Conv2d, nn.Module, nn.Module]:
    conv = next(m for m in block if isinstance(m, nn.Conv2d))
    norm = next(m for m in block if isinstance(m, nn.modules.batchnorm._BatchNorm))
    pool = next(m for m in block if isinstance(m, nn.MaxPool2d | nn.AvgPool2d))
    return conv, norm, pool


def _widen_cnn(site: SeedSite) -> nn.Module:
    conv, _, pool = _cnn_block_parts(_host_block(site))
    return WidenConv(conv.in_channels, conv.out_channels, conv.out_channels, copy.deepcopy(pool))


def _widen_lm(site: SeedSite) -> nn.Module:
    return WidenMLP(site.dim, 2 * site.dim)


@torch.no_grad()
def _stack_cnn(site: SeedSite) -> nn.Module:
    conv, norm, _ = _cnn_block_parts(_host_block(site))
    c_in, c = conv.in_channels, conv.out_channels
    new_conv = nn.Conv2d(c, c, conv.kernel_size, padding=conv.padding, bias=False)
    device = conv.weight.device
    source = torch.arange(c) % c_in  # input channel j copies block k's input channel j mod c_in
    share = 1.0 / torch.bincount(source, minlength=c_in)[source].to(conv.weight.dtype)
    new_conv = new_conv.to(device)
    new_conv.weight.copy_(conv.weight[:, source.to(device)] * share.to(device).view(1, -1, 1, 1))
    gn = nn.GroupNorm(_groups(c), c).to(conv.weight.device)
    gn.weight.copy_(norm.weight)
    gn.bias.copy_(norm.bias)
    return GatedBlock(nn.Sequential(new_conv, gn, nn.ReLU()), block_is_residual=False)


def _stack_lm(site: SeedSite) -> nn.Module:
    block = copy.deepcopy(_host_block(site))
    for p in block.parameters():
        p.requires_grad_(True)
    return GatedBlock(block, block_is_residual=True)


def _dim(build: Callable[[int], nn.Module]) -> Callable[[SeedSite], nn.Module]:
    return lambda site: build(site.dim)


def _catalogue() -> dict[str, dict[str, Blueprint]]:
    cnn = [
        Blueprint(
            "conv_light",
            "cnn",
            "3x3 conv to 16+ channels, GroupNorm, ReLU, 1x1 conv back",
            _dim(_conv_light),
        ),
        Blueprint("conv_heavy", "cnn", "two 3x3 convs through 32+ channels", _dim(_conv_heavy)),
        Blueprint("attention", "cnn", "squeeze-excitation channel gate", _dim(_squeeze_excite)),
        Blueprint("depthwise", "cnn", "depthwise-separable 3x3 conv", _dim(_depthwise)),
        Blueprint("norm", "cnn", "GroupNorm with a learned affine", _dim(_cnn_norm)),
        Blueprint(
            "widen",
            "cnn",
            "the block gains as many channels again (zero outgoing weights)",
            _widen_cnn,
            operator="widen",
            lr_source="host",
        ),
        Blueprint(
            "stack",
            "cnn",
            "a copy of the block after it, behind a zero gate",
            _stack_cnn,
            operator="stack",
            lr_source="host",
        ),
    ]
    lm = [
        Blueprint("lora", "transformer", "low-rank adapter (rank 8)", _dim(_lora)),
        Blueprint("mlp_small", "transformer", "LayerNorm + D->D->D MLP", _dim(_mlp_small)),
        Blueprint("attention", "transformer", "small causal self-attention", _dim(_attention)),
        Blueprint("norm", "transformer", "LayerNorm with a learned affine", _dim(_lm_norm)),
        Blueprint(
            "widen",
            "transformer",
            "the last layer's MLP gains 2D hidden units (zero outgoing weights)",
            _widen_lm,
            operator="widen",
            lr_source="host",
        ),
        Blueprint(
            "stack",
            "transformer",
            "a copy of the last layer after it, behind a zero gate",
            _stack_lm,
            operator="stack",
            lr_source="host",
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
