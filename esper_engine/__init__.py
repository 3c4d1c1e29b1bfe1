"""esper_engine: a morphogenetic multi-env trainer (never imports Textual)."""

from __future__ import annotations

from esper_engine.config import TrainingConfig

__all__ = ["TrainingConfig"]
