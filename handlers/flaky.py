"""Example handler: fail the first attempts, then succeed, to show retries with backoff.

Try it:  python -m supervisor --backoff 0,2 &
         python -m supervisor enqueue flaky '{"succeed_on": 2}'
A handler signals "do not retry" by raising supervisor.PermanentError.
"""

from __future__ import annotations

import json

from supervisor import PermanentError


def handle(task, progress):
    options = json.loads(task.options or "{}")
    if "succeed_on" not in options:
        raise PermanentError("flaky needs {\"succeed_on\": N}; retrying would not help")
    if task.attempt < int(options["succeed_on"]):
        raise RuntimeError(f"attempt {task.attempt} fails on purpose")
