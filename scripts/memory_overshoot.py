"""Measure how far past its MAX_RSS a growing handler gets before the supervisor kills it.

Runs the real supervisor (``python -m supervisor --burst``, one worker, a
scratch SQLite database) on handlers that allocate ``--step-mb`` MB (written,
so resident) every ``--step-s`` seconds until killed, ``--repeat`` times for
each limit in ``--limits``. For each run it prints:

* ``watch``: the peak the memory watch read (``last_error``: the tree's RSS
  read again just before the kill);
* ``kernel``: the child's own peak as the kernel counted it (``wait4``'s
  ``ru_maxrss``, logged when the killed child is reaped): independent of the
  watch's sampling, so an overshoot the watch missed between samples shows here;
* the overshoot of each, ``peak / limit - 1``.

Then the largest of each. Exit status 1 if a task did not fail ``memory``.

    python scripts/memory_overshoot.py --repeat 5 --limits 100,200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.dsn import parse_dsn  # noqa: E402
from supervisor.lifecycle import Failure  # noqa: E402
from supervisor.producer import new_task  # noqa: E402
from supervisor.store import open_store  # noqa: E402
from supervisor.telemetry import MEMORY_KILL_MESSAGE, MEMORY_REAPED_MESSAGE  # noqa: E402

HANDLER = """
    import time

    MAX_RSS = {limit}

    def handle(task, progress):
        kept = []
        while True:
            kept.append(b"x" * int({step_mb} * 1024 * 1024))
            time.sleep({step_s})
"""
PEAK = re.compile(r"used ([0-9.]+) MiB, over this handler's MAX_RSS of ([0-9.]+) MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per limit")
    parser.add_argument("--limits", default="100,200", help="MAX_RSS values in MiB")
    parser.add_argument("--step-mb", type=float, default=10.0, help="MiB written per step")
    parser.add_argument("--step-s", type=float, default=0.1, help="seconds between steps")
    args = parser.parse_args()
    limits = [int(text) for text in args.limits.split(",")]
    rate = args.step_mb / args.step_s
    print(f"allocating {args.step_mb:g} MiB every {args.step_s:g} s ({rate:.0f} MiB/s)")

    with tempfile.TemporaryDirectory(prefix="memory-overshoot-") as scratch:
        work = Path(scratch)
        (work / "handlers").mkdir()
        for limit in limits:
            source = HANDLER.format(limit=limit, step_mb=args.step_mb, step_s=args.step_s)
            (work / "handlers" / f"grows_{limit}.py").write_text(textwrap.dedent(source))
        dsn = f"sqlite:///{work / 'tasks.db'}"
        store = open_store(parse_dsn(dsn))
        store.migrate()
        ids = {
            store.enqueue(new_task(f"grows_{limit}", "{}", max_attempts=3)): limit
            for limit in limits
            for _ in range(args.repeat)
        }
        logs = run_supervisor(work, dsn)
        reaped = {
            e["pid"]: e["peak_rss_mib"] for e in logs if e["message"] == MEMORY_REAPED_MESSAGE
        }
        killed = {e["task_id"]: e["pid"] for e in logs if e["message"] == MEMORY_KILL_MESSAGE}

        worst_watch = worst_kernel = -1.0
        failures = 0
        print(
            f"{'task':>5} {'limit':>6} {'watch MiB':>10} {'over':>7} {'kernel MiB':>11} {'over':>7}"
        )
        for task_id, limit in ids.items():
            row = store.get(task_id)
            assert row is not None
            found = PEAK.search(row.last_error or "")
            if row.failure is not Failure.MEMORY or found is None:
                failures += 1
                print(f"{task_id:>5} {limit:>6} not a memory failure: {row.status} {row.failure}")
                continue
            watch = float(found.group(1))
            kernel = reaped.get(killed.get(task_id, -1))
            watch_over = watch / limit - 1
            worst_watch = max(worst_watch, watch_over)
            kernel_text = over_text = "-"
            if kernel is not None:
                kernel_over = kernel / limit - 1
                worst_kernel = max(worst_kernel, kernel_over)
                kernel_text, over_text = f"{kernel:.1f}", f"{kernel_over:+.1%}"
            print(
                f"{task_id:>5} {limit:>6} {watch:>10.1f} {watch_over:>+7.1%}"
                f" {kernel_text:>11} {over_text:>7}"
            )
        store.close()
    print(f"max overshoot: watch {worst_watch:+.1%}, kernel (ru_maxrss) {worst_kernel:+.1%}")
    return 1 if failures else 0


def run_supervisor(work: Path, dsn: str) -> list[dict[str, object]]:
    """``--burst``: it runs every task, then exits; its JSON log lines, parsed."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SUPERVISOR_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor",
            "--dsn",
            dsn,
            "--workers",
            "1",
            "--burst",
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            "--poll-interval",
            "0.05",
        ],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    logs = []
    for line in done.stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line a handler printed
        if isinstance(record, dict) and "message" in record:
            logs.append(record)
    return logs


if __name__ == "__main__":
    sys.exit(main())
