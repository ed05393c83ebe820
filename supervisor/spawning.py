"""How the parent makes a child: forked by the fork server, or as a new interpreter if it fails.

A new interpreter costs about 0.2 s of CPU; a fork of the clean template
(:mod:`supervisor.forkserver`) costs a few milliseconds, which is what makes
``--max-tasks-per-child 1`` (a fresh process per task) affordable. Both give
the same isolation: own process group, no DSN, the parent as the reaper.
When the template fails, children are started the slow way and the template
is started again after a while, on a thread of its own: its start-up (about
0.1 s, up to 10 s) must not hold the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from loguru import logger

from supervisor import metrics
from supervisor.forkserver import Template
from supervisor.privileges import ChildUser
from supervisor.workers import Child

TEMPLATE_RETRY_S = 30.0  # after the fork server failed, children are spawned the slow way this long


class ChildFactory:
    def __init__(
        self,
        *,
        runtime_dir: Path,
        lifeline_fd: int,
        env: Mapping[str, str],
        with_metrics: bool,
        user: ChildUser | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``user``: the ``--child-user``; ``env`` then tells the children to drop to it."""
        self._user = user
        self._runtime_dir = runtime_dir
        self._lifeline_fd = lifeline_fd
        self._env = env
        self._with_metrics = with_metrics
        self._clock = clock
        self._template: Template | None = None
        self._retry_at = 0.0
        self._restart: threading.Thread | None = None
        self._restarted: Template | None = None  # set by the restart thread
        self._starting_pid: int | None = None  # the template being started, for template_pids

    @property
    def template_pids(self) -> set[int]:
        """So the orphan killer leaves the template (and one being started) alone."""
        candidates = (self._starting_pid, self._restarted, self._template)
        return {c if isinstance(c, int) else c.pid for c in candidates if c is not None}

    def start(self) -> None:
        """Start the fork server and wait for it (at start-up, before the loop turns).

        Must run after the parent became a subreaper.
        """
        self._retry_at = self._clock() + TEMPLATE_RETRY_S
        self._template = self._start_template()

    def _start_template(self) -> Template | None:
        try:
            return Template.start(
                env=self._env, lifeline_fd=self._lifeline_fd, on_process=self._note_pid
            )
        except OSError as exc:
            logger.warning(
                "fork server unavailable; starting children as new interpreters", error=str(exc)
            )
            return None
        finally:
            self._starting_pid = None

    def _note_pid(self, pid: int) -> None:
        self._starting_pid = pid

    def _restart_in_background(self) -> None:
        def restart() -> None:
            self._restarted = self._start_template()

        self._retry_at = self._clock() + TEMPLATE_RETRY_S
        self._restart = threading.Thread(target=restart, name="fork-server-restart", daemon=True)
        self._restart.start()

    def _template_now(self) -> Template | None:
        """The template if it answers; a restart due is begun, one finished is adopted."""
        if self._restart is not None and not self._restart.is_alive():
            self._restart = None
            self._template, self._restarted = self._restarted, None
        if (
            self._template is None
            and self._restart is None
            and self._retry_at
            and self._clock() >= self._retry_at
        ):
            self._restart_in_background()
        return self._template

    def __call__(self, slot: int) -> Child:
        metrics_id = metrics.slot_id(slot) if self._with_metrics else None
        template = self._template_now()
        if template is not None:
            try:
                return Child.fork(
                    template,
                    slot=slot,
                    runtime_dir=self._runtime_dir,
                    metrics_id=metrics_id,
                    user=self._user,
                )
            except OSError as exc:
                logger.warning(
                    "fork server failed; starting children as new interpreters for now",
                    error=str(exc),
                )
                self.close()
        return Child.spawn(
            slot=slot,
            runtime_dir=self._runtime_dir,
            lifeline_fd=self._lifeline_fd,
            env=self._env,
            metrics_id=metrics_id,
            user=self._user,
        )

    def close(self) -> None:
        # A restart still under way is not waited for: its template exits with the parent's
        # lifeline, like every child.
        if self._template is not None:
            self._template.close()
            self._template = None
