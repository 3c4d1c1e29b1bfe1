"""Reading a ``torch.save`` file of tensors and plain values safely: checkpoints and policies.

``torch.load(weights_only=True)`` refuses a file holding anything else (a pickled object whose
``__reduce__`` would run code) before any of it runs; every failure to load becomes one line
naming the file, raised as the caller's own error class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def read_state_file(
    path: Path, error: type[Exception], noun: str, expected_format: str
) -> dict[str, Any]:
    """The file's state dict when it loads safely and says ``format: expected_format``; else
    ``error`` with one line, e.g. "p.pt: refused, not a checkpoint that loads safely (...)"."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to load safely is the same verdict
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise error(f"{path}: refused, not a {noun} that loads safely ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != expected_format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise error(f"{path}: {noun} format {found!r}, this version reads {expected_format}")
    return state
