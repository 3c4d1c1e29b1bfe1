from __future__ import annotations

import torch

# Two cores, many small tensors: one intra-op thread is faster and keeps results reproducible.
torch.set_num_threads(1)
