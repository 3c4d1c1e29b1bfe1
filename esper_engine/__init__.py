"""esper_engine: a morphogenetic multi-env trainer (never imports Textual).

The public API is importable from the package; names load lazily so that a consumer that only
needs the contracts (``overwatch export``, replay) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "TrainingConfig": "esper_engine.config",
    "SCHEMA_VERSION": "esper_engine.contracts",
    "Task": "esper_engine.tasks",
    "DataError": "esper_engine.tasks",
    "load_task": "esper_engine.tasks",
    "SharedBatchIterator": "esper_engine.batching",
    "MorphogeneticModel": "esper_engine.model",
    "create_model": "esper_engine.model",
    "SeedStage": "esper_engine.lifecycle",
    "ParallelEnvState": "esper_engine.training_step",
    "process_train_batch": "esper_engine.training_step",
    "process_val_batch": "esper_engine.training_step",
    "process_fused_val_batch": "esper_engine.training_step",
    "perplexity": "esper_engine.training_step",
    "TolariaGovernor": "esper_engine.governor",
    "GovernorReport": "esper_engine.governor",
    "CounterfactualEngine": "esper_engine.shapley",
    "VectorizedTrainer": "esper_engine.trainer",
    "TrainingSession": "esper_engine.session",
    "prepare_session": "esper_engine.session",
    "Recorder": "esper_engine.recording",
    "read_recording": "esper_engine.recording",
    "RecordingError": "esper_engine.recording",
    "QueueSink": "esper_engine.telemetry",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'esper_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
