"""The host a run trains: a named preset per host kind, sizes overriding it, one resolved spec.

``tiny`` is the host every embedded task has always trained (the growth study and CI rely on
it); ``small`` and ``base`` are the sizes users train (the CNN ones are esper-lite's
``cifar_baseline`` and ``CNNHost`` default, the Transformer base its default LM). The README's
host section gives each preset's parameters and FLOPs per sample, as measured.

Like ``config.py``, this module never imports torch: ``--print-config`` and config validation
resolve hosts without it. ``hosts.py`` builds the modules from a ``HostSpec``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from esper_engine.contracts import HostKind

HostPreset = Literal["tiny", "small", "base"]
# Which host each task trains, and the preset it trains unless the config names one. The tasks
# themselves carry ``host_kind`` too (tests/engine/test_hosts.py checks the two agree).
TASK_HOST_KIND: dict[str, HostKind] = {
    "synthetic-images": "cnn",
    "synthetic-stories": "transformer",
    "cifar10": "cnn",
    "tinystories": "transformer",
}
# Real datasets get a host a user would train: CNN base (95k parameters) trains a CIFAR-10 epoch
# on a CPU in minutes; the Transformer base (10.7M) wants a GPU, so tinystories takes small
# (0.8M), which a CPU trains; --set host.preset=base is one flag away.
TASK_DEFAULT_PRESET: dict[str, HostPreset] = {
    "synthetic-images": "tiny",
    "synthetic-stories": "tiny",
    "cifar10": "base",
    "tinystories": "small",
}
CNN_PRESETS: dict[HostPreset, tuple[int, ...]] = {
    "tiny": (3, 6, 12),
    "small": (8, 16, 32),
    "base": (32, 64, 128),
}
# (d_model, n_layers, n_heads, layers_per_segment): base has 3 slots, one every 2 layers.
TRANSFORMER_PRESETS: dict[HostPreset, tuple[int, int, int, int]] = {
    "tiny": (64, 3, 4, 1),
    "small": (128, 4, 4, 1),
    "base": (384, 6, 6, 2),
}
# Each CNN block halves the 32x32 image: a sixth would pool a 1x1 map away.
MAX_CNN_BLOCKS = 5
MAX_WIDTH = 8192  # channels or d_model; anything larger is a typo (the memory check sees the rest)
MAX_LAYERS = 96
CNN_KNOBS = ("widths",)
TRANSFORMER_KNOBS = ("d_model", "n_layers", "n_heads", "layers_per_segment")


class HostSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved host: its kind, the preset it started from and every size it is built with."""

    kind: HostKind
    preset: HostPreset  # the preset the sizes start from (knobs may have changed some)
    widths: tuple[int, ...] = ()  # CNN block widths
    d_model: int = 0  # Transformer sizes (0 on a CNN)
    n_layers: int = 0
    n_heads: int = 0
    layers_per_segment: int = 0

    def host_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``CNNHost`` / ``TransformerHost`` (hosts.py)."""
        match self.kind:
            case "cnn":
                return {"widths": self.widths}
            case "transformer":
                return {
                    "d_model": self.d_model,
                    "n_layers": self.n_layers,
                    "n_heads": self.n_heads,
                    "layers_per_segment": self.layers_per_segment,
                }

    def sizes(self) -> str:
        """The sizes in a few characters: ``32-64-128``, ``384x6 h6 /2``."""
        match self.kind:
            case "cnn":
                return "-".join(str(w) for w in self.widths)
            case "transformer":
                text = f"{self.d_model}x{self.n_layers} h{self.n_heads}"
                per_segment = self.layers_per_segment
                return text if per_segment == 1 else f"{text} /{per_segment}"

    def label(self) -> str:
        """``cnn 32-64-128``: what the console and ``ps`` show."""
        return f"{self.kind} {self.sizes()}"


def resolve_host(host: Any, task: str, kind: str | None = None) -> HostSpec:
    """The host a run with config group ``host`` (a ``HostConfig``) on ``task`` trains.

    ``kind`` overrides the task table's host kind (a task object built in Python knows its own).
    Raises ValueError with a one-line message naming the ``host.`` key at fault.
    """
    kind = kind or TASK_HOST_KIND.get(task)
    # The config's types are checked before this (TrainingConfig.validate); a caller that builds
    # a HostConfig by hand gets the same one-line message.
    preset = host.preset if host.preset is not None else TASK_DEFAULT_PRESET.get(task, "tiny")
    if preset not in CNN_PRESETS:
        raise ValueError(f"host.preset must be one of {', '.join(CNN_PRESETS)}, got {preset!r}")
    match kind:
        case "cnn":
            _refuse_knobs(host, TRANSFORMER_KNOBS, kind, task)
            widths = CNN_PRESETS[preset] if host.widths is None else tuple(host.widths)
            _check_widths(widths)
            return HostSpec(kind=kind, preset=preset, widths=widths)
        case "transformer":
            _refuse_knobs(host, CNN_KNOBS, kind, task)
            return _transformer_spec(host, preset)
    raise ValueError(f"task {task!r} has no known host kind (got {kind!r})")


def _refuse_knobs(host: Any, knobs: tuple[str, ...], kind: HostKind, task: str) -> None:
    """A size for the other host kind is a mistake, not something to ignore."""
    for knob in knobs:
        if getattr(host, knob) is not None:
            raise ValueError(
                f"host.{knob} sizes a {_other(kind)} host; task {task} trains a {kind} host "
                f"(set it to none)"
            )


def _transformer_spec(host: Any, preset: HostPreset) -> HostSpec:
    d_model, n_layers, n_heads, per_segment = TRANSFORMER_PRESETS[preset]
    spec = HostSpec(
        kind="transformer",
        preset=preset,
        d_model=_pick(host.d_model, d_model),
        n_layers=_pick(host.n_layers, n_layers),
        n_heads=_pick(host.n_heads, n_heads),
        layers_per_segment=_pick(host.layers_per_segment, per_segment),
    )
    _check_transformer(spec)
    return spec


def _other(kind: HostKind) -> HostKind:
    return "transformer" if kind == "cnn" else "cnn"


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


def _check_widths(widths: tuple[int, ...]) -> None:
    if not 1 <= len(widths) <= MAX_CNN_BLOCKS:
        raise ValueError(
            f"host.widths must list 1..{MAX_CNN_BLOCKS} block widths (each block halves the "
            f"32x32 image), got {len(widths)}"
        )
    for width in widths:
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"host.widths must be within 1..{MAX_WIDTH} each, got {list(widths)}")


def _check_transformer(spec: HostSpec) -> None:
    for name, high in (
        ("d_model", MAX_WIDTH),
        ("n_layers", MAX_LAYERS),
        ("n_heads", MAX_WIDTH),
        ("layers_per_segment", MAX_LAYERS),
    ):
        value = getattr(spec, name)
        if not 1 <= value <= high:
            raise ValueError(f"host.{name} must be within 1..{high}, got {value}")
    if spec.d_model % spec.n_heads:
        raise ValueError(
            f"host.d_model {spec.d_model} must be a multiple of host.n_heads {spec.n_heads}"
        )
    if spec.n_layers % spec.layers_per_segment:
        raise ValueError(
            f"host.n_layers {spec.n_layers} must be a multiple of host.layers_per_segment "
            f"{spec.layers_per_segment} (a slot ends each segment)"
        )
