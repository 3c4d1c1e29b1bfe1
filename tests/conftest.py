from __future__ import annotations

import os
import tempfile

import torch

# Two cores, many small tensors: one intra-op thread is faster and keeps results reproducible.
torch.set_num_threads(1)

# Runs the tests start register themselves (overwatch.registry): in a registry of the suite's
# own, never the user's ~/.local/state/overwatch.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="overwatch-test-state-")
