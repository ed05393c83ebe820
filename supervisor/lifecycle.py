"""The task lifecycle as pure rules: statuses, failure kinds, backoff, and what an outcome does.

Nothing here performs I/O or reads a clock, so every rule is unit-tested
directly. The stores carry the decisions out with fenced writes.
"""

from __future__ import annotations

import enum
import math
import re

import attrs

from supervisor.errors import UsageError

TYPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The one size limit on task_options, checked at every entry: by producers at enqueue and,
# for rows a plain-SQL producer wrote, by the claim (the row then fails without reaching a
# child). Even all escaped (6 bytes a byte), 1 MiB stays far inside the pipe's line limit.
MAX_OPTIONS_BYTES = 1024 * 1024
DEFAULT_BUDGET_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 3
# The most attempts a task gets. Producers are held to it at enqueue; a row written by plain
# SQL with more (MySQL's column takes up to 4,294,967,295) is clamped to it at claim.
MAX_ATTEMPTS_LIMIT = 100
# Characters, not bytes: at up to 4 UTF-8 bytes each, 16,000 still fit MySQL's TEXT column
# (65,535 bytes), which rejects the whole write of a longer value in strict mode.
# Ten years: far beyond any real delay or budget, far inside what DATETIME arithmetic holds.
MAX_SECONDS = 10 * 366 * 86400.0
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
LAST_ERROR_LIMIT = 16_000


class Status(enum.StrEnum):
    """Where a task is. ``queued`` and ``running`` are live; the rest are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class Failure(enum.StrEnum):
    """Why a task failed: the ``failure`` column."""

    ERROR = "error"
    PANIC = "panic"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    LOST = "lost"
    ATTEMPT_TIMEOUT = "attempt_timeout"
    MEMORY = "memory"  # over the handler's MAX_RSS: killed, never retried (it would happen again)


class Outcome(enum.StrEnum):
    """What happened to one attempt: one vocabulary for rows, metrics and logs.

    ``completed``, ``retried`` and ``cancelled`` plus every :class:`Failure` kind.
    ``cancelled`` is an operator's decision, not a failure, so it has no
    :class:`Failure` kind: a running task cancelled by ``cancel`` would
    otherwise be counted ``lost``, like a task rescued from a dead supervisor.
    """

    COMPLETED = "completed"
    RETRIED = "retried"
    CANCELLED = "cancelled"
    ERROR = "error"
    PANIC = "panic"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    LOST = "lost"
    ATTEMPT_TIMEOUT = "attempt_timeout"
    MEMORY = "memory"


@attrs.frozen
class Backoff:
    """The delay before attempt n is ``delays[n-1]``, the last one repeating.

    The default ``0, 30, 300`` reads: the first attempt runs at once, the
    second 30 s after the first failed, the third (and any later one) 5 min
    after the previous failure.
    """

    delays: tuple[float, ...] = (0.0, 30.0, 300.0)

    def __attrs_post_init__(self) -> None:
        # NaN compares false with everything and infinity overflows the database's
        # date arithmetic, so "not negative" alone would let both through.
        if not self.delays or not all(0 <= d < math.inf for d in self.delays):
            raise UsageError("backoff needs at least one delay, each a finite number >= 0")

    @classmethod
    def parse(cls, text: str) -> Backoff:
        """Read ``"0,30,300"``; a clear :class:`UsageError` for anything else."""
        try:
            delays = tuple(float(part) for part in text.split(","))
        except ValueError:
            raise UsageError(
                f"--backoff wants comma-separated seconds like 0,30,300, not {text!r}"
            ) from None
        return cls(delays)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (1-based), counted from the previous failure."""
        index = min(max(attempt, 1), len(self.delays)) - 1
        return self.delays[index]


@attrs.frozen(kw_only=True)
class Decision:
    """What a store must do with a finished attempt."""

    outcome: Outcome
    status: Status
    failure: Failure | None = None
    retry_in_s: float | None = None


def decide_error(*, attempt: int, max_attempts: int, permanent: bool, backoff: Backoff) -> Decision:
    """A handler raised: retry with backoff while attempts remain, unless it said not to."""
    if permanent or attempt >= max_attempts:
        return Decision(outcome=Outcome.ERROR, status=Status.FAILED, failure=Failure.ERROR)
    return Decision(
        outcome=Outcome.RETRIED,
        status=Status.QUEUED,
        retry_in_s=backoff.delay_before(attempt + 1),
    )


