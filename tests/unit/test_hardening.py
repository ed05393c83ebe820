"""The parent keeps the database password from its children (issue 10, item 14).

Each test starts a real process that hardens itself as the supervisor's parent
does at start-up, and reads its ``/proc`` files from outside, as a handler
would read ``/proc/<ppid>/...``. When the tests run as root, both processes
become ``nobody`` (the reader through ``setpriv``): a same-uid process without
CAP_SYS_PTRACE is the case ``PR_SET_DUMPABLE`` protects.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.hardening import url_password_spans

REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
URL_SECRET, ENV_DSN_SECRET, ENV_PASSWORD_SECRET = "argvpw-1", "envdsnpw-2", "envpw-3"

TARGET = """
import ctypes, os, sys, time
from supervisor.hardening import harden_parent  # imported first: this interpreter may be root's
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # a change of uid cleared the flag: be ordinary again
if sys.argv[1] == "harden":
    harden_parent()
print("ready", flush=True)
time.sleep(60)
""".replace("NOBODY", str(NOBODY))


def start_target(mode: str) -> subprocess.Popen[str]:
    """A process of the unprivileged uid with secrets in its argv and environment."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO_ROOT),
        "SUPERVISOR_DSN": f"mysql://u:{ENV_DSN_SECRET}@db.example:3306/q",
        "SUPERVISOR_DB_PASSWORD": ENV_PASSWORD_SECRET,
        "KEEP_ME": "still-here",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", TARGET, mode, "--dsn", f"mysql://u:{URL_SECRET}@db.example/q"],
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


@contextlib.contextmanager
def target(mode: str) -> Iterator[subprocess.Popen[str]]:
    process = start_target(mode)
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
def hardened() -> Iterator[subprocess.Popen[str]]:
    with target("harden") as process:
        yield process


def read_as_sibling(path: str) -> str:
    """``path`` read by another process of the same unprivileged uid: its text, or the error."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is not installed: no unprivileged reader")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run(
        [*prefix, "cat", path], capture_output=True, timeout=30, check=False, cwd="/"
    )
    if done.returncode != 0:
        return "denied: " + done.stderr.decode("utf-8", "replace")
    return done.stdout.replace(b"\0", b"\n").decode("utf-8", "replace")


def test_an_ordinary_process_shows_its_environment_to_a_same_uid_sibling() -> None:
    """The control: without hardening, the sibling reads the secrets (what a handler did)."""
    with target("plain") as process:
        assert ENV_PASSWORD_SECRET in read_as_sibling(f"/proc/{process.pid}/environ")


def test_a_same_uid_process_cannot_read_the_hardened_parents_environment(
    hardened: subprocess.Popen[str],
) -> None:
    """PR_SET_DUMPABLE 0: /proc/<pid>/environ (and mem) need CAP_SYS_PTRACE, not just the uid."""
    assert "Permission denied" in read_as_sibling(f"/proc/{hardened.pid}/environ")
    assert "Permission denied" in read_as_sibling(f"/proc/{hardened.pid}/mem")


def test_the_exec_time_environment_block_no_longer_holds_the_secrets(
    hardened: subprocess.Popen[str],
) -> None:
    """A reader allowed to see the block (root here) finds the secrets gone, the rest intact."""
    block = Path(f"/proc/{hardened.pid}/environ").read_bytes().split(b"\0")
    text = b"\n".join(block).decode()
    assert ENV_DSN_SECRET not in text and ENV_PASSWORD_SECRET not in text
    assert b"KEEP_ME=still-here" in block
    assert b"SUPERVISOR_DSN=" in block and b"SUPERVISOR_DB_PASSWORD=" in block


def test_a_password_in_a_command_line_url_is_overwritten(
    hardened: subprocess.Popen[str],
) -> None:
    """/proc/<pid>/cmdline is world-readable whatever the dumpable flag: the password is starred."""
    args = Path(f"/proc/{hardened.pid}/cmdline").read_bytes().split(b"\0")
    assert URL_SECRET.encode() not in b"".join(args)
    assert b"mysql://u:" + b"*" * len(URL_SECRET) + b"@db.example/q" in args
    assert URL_SECRET not in read_as_sibling(f"/proc/{hardened.pid}/cmdline")


@pytest.mark.parametrize(
    ("argv", "password"),
    [
        (b"--dsn\0mysql://u:pw@h:3306/db\0", b"pw"),
        (b"--dsn=mysql://u:p%40w@h/db?connect_timeout=5\0", b"p%40w"),
        (b"x\0mysql://u:p@ss@h/db\0", b"p@ss"),  # urlsplit: the user info ends at the last @
    ],
)
def test_the_password_span_is_what_urlsplit_calls_the_password(
    argv: bytes, password: bytes
) -> None:
    [(begin, length)] = url_password_spans(argv)
    assert argv[begin : begin + length] == password


@pytest.mark.parametrize(
    "argv", [b"sqlite:///tmp/x.db\0", b"mysql://u@h/db\0", b"mysql://u:@h/db\0", b"--lease\0060\0"]
)
def test_urls_without_a_password_are_left_alone(argv: bytes) -> None:
    assert url_password_spans(argv) == []
