"""How a task type runs, as its handler file declares it with module constants.

A handler module may set::

    MAX_ATTEMPTS = 5               # attempts before failing
    BACKOFF = (0, 10, 60)          # seconds before attempt 2, 3, ... (the last repeats)
    TIMEOUT = 120                  # seconds per attempt, then a hard kill (retried)
    CONCURRENCY = 4                # most tasks of this type running at once, fleet-wide
    CONCURRENCY_PER_KEY = 1        # the same, per concurrency key
    SCHEDULE = "*/5 * * * *"       # enqueue one task per slot (5-field cron, UTC)
    SCHEDULE_OPTIONS = '{"a": 1}'  # each firing's options (a string, or a dict/list as JSON)
    MAX_RSS = 512                  # MiB: a child's tree over it is killed, the task fails 'memory'

The parent never imports handler code: the import check reads the constants
in its own process and reports them as JSON; :func:`from_constants` validates
them here. A bad value is an import-check error, reported like a broken
handler, and its type is not claimed.

``MAX_RSS`` is a local policy of the handler file: it is not declared into
``task_types`` (there is no column for it), so ``show`` and the web page do not
report it; a ``memory`` failure's ``last_error`` names it.

A value the producer set explicitly on the task (``max_attempts``,
``timeout_s``) beats the handler's; :func:`effective_max_attempts` and
:func:`effective_timeout` say which applies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import attrs

from supervisor.lifecycle import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_ATTEMPTS_LIMIT,
    MAX_OPTIONS_BYTES,
    MAX_SECONDS,
    clamp_max_attempts,
)
from supervisor.schedules import ScheduleError, validate_cron

# The module constants a handler may set, by the name they have in the handler file.
CONSTANTS = (
    "MAX_ATTEMPTS",
    "BACKOFF",
    "TIMEOUT",
    "CONCURRENCY",
    "CONCURRENCY_PER_KEY",
    "SCHEDULE",
    "SCHEDULE_OPTIONS",
    "MAX_RSS",
)
# A concurrency limit beyond this is surely a typo; and the limit is an INT UNSIGNED column.
MAX_CONCURRENCY = 100_000
# MAX_RSS is in MiB; beyond 1 TiB it is surely a typo (or bytes where MiB are meant).
MAX_RSS_LIMIT_MIB = 1024 * 1024
MIB = 1024 * 1024


class PolicyError(ValueError):
    """A handler constant with a value the supervisor cannot obey; the message names it."""


@attrs.frozen(kw_only=True)
class HandlerPolicy:
    """What one handler file declares; ``None`` where it declares nothing."""

    max_attempts: int | None = None
    backoff: tuple[float, ...] | None = None
    timeout_s: float | None = None
    concurrency: int | None = None
    concurrency_per_key: int | None = None
    schedule: str | None = None
    schedule_options: str | None = None
    max_rss_mib: float | None = None

    def declared(self) -> HandlerPolicy:
        """The part ``task_types``' policy columns hold: the schedule has columns of its own
        (written as slots fire), so two declarations never differ by it alone; ``MAX_RSS``
        has none (it binds only the supervisor that has this handler file)."""
        return attrs.evolve(self, schedule=None, schedule_options=None, max_rss_mib=None)

    @property
    def max_rss_bytes(self) -> int | None:
        """``MAX_RSS`` in bytes, the unit the memory watch reads."""
        return None if self.max_rss_mib is None else int(self.max_rss_mib * MIB)

    @property
    def limited(self) -> bool:
        """Whether claims of this type must count its running tasks first."""
        return self.concurrency is not None or self.concurrency_per_key is not None

    def as_constants(self) -> dict[str, object]:
        """The declared constants by name, for ``show`` and ``status`` (undeclared left out)."""
        values: dict[str, object] = {
            "MAX_ATTEMPTS": self.max_attempts,
            "BACKOFF": self.backoff,
            "TIMEOUT": self.timeout_s,
            "CONCURRENCY": self.concurrency,
            "CONCURRENCY_PER_KEY": self.concurrency_per_key,
            "SCHEDULE": self.schedule,
            "MAX_RSS": self.max_rss_mib,
        }
        return {name: value for name, value in values.items() if value is not None}


DEFAULT_POLICY = HandlerPolicy()


def from_constants(values: Mapping[str, object]) -> HandlerPolicy:
    """A policy from the constants a handler module set (as JSON values); :class:`PolicyError`.

    Booleans are refused where numbers are meant (``True`` is an ``int`` in
    Python, and ``CONCURRENCY = True`` is surely a mistake).
    """
    unknown = sorted(set(values) - set(CONSTANTS))
    if unknown:
        raise PolicyError(f"unknown policy constant {unknown[0]}")
    return HandlerPolicy(
        max_attempts=_whole(values, "MAX_ATTEMPTS", 1, MAX_ATTEMPTS_LIMIT),
        backoff=_backoff(values.get("BACKOFF")),
        timeout_s=_seconds(values, "TIMEOUT"),
        concurrency=_whole(values, "CONCURRENCY", 1, MAX_CONCURRENCY),
        concurrency_per_key=_whole(values, "CONCURRENCY_PER_KEY", 1, MAX_CONCURRENCY),
        schedule=_schedule(values.get("SCHEDULE")),
        schedule_options=_schedule_options(values),
        max_rss_mib=_max_rss(values.get("MAX_RSS")),
    )


def _max_rss(value: object) -> float | None:
    """``MAX_RSS``: MiB above 0, at most :data:`MAX_RSS_LIMIT_MIB` (a float is allowed: 0.5)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or not 0 < value <= MAX_RSS_LIMIT_MIB
    ):
        raise PolicyError(
            f"MAX_RSS must be a number of MiB above 0 and up to {MAX_RSS_LIMIT_MIB}, got {value!r}"
        )
    return float(value)