def decide_attempt_timeout(*, attempt: int, max_attempts: int, backoff: Backoff) -> Decision:
    """The handler's ``TIMEOUT`` killed the attempt: a failed attempt, retried with backoff
    while attempts remain (outcome ``retried``, as for an exception), else terminal
    ``attempt_timeout``. Unlike the task's deadline, it leaves budget for another try."""
    if attempt >= max_attempts:
        return decision_for_failure(Failure.ATTEMPT_TIMEOUT)
    return Decision(
        outcome=Outcome.RETRIED,
        status=Status.QUEUED,
        retry_in_s=backoff.delay_before(attempt + 1),
    )


@attrs.frozen(kw_only=True)
class Limit:
    """When an attempt is killed, and which limit that is."""

    at: float
    failure: Failure  # TIMEOUT: the task's deadline; ATTEMPT_TIMEOUT: the per-attempt TIMEOUT


def attempt_limit(*, started: float, task_deadline: float, timeout_s: float | None) -> Limit:
    """The earlier of the task's deadline and ``started + timeout_s``, on one clock.

    Decided once, at dispatch, so the kill and the outcome always agree however
    close the two are. When they fall at the same moment the task's deadline
    wins: no budget is left for a retry, so the terminal ``timeout`` is the truth.
    """
    if timeout_s is not None and started + timeout_s < task_deadline:
        return Limit(at=started + timeout_s, failure=Failure.ATTEMPT_TIMEOUT)
    return Limit(at=task_deadline, failure=Failure.TIMEOUT)


def decision_for_failure(failure: Failure) -> Decision:
    """Panics, timeouts, expiry and loss are terminal whatever attempts remain."""
    return Decision(outcome=Outcome(failure.value), status=Status.FAILED, failure=failure)


def trim_error(text: str, limit: int = LAST_ERROR_LIMIT) -> str:
    """Keep ``last_error`` bounded: the head says what, the tail says where; drop the middle."""
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters trimmed] ...\n{text[-half:]}"


def validate_type(name: str) -> str:
    """Task types name handler files and metric labels, so they are kept to a safe alphabet."""
    if not TYPE_NAME.fullmatch(name):
        raise UsageError(
            f"task type must be 1-64 characters of letters, digits, '_', '.' or '-', got {name!r}"
        )
    return name


def validate_options(options: str | None) -> str | None:
    """Options are stored verbatim up to 1 MiB; the message never echoes their content."""
    if options is not None and len(options.encode("utf-8")) > MAX_OPTIONS_BYTES:
        raise UsageError(f"task options are larger than {MAX_OPTIONS_BYTES} bytes (1 MiB)")
    return options


def clamp_max_attempts(value: int) -> int:
    """The ``max_attempts`` a claim obeys: at most :data:`MAX_ATTEMPTS_LIMIT`, whatever a row says.

    A plain ``INSERT`` may store any number; without the clamp a task that
    keeps failing would be retried without end.
    """
    return min(value, MAX_ATTEMPTS_LIMIT)


def claim_defect(
    *, type_name: str, options_bytes: int | None, attempt: int, max_attempts: int
) -> str | None:
    """Why a claimed row cannot run at all (None: it can), in words safe for ``last_error``.

    Plain SQL is a supported producer, so a row may hold what no producer
    would write. Such a row is failed by the parent at claim, alone, instead of
    being sent to a child (or crashing the parent). The text names the type
    escaped (``repr``) and never echoes the options.
    """
    if not TYPE_NAME.fullmatch(type_name):
        return (
            f"no handler for type {type_name!r}: a task type is 1-64 characters of letters,"
            " digits, '_', '.' or '-'"
        )
    if options_bytes is not None and options_bytes > MAX_OPTIONS_BYTES:
        return (
            f"task_options are {options_bytes} bytes, over the limit of {MAX_OPTIONS_BYTES}"
            " bytes (1 MiB); the task was not run"
        )
    if attempt > max_attempts:
        return (
            f"attempt {attempt} is beyond max_attempts {max_attempts}"
            f" (at most {MAX_ATTEMPTS_LIMIT}); the task was not run again"
        )
    return None


def validate_max_attempts(value: int) -> int:
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise UsageError(f"max attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {value}")
    return value


MAX_KEY_CHARS = 255


