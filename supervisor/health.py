"""What ``/healthz`` reports: whether the loop is turning and the database is answering."""

from __future__ import annotations

import time

import attrs


@attrs.define
class Health:
    """Written by the loop, read by the server thread (plain float stores are atomic in CPython)."""

    stale_after_s: float
    loop_at: float = attrs.field(factory=time.monotonic)
    # None until the database has answered once: a supervisor that never reached its
    # database is not healthy, however recently it started.
    db_ok_at: float | None = None

    def problems(self, now: float) -> list[str]:
        found = []
        if now - self.loop_at > self.stale_after_s:
            found.append(f"loop has not run for {now - self.loop_at:.1f} s")
        if self.db_ok_at is None:
            found.append("database has not answered yet")
        elif now - self.db_ok_at > self.stale_after_s:
            found.append(f"database has not answered for {now - self.db_ok_at:.1f} s")
        return found
