"""Keep the database credentials out of the children's reach: run once, first thing in the parent.

Handlers run in children of the parent, by default under the same uid (a root
supervisor can give them another with ``--child-user``: :mod:`supervisor.privileges`).
Such a process may open ``/proc/<ppid>/environ`` and ``/proc/<ppid>/mem``, and anyone
on the host may read ``/proc/<ppid>/cmdline``. So, before the first child (or
the fork-server template) exists, the parent:

1. marks itself non-dumpable (``PR_SET_DUMPABLE`` 0): ``/proc/<pid>/environ``,
   ``mem``, ``fd/`` and ptrace then need CAP_SYS_PTRACE, which an unprivileged
   process of the same uid lacks. Side effect: the parent leaves no core dump.
   The flag is reset by ``execve``, so children (new interpreters) stay
   ordinary, dumpable processes.
2. removes ``SUPERVISOR_DSN`` and ``SUPERVISOR_DB_PASSWORD`` from
   ``os.environ`` (and so from libc's ``environ`` and every environment passed
   on), and blanks their values in the exec-time environment block:
   ``/proc/<pid>/environ`` shows that block, not ``os.environ``, and it is the
   only copy a reader with CAP_SYS_PTRACE finds without reading memory.
3. stars out the password of any URL on its command line (``--dsn
   mysql://u:pw@…``), which ``/proc/<pid>/cmdline`` shows to every user.

What stays: the parsed password in the parent's heap (it must reconnect), which
only a process allowed to ptrace the parent can read. Blanking the blocks
writes over memory the kernel points ``/proc`` at, as PostgreSQL and
setproctitle do for their process titles; nothing in the process uses those
bytes after start-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

from loguru import logger

PR_SET_DUMPABLE = 4
# The web token too: a handler must not read the key to the operator's page.
SECRET_ENV = ("SUPERVISOR_DSN", "SUPERVISOR_DB_PASSWORD", "SUPERVISOR_WEB_TOKEN")
# Fields of /proc/<pid>/stat (1-based, proc(5)) giving the argv and environment blocks.
ARG_START, ARG_END, ENV_START, ENV_END = 48, 49, 50, 51


def harden_parent(secret_env: tuple[str, ...] = SECRET_ENV) -> None:
    """All three steps above; each one that cannot be done is logged, none is fatal."""
    if not forbid_inspection():
        logger.warning("could not make the parent non-dumpable; its children may read its memory")
    values = [os.environ.pop(name) for name in secret_env if name in os.environ]
    blocks = proc_blocks()
    if blocks is None:
        if values:
            logger.warning("could not blank the secrets in the parent's /proc/self/environ")
        return
    (arg_start, arg_end), (env_start, env_end) = blocks
    blank_environment(env_start, env_end, secret_env)
    star_url_passwords(arg_start, arg_end)


def forbid_inspection() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``; False where it failed or is not Linux."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    return False


def proc_blocks() -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The addresses of this process's argv and environment blocks; None if unknown."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            text = stat.read()
        # The command name (field 2) may hold spaces and parentheses: count after its last ")".
        fields = text[text.rindex(b")") + 2 :].split()
        arg_start, arg_end, env_start, env_end = (
            int(fields[index - 3]) for index in (ARG_START, ARG_END, ENV_START, ENV_END)
        )
    except (OSError, ValueError, IndexError):
        return None
    if not (0 < arg_start <= arg_end and 0 < env_start <= env_end):
        return None  # a kernel that hides them (before 3.5, or a restricted /proc)
    return (arg_start, arg_end), (env_start, env_end)


def blank_environment(start: int, end: int, names: tuple[str, ...]) -> None:
    """Overwrite the value of each ``NAME=value`` entry of ``names`` in the block with NUL bytes.

    The names stay, so an operator inspecting the process sees the variable
    was given and removed.
    """
    block = ctypes.string_at(start, end - start)
    prefixes = tuple(name.encode() + b"=" for name in names)
    offset = 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefixes):
            value_at = offset + entry.index(b"=") + 1
            ctypes.memset(start + value_at, 0, len(entry) - (value_at - offset))
        offset += len(entry) + 1


def star_url_passwords(start: int, end: int) -> None:
    """Overwrite the password of every ``scheme://user:password@host`` in the block with ``*``.

    The same length keeps the arguments' boundaries, so ``ps`` still shows
    them right.
    """
    block = ctypes.string_at(start, end - start)
    for begin, length in url_password_spans(block):
        ctypes.memset(start + begin, ord("*"), length)


def url_password_spans(data: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` of each URL password in NUL-separated ``data``, as urlsplit reads it.

    The authority runs from ``://`` to the first ``/``, ``?``, ``#`` or NUL; the
    user info is what precedes its last ``@``, the password what follows the
    first ``:`` of the user info.
    """
    spans: list[tuple[int, int]] = []
    at = data.find(b"://")
    while at >= 0:
        authority_at = at + 3
        stop = len(data)
        for mark in (b"/", b"?", b"#", b"\0"):
            found = data.find(mark, authority_at)
            if 0 <= found < stop:
                stop = found
        authority = data[authority_at:stop]
        userinfo_end = authority.rfind(b"@")
        colon = authority.find(b":", 0, max(userinfo_end, 0))
        if userinfo_end > 0 and colon >= 0 and userinfo_end > colon + 1:
            spans.append((authority_at + colon + 1, userinfo_end - colon - 1))
        at = data.find(b"://", stop)
    return spans
