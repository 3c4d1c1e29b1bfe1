"""`python -m overwatch` (what torchrun runs: ``torchrun ... -m overwatch run ...``)."""

from __future__ import annotations

import sys

from overwatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
