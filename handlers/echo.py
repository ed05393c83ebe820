"""Example handler: print the task's options and complete.

Try it:  python -m supervisor enqueue echo '{"message": "hello"}'
"""

from __future__ import annotations

import json


def handle(task, progress):
    options = json.loads(task.options) if task.options else {}
    print(f"echo task {task.id} (attempt {task.attempt}): {options.get('message', '')}", flush=True)
    progress(100)