def _schedule(value: object) -> str | None:
    if value is None:
        return None
    try:
        return validate_cron(value)
    except ScheduleError as exc:
        raise PolicyError(str(exc)) from None


def _schedule_options(values: Mapping[str, object]) -> str | None:
    """Each firing's options: a string as it is, a dict or list as JSON, at most 1 MiB."""
    value = values.get("SCHEDULE_OPTIONS")
    if value is None:
        return None
    if "SCHEDULE" not in values:
        raise PolicyError("SCHEDULE_OPTIONS is set but SCHEDULE is not")
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        raise PolicyError(f"SCHEDULE_OPTIONS must be a string, a dict or a list, got {value!r}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_OPTIONS_BYTES:
        raise PolicyError(f"SCHEDULE_OPTIONS are larger than {MAX_OPTIONS_BYTES} bytes (1 MiB)")
    return value


def _whole(values: Mapping[str, object], name: str, low: int, high: int) -> int | None:
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _seconds(values: Mapping[str, object], name: str) -> float | None:
    value = values.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_SECONDS
        or math.isnan(value)
    ):
        raise PolicyError(
            f"{name} must be a number of seconds above 0 and up to {MAX_SECONDS:.0f}, got {value!r}"
        )
    return float(value)


# task_types.backoff is a VARCHAR(255): a declaration must fit it.
BACKOFF_TEXT_LIMIT = 255


def _backoff(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise PolicyError(f"BACKOFF must be a tuple of seconds like (0, 30, 300), got {value!r}")
    delays: list[float] = []
    for delay in value:
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not 0 <= delay <= MAX_SECONDS
            or math.isnan(delay)
        ):
            raise PolicyError(
                f"BACKOFF must hold numbers of seconds from 0 to {MAX_SECONDS:.0f}, got {delay!r}"
            )
        delays.append(float(delay))
    if len(backoff_text(tuple(delays)) or "") > BACKOFF_TEXT_LIMIT:
        raise PolicyError(
            f"BACKOFF is too long: written as 0,30,300 it must fit {BACKOFF_TEXT_LIMIT} characters"
        )
    return tuple(delays)


def effective_max_attempts(explicit: int | None, policy: HandlerPolicy) -> int:
    """The task's own value, else the handler's, else the default (3)."""
    if explicit is not None:
        return explicit
    return policy.max_attempts if policy.max_attempts is not None else DEFAULT_MAX_ATTEMPTS


def effective_timeout(explicit: float | None, policy: HandlerPolicy) -> float | None:
    """The task's own per-attempt timeout, else the handler's, else none."""
    return explicit if explicit is not None else policy.timeout_s


@attrs.frozen(kw_only=True)
class Effective:
    """A value a task runs under, and where it comes from, for ``show``.

    ``source``: ``explicit`` (the producer set it), ``handler`` (the declared
    policy of its type), ``default`` (neither: 3 attempts, no per-attempt
    limit), or ``claim`` (a claim wrote it into the row: from then on the row
    carries its own value, whichever of the three it came from).
    """

    value: int | float | None
    source: str


def effective_values(
    *,
    max_attempts: int | None,
    timeout_s: float | None,
    claimed: bool,
    declared: HandlerPolicy | None,
) -> dict[str, Effective]:
    """``max_attempts`` and ``timeout_s`` of a row as they apply, with their sources.

    A row never claimed holds only what the producer set; the rest is the
    policy last declared for its type (what the next claim will write), else
    the default. A row once claimed holds the values its claim wrote.
    """
    policy = declared or DEFAULT_POLICY
    own_max = None if max_attempts is None else clamp_max_attempts(max_attempts)
    values: dict[str, tuple[int | float | None, int | float | None, int | None]] = {
        "max_attempts": (own_max, policy.max_attempts, DEFAULT_MAX_ATTEMPTS),
        "timeout_s": (timeout_s, policy.timeout_s, None),
    }
    found: dict[str, Effective] = {}
    for name, (own, handler, default) in values.items():
        if own is not None:
            found[name] = Effective(value=own, source="claim" if claimed else "explicit")
        elif handler is not None:
            found[name] = Effective(value=handler, source="handler")
        else:
            found[name] = Effective(value=default, source="default")
    return found


def policy_of(policies: Mapping[str, HandlerPolicy] | None, task_type: str) -> HandlerPolicy:
    """The claimer's policy for ``task_type``; the default one where it declares none."""
    return (policies or {}).get(task_type, DEFAULT_POLICY)


def claim_defaults(
    policies: Mapping[str, HandlerPolicy] | None, task_type: str
) -> tuple[int, float | None]:
    """What a claim writes into a row of ``task_type`` that sets neither value itself:
    (max_attempts, timeout_s). Written at claim, they make the running row self-describing,
    so a supervisor without the handler file can still rescue it correctly."""
    policy = policy_of(policies, task_type)
    return effective_max_attempts(None, policy), effective_timeout(None, policy)


def backoff_text(backoff: tuple[float, ...] | None) -> str | None:
    """``task_types.backoff`` as written: seconds joined by commas, like ``--backoff``."""
    if backoff is None:
        return None
    return ",".join(format(delay, ".15g") for delay in backoff)


def backoff_from_text(text: str | None) -> tuple[float, ...] | None:
    """The inverse of :func:`backoff_text`, for a declared policy read back."""
    if not text:
        return None
    return tuple(float(part) for part in text.split(","))
