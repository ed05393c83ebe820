"""Example handler: sleep for ``{"seconds": N}``, reporting progress as it goes.

Try it:  python -m supervisor enqueue sleep '{"seconds": 5}'  then  python -m supervisor status
"""

from __future__ import annotations

import json
import time


def handle(task, progress):
    seconds = float(json.loads(task.options or "{}").get("seconds", 1))
    steps = max(1, int(seconds * 4))
    for step in range(steps):
        time.sleep(seconds / steps)
        progress(100 * (step + 1) / steps)
