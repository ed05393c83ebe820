"""``--child-user USER``: children run handlers under another uid than a root supervisor.

The parent resolves the user once, at start-up (:meth:`ChildUser.resolve`:
uid, primary gid, the user's groups, home), and hands the result to every
child in its environment (:data:`CREDENTIALS_ENV`, never a secret). Each
child drops to that user as the first thing it does, before any handler code
can run (:func:`enter_child_user`): the forked ones right after the fork
server handed them out, the new interpreters (the fallback, and the handler
import check) first thing in ``supervisor.child``'s ``main``. The order is
the one ``su`` and systemd's ``User=`` use: supplementary groups, then the
gid, then the uid (after ``setuid`` the process could no longer change its
groups). The drop is then verified (real, effective and saved ids, the
groups, and that root cannot be regained); a child whose drop did not take
writes one line and exits with :data:`DROP_FAILED_STATUS`, so it never runs
a handler as root.

The kernel clears a process's parent-death signal and makes it non-dumpable
when its credentials change; children use neither the former (their
lifeline is a pipe, an inherited descriptor that works under any uid) and
the latter is kept on purpose (see :func:`drop_to`).

This module imports nothing the fork-server template does not already hold
(no loguru, no store): a forked child runs it after the drop's own imports
would have become impossible (a Python installation unreadable by the user).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import sys
from collections.abc import MutableMapping

import attrs

CREDENTIALS_ENV = "SUPERVISOR_CHILD_CREDENTIALS"
DROP_FAILED_STATUS = 78  # EX_CONFIG: the child could not become the user it was told to be
PR_SET_DUMPABLE = 4


class ChildUserError(ValueError):
    """The ``--child-user`` value names no usable user."""


@attrs.frozen(kw_only=True)
class ChildUser:
    """The user children run as, resolved once by the parent."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups: the user's own, as initgroups(3) gives
    home: str

    @classmethod
    def resolve(cls, text: str) -> ChildUser:
        """Look ``text`` (a user name or a numeric uid) up in the user database.

        ChildUserError if there is no such user, or if it is root: running
        children "as root" is what they do without the flag.
        """
        try:
            entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
        except (KeyError, OverflowError):
            raise ChildUserError(f"no such user: {text!r}") from None
        if entry.pw_uid == 0:
            raise ChildUserError(f"{text!r} is root (uid 0): name an unprivileged user")
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=groups,
            home=entry.pw_dir,
        )

    def encode(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def decode(cls, text: str) -> ChildUser:
        """The inverse of :meth:`encode`; ValueError for anything else."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("child credentials are a JSON object")
        fields = ("name", "uid", "gid", "groups", "home")
        name, uid, gid, groups, home = (raw.get(k) for k in fields)
        ids = [uid, gid, *(groups if isinstance(groups, list) else [None])]
        if not (
            isinstance(name, str)
            and isinstance(home, str)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        ):
            raise ValueError("malformed child credentials")
        assert isinstance(uid, int) and isinstance(gid, int) and isinstance(groups, list)
        return cls(name=name, uid=uid, gid=gid, groups=tuple(groups), home=home)

    def environment(self) -> dict[str, str]:
        """What the parent adds to the children's environment for them to drop to this user."""
        return {CREDENTIALS_ENV: self.encode()}


def permits(user: ChildUser, path: str, bits: int) -> bool:
    """Whether ``user`` may open ``path`` for ``bits`` (``os.R_OK``, ``os.W_OK``), as the mode
    bits say: every folder above it searchable, the file's owner, group or other bits.

    ACLs, capabilities and mount options are not looked at; a path that cannot be
    examined counts as out of reach.
    """
    target = os.path.abspath(path)
    folders = [os.path.dirname(target)]
    while folders[-1] != os.path.dirname(folders[-1]):
        folders.append(os.path.dirname(folders[-1]))
    try:
        return all(_allows(user, os.stat(f), os.X_OK) for f in folders) and _allows(
            user, os.stat(target), bits
        )
    except OSError:
        return False


def _allows(user: ChildUser, status: os.stat_result, bits: int) -> bool:
    if status.st_uid == user.uid:
        shift = 6
    elif status.st_gid in user.groups:
        shift = 3
    else:
        shift = 0
    return (status.st_mode >> shift) & bits == bits


def drop_to(user: ChildUser) -> None:
    """Become ``user`` for good (groups, gid, uid, in that order); OSError if that did not take.

    Also marks the process non-dumpable (the kernel does so on a uid change
    unless ``fs.suid_dumpable`` is 1; this makes it so whatever the sysctl):
    other children, which run as the same user, can then neither ptrace it
    nor read its memory or ``/proc/<pid>/environ``. The parent, root, still can.
    HOME, USER and LOGNAME name the user, as a login would set them.
    """
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
    verify(user)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:  # pragma: no cover - valid arguments
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    os.environ.update(HOME=user.home, USER=user.name, LOGNAME=user.name)


def verify(user: ChildUser) -> None:
    """OSError unless every uid and gid is the user's, the groups are its own, and root is gone."""
    uids, gids = os.getresuid(), os.getresgid()
    if uids != (user.uid,) * 3 or gids != (user.gid,) * 3:
        raise OSError(f"credentials did not change: uids {uids}, gids {gids}")
    if sorted(set(os.getgroups())) != sorted(set(user.groups)):
        raise OSError(f"supplementary groups are {os.getgroups()}, not {list(user.groups)}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError("root could be regained after the drop")


def enter_child_user(environ: MutableMapping[str, str] = os.environ) -> None:
    """In a child, before anything else: become the user the parent asked for, or exit.

    Does nothing when the parent asked for none (no :data:`CREDENTIALS_ENV`).
    The variable is removed, so neither handlers nor what they start see it.
    A child that cannot drop writes one line to its stderr (the parent logs
    it) and exits with :data:`DROP_FAILED_STATUS`; it never goes on as root.
    """
    text = environ.pop(CREDENTIALS_ENV, None)
    if text is None:
        return
    try:
        user = ChildUser.decode(text)
        drop_to(user)
    except (OSError, ValueError) as exc:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"supervisor child: cannot run as the --child-user: {exc}\n")
            sys.stderr.flush()
        os._exit(DROP_FAILED_STATUS)
