"""The handler import check: which handler files fail to import, and the policy each declares.

The parent never imports handler code. A throwaway ``supervisor.child --check``
process imports each file and prints a JSON report; the loop watches its
output in the selector and reports broken handlers loudly (their tasks fail
with the import error when they run). For each handler that imports, the
report carries the policy constants it sets (``MAX_ATTEMPTS``, ``TIMEOUT``...):
the parent validates them and claims a type only once its policy is known.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CheckReport:
    """What the check found: ``errors`` by type (None: imports fine), name ``warnings`` by type,
    and the policy ``constants`` of each type that imports fine (as JSON values, unvalidated).

    ``unreached`` names the types the check never got to because an earlier
    handler ended it (``os._exit`` at import, a hang): a new check takes those.
    """

    errors: dict[str, str | None]
    warnings: dict[str, str]
    constants: dict[str, dict[str, object]] = field(default_factory=dict)
    unreached: tuple[str, ...] = ()


class ImportCheck:
    """A ``supervisor.child --check`` run in the background: which handler files fail to import.

    Importing handlers can take seconds (or hang), so the parent never waits
    for it: it watches :meth:`fileno` in its one ``wait()``, calls :meth:`read`
    when it is readable, and takes the :meth:`report` once the output ends or
    the check's deadline passes. The check runs in its own process group so that
    whatever a handler starts at import time goes down with it.
    """

    def __init__(
        self, handlers: Mapping[str, Path], env: Mapping[str, str], deadline: float
    ) -> None:
        # One JSON argument attached with "=": no handler file name can pass for an option.
        self.handlers = dict(handlers)
        mapping = json.dumps({t: str(p) for t, p in sorted(handlers.items())})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.child", f"--check={mapping}"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        assert self.process.stdout is not None
        self._stdout = self.process.stdout
        os.set_blocking(self._stdout.fileno(), False)
        self.deadline = deadline  # on the watcher's clock
        self._output = bytearray()
        self._delivered: set[str] = set()  # types whose constants were taken already

    def fileno(self) -> int:
        return self._stdout.fileno()

    def read(self) -> bool:
        """Take what the check has written so far; True once its output has ended."""
        try:
            data = os.read(self.fileno(), 1 << 16)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        self._output += data
        return not data

    def newly_checked(self) -> dict[str, dict[str, object]]:
        """Constants of the handlers checked since the last call (complete lines only), so
        each type can be claimed as soon as its own import is done, not after the slowest."""
        complete = self._output[: self._output.rfind(b"\n") + 1]
        found = self.undelivered(_checked_constants(_json_lines(complete)))
        self._delivered.update(found)
        return found

    def report(self, *, timed_out: bool = False) -> CheckReport:
        """Import errors and name warnings by type; ends the check (and whatever it started) first.

        If the check did not finish (a handler called ``os._exit`` at import, or hung),
        the handler it was importing is named from the last ``{"checking": type}`` line.
        """
        self.close()
        last_checked: str | None = None
        constants: dict[str, dict[str, object]] = {}
        for parsed in _json_lines(self._output):
            if isinstance(parsed.get("errors"), dict):
                return CheckReport(
                    errors=parsed["errors"],
                    warnings=parsed.get("warnings") or {},
                    constants=constants,
                )
            if isinstance(parsed.get("checking"), str):
                last_checked = parsed["checking"]
            constants.update(_checked_constants([parsed]))
        why = "it ran out of time" if timed_out else f"exit status {self.process.returncode}"
        if last_checked is not None:
            problem = f"the handler import check ended while importing this handler ({why})"
            unreached = sorted(set(self.handlers) - set(constants) - {last_checked})
            return CheckReport(
                errors={last_checked: problem},
                warnings={},
                constants=constants,
                unreached=tuple(unreached),
            )
        return CheckReport(
            errors={"*": f"the handler import check did not finish cleanly ({why})"}, warnings={}
        )

    def undelivered(self, constants: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        """Those of ``constants`` not yet taken by :meth:`newly_checked`."""
        return {t: c for t, c in constants.items() if t not in self._delivered}

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._stdout.close()


def _json_lines(output: bytes | bytearray) -> list[dict[str, Any]]:
    """The JSON objects among the output lines (anything else is skipped)."""
    found = []
    for line in output.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            found.append(parsed)
    return found


def _checked_constants(lines: list[dict[str, Any]]) -> dict[str, dict[str, object]]:
    """``{"checked": type, "constants": {...}}`` lines as constants by type."""
    found = {}
    for parsed in lines:
        task_type, constants = parsed.get("checked"), parsed.get("constants")
        if isinstance(task_type, str) and isinstance(constants, dict):
            found[task_type] = constants
    return found


IMPORT_CHECK_TIMEOUT_S = 60.0


class ImportWatch:
    """The loop's side of the check: start it, read it from the selector, report, loudly.

    Imports may be slow or hang: the check runs beside the loop, which never
    waits for it. It runs without multiprocess metrics: a handler that creates
    metrics at import would leave value files named after this throwaway
    process (more on every reload), live gauges never marked dead.

    ``checked(type, constants)`` is called for each handler that imports,
    ``report(type, problem)`` for each that does not. If a handler ends the
    check, the types after it are checked again by a new check without it.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        env: Mapping[str, str],
        report: Callable[[str, str], None],
        *,
        checked: Callable[[str, Mapping[str, object]], None],
        warn: Callable[[str, str], None] | None = None,
        finished: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``finished()`` is called once every handler has been reported on."""
        self._selector = selector
        self._finished = finished
        self._env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self._report = report
        self._checked = checked
        self._warn = warn
        self._clock = clock
        self._check: ImportCheck | None = None

    def start(self, handlers: Mapping[str, Path]) -> None:
        self.close()
        if handlers:
            deadline = self._clock() + IMPORT_CHECK_TIMEOUT_S
            self._check = ImportCheck(handlers, self._env, deadline)
            self._selector.register(self._check.fileno(), selectors.EVENT_READ, ("check", None))

    @property
    def pid(self) -> int | None:
        return self._check.process.pid if self._check is not None else None

    def next_due(self) -> float | None:
        return self._check.deadline if self._check is not None else None

    def on_readable(self) -> None:
        if self._check is None:
            return
        ended = self._check.read()
        for task_type, constants in self._check.newly_checked().items():
            self._checked(task_type, constants)
        if ended:
            self._finish(timed_out=False)

    def check_deadline(self, now: float) -> None:
        if self._check is not None and now >= self._check.deadline:
            self._finish(timed_out=True)

    def _finish(self, *, timed_out: bool) -> None:
        assert self._check is not None
        self._selector.unregister(self._check.fileno())
        check, self._check = self._check, None
        found = check.report(timed_out=timed_out)
        for task_type, constants in check.undelivered(found.constants).items():
            self._checked(task_type, constants)
        for task_type, problem in found.errors.items():
            if problem:
                self._report(task_type, problem)
        if self._warn is not None:
            for task_type, warning in found.warnings.items():
                self._warn(task_type, warning)
        if found.unreached:
            self.start({t: check.handlers[t] for t in found.unreached})
        elif self._finished is not None:
            self._finished()

    def close(self) -> None:
        if self._check is not None:
            self._selector.unregister(self._check.fileno())
            self._check.close()
            self._check = None
