"""The console's tests read wall-clock times off the screen (the event log's): in UTC, so that
snapshots and expectations do not depend on the machine's time zone."""

from __future__ import annotations

import os
import time

os.environ["TZ"] = "UTC"
time.tzset()