def validate_key(value: str | None, what: str) -> str | None:
    """A unique or concurrency key: 1-255 characters of text (the columns' VARCHAR(255))."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_CHARS:
        raise UsageError(f"a {what} must be 1 to {MAX_KEY_CHARS} characters of text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"a {what} must be UTF-8 text") from None
    return value


def validate_timeout(value: float) -> float:
    """A per-attempt limit: like a budget, above 0 and at most ten years."""
    if not 0 < value <= MAX_SECONDS:
        raise UsageError(
            f"timeout must be a positive number of seconds up to {MAX_SECONDS:.0f}, got {value}"
        )
    return value


def validate_budget(value: float) -> float:
    if not 0 < value <= MAX_SECONDS:
        raise UsageError(
            f"budget must be a positive number of seconds up to {MAX_SECONDS:.0f}, got {value}"
        )
    return value


def validate_delay(value: float) -> float:
    if not 0 <= value <= MAX_SECONDS:
        raise UsageError(f"delay must be 0 to {MAX_SECONDS:.0f} seconds, got {value}")
    return value


def validate_priority(value: int) -> int:
    """``tasks.priority`` is a MySQL INT: both backends keep to the range the smaller one stores."""
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise UsageError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {value}")
    return value


# ---------------------------------------------------------------- rules of the parent's rooms

# A drained or undeliverable attempt goes back to the queue as if it never ran.
REFUND = Decision(outcome=Outcome.RETRIED, status=Status.QUEUED, retry_in_s=0.0)
COMPLETED = Decision(outcome=Outcome.COMPLETED, status=Status.COMPLETED)


def doubling_delay(failures: int, *, minimum: float, maximum: float) -> float:
    """``minimum`` after the first failure, doubling with each one after it, capped at ``maximum``.

    The parent backs off this way from a database that does not answer and
    from a child that keeps dying at start-up, so neither becomes a tight loop.
    """
    if failures < 1:
        return 0.0
    return float(min(maximum, minimum * 2 ** min(failures - 1, 62)))


def should_recycle(tasks_done: int, max_tasks_per_child: int) -> bool:
    """``--max-tasks-per-child N``: a child that has run N tasks is replaced (0 = never)."""
    return max_tasks_per_child > 0 and tasks_done >= max_tasks_per_child


def exception_type(message: str) -> str:
    """``"ValueError"`` from ``"ValueError: <text>"``: only the type is safe to log.

    A handler's exception text may quote its task's options, which never reach a log.
    """
    return message.split(":", 1)[0].strip() or "exception"


# The stack is asked for this long before a deadline's kill (faulthandler's time to write it);
# the parent's attempts and run_handler's share it.
STACK_LEAD_S = 0.05


def timeout_error(budget_s: float, stack: str) -> str:
    """``last_error`` of a deadline kill: what happened, then where the handler was."""
    text = (
        f"timeout: the wall-clock budget ran out after {budget_s:.3f} s of this attempt;"
        " the child and its process tree were killed"
    )
    return text + (f"\n\nStack at the deadline:\n{stack}" if stack else "")


def attempt_timeout_error(timeout_s: float, stack: str) -> str:
    """``last_error`` of a per-attempt kill: the limit, then where the handler was."""
    text = (
        f"attempt_timeout: the attempt timed out after {timeout_s:g} s (the TIMEOUT of this"
        " task); the child and its process tree were killed"
    )
    return text + (f"\n\nStack at the timeout:\n{stack}" if stack else "")


def memory_error(peak_bytes: int, limit_bytes: int, stack: str) -> str:
    """``last_error`` of a ``MAX_RSS`` kill: the peak the watch saw, the limit, then the stack."""
    mib = 1024 * 1024
    text = (
        f"memory: the child's tree used {peak_bytes / mib:.1f} MiB, over this handler's"
        f" MAX_RSS of {limit_bytes / mib:g} MiB; the child and its process tree were killed"
    )
    return text + (f"\n\nStack at the kill:\n{stack}" if stack else "")


def panic_error(exit_description: str, crash_dump: str) -> str:
    """``last_error`` of a child that died: how it ended, then faulthandler's crash stack."""
    return f"panic: {exit_description}" + (f"\n\n{crash_dump}" if crash_dump else "")


def handler_error(message: str, traceback: str) -> str:
    """``last_error`` of a handler's exception: its message, then its traceback."""
    return message + ("\n\n" + traceback if traceback else "")
