"""How the parent makes a child: forked by the fork server, or as a new interpreter if it fails.

A new interpreter costs about 0.2 s of CPU; a fork of the clean template
(:mod:`supervisor.forkserver`) costs a few milliseconds, which is what makes
``--max-tasks-per-child 1`` (a fresh process per task) affordable. Both give
the same isolation: own process group, no DSN, the parent as the reaper.
When the template fails, children are started the slow way and the template
is tried again after a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from loguru import logger

from supervisor import metrics
from supervisor.forkserver import Template
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runtime_dir = runtime_dir
        self._lifeline_fd = lifeline_fd
        self._env = env
        self._with_metrics = with_metrics
        self._clock = clock
        self._template: Template | None = None
        self._retry_at = 0.0

    @property
    def template_pid(self) -> int | None:
        """So the orphan killer leaves the template alone."""
        return self._template.pid if self._template is not None else None

    def start(self) -> None:
        """Start the fork server; must run after the parent became a subreaper."""
        self._retry_at = self._clock() + TEMPLATE_RETRY_S
        try:
            self._template = Template.start(env=self._env, lifeline_fd=self._lifeline_fd)
        except OSError as exc:
            logger.warning(
                "fork server unavailable; starting children as new interpreters", error=str(exc)
            )

    def __call__(self, slot: int) -> Child:
        metrics_id = metrics.slot_id(slot) if self._with_metrics else None
        if self._template is None and self._retry_at and self._clock() >= self._retry_at:
            self.start()
        if self._template is not None:
            try:
                return Child.fork(
                    self._template, slot=slot, runtime_dir=self._runtime_dir, metrics_id=metrics_id
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
        )

    def close(self) -> None:
        if self._template is not None:
            self._template.close()
            self._template = None
