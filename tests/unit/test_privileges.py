"""``--child-user``: the user, the flag, and the drop a child performs (issue 10, item 14).

The drop itself changes the credentials of the process that runs it for
good, so it runs here in real forked processes (the test process stays
root), which the test inspects from the outside (``/proc/<pid>/status``)
and through a pipe. The supervisor end to end, with handlers running as
another user, is tests/e2e/test_child_user.py. Both need root, which CI has;
elsewhere they are skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor import http, service
from supervisor.config import Settings, add_run_flags, settings_from
from supervisor.dsn import parse_dsn
from supervisor.errors import UsageError
from supervisor.health import Health
from supervisor.privileges import (
    CREDENTIALS_ENV,
    DROP_FAILED_STATUS,
    ChildUser,
    ChildUserError,
    drop_to,
    enter_child_user,
    permits,
    verify,
)
from supervisor.workers import child_environment

PR_GET_DUMPABLE = 3

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing uids needs root (CI has it)")


def nobody() -> ChildUser:
    return ChildUser.resolve("nobody")


def test_a_user_is_resolved_by_name_or_uid_with_its_own_groups() -> None:
    entry = pwd.getpwnam("nobody")
    by_name = ChildUser.resolve("nobody")
    assert by_name == ChildUser.resolve(str(entry.pw_uid))
    assert (by_name.uid, by_name.gid, by_name.home) == (entry.pw_uid, entry.pw_gid, entry.pw_dir)
    assert entry.pw_gid in by_name.groups
    assert ChildUser.decode(by_name.encode()) == by_name
    assert by_name.environment() == {CREDENTIALS_ENV: by_name.encode()}


@pytest.mark.parametrize("text", ["no-such-user-here", "4000000000", str(2**80)])
def test_an_unknown_user_is_refused(text: str) -> None:
    with pytest.raises(ChildUserError, match="no such user"):
        ChildUser.resolve(text)


@pytest.mark.parametrize("text", ["root", "0"])
def test_root_is_refused(text: str) -> None:
    with pytest.raises(ChildUserError, match="is root"):
        ChildUser.resolve(text)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"name": "x", "uid": 1, "gid": 1, "groups": [1]}',
        '{"name": "x", "uid": -1, "gid": 1, "groups": [1], "home": "/"}',
        '{"name": "x", "uid": true, "gid": 1, "groups": [1], "home": "/"}',
        '{"name": "x", "uid": 1, "gid": 1, "groups": "1", "home": "/"}',
        "not json",
    ],
)
def test_malformed_credentials_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ChildUser.decode(text)


def parse(argv: list[str], environ: dict[str, str]) -> Settings:
    import argparse

    parser = argparse.ArgumentParser()
    add_run_flags(parser, environ)
    return settings_from(parser.parse_args(argv), environ)


def test_the_flag_and_its_environment_variable() -> None:
    assert parse([], {}).child_user is None
    assert parse(["--child-user", "nobody"], {}).child_user == nobody()
    assert parse([], {"SUPERVISOR_CHILD_USER": "nobody"}).child_user == nobody()
    with pytest.raises(UsageError, match=r"^--child-user must be an existing user other than root"):
        parse(["--child-user", "no-such-user-here"], {})
    with pytest.raises(UsageError, match=r"^SUPERVISOR_CHILD_USER must be .* got 'root'$"):
        parse([], {"SUPERVISOR_CHILD_USER": "root"})


def test_the_flag_needs_a_supervisor_started_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        dsn=parse_dsn(f"sqlite:///{tmp_path / 'tasks.db'}"),
        handlers_dir=tmp_path,
        child_user=nobody(),
    )
    monkeypatch.setattr(service.os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match=r"^--child-user .* started as root; it runs as uid 1000$"):
        service.run(settings)
    assert not (tmp_path / "tasks.db").exists()  # refused before anything started


def test_children_get_credentials_only_from_the_parent() -> None:
    """A stray variable in the supervisor's own environment never makes children drop."""
    inherited = {CREDENTIALS_ENV: "{}", "PATH": "/bin"}
    assert child_environment(inherited, {}) == {"PATH": "/bin"}
    assert child_environment(inherited, nobody().environment()) == {
        "PATH": "/bin",
        **nobody().environment(),
    }


def test_no_credentials_no_drop() -> None:
    environ = {"PATH": "/bin"}
    enter_child_user(environ)
    assert environ == {"PATH": "/bin"}
    assert os.geteuid() == os.getuid()


class Exited(Exception):
    pass


def exit_raises(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    statuses: list[int] = []

    def fake_exit(status: int) -> None:
        statuses.append(status)
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    return statuses


def test_a_child_that_cannot_drop_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process, with the system calls failing: the drop is never half done, and never skipped."""
    statuses = exit_raises(monkeypatch)
    environ = {CREDENTIALS_ENV: "not json"}
    with pytest.raises(Exited):
        enter_child_user(environ)
    assert environ == {}  # handlers never see it, whatever happens

    def refuse(groups: list[int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setgroups", refuse)
    with pytest.raises(Exited):
        enter_child_user({CREDENTIALS_ENV: nobody().encode()})
    assert statuses == [DROP_FAILED_STATUS, DROP_FAILED_STATUS]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    prefix = "supervisor child: cannot run as the --child-user: "
    assert all(line.startswith(prefix) for line in lines)
    assert "Operation not permitted" in lines[1]


@needs_root
def test_verify_refuses_what_is_not_exactly_the_user() -> None:
    """Run in this (root) process: each check that can fail is reached."""
    with pytest.raises(OSError, match="credentials did not change"):
        verify(nobody())
    me = ChildUser(name="root", uid=0, gid=0, groups=(424242,), home="/root")
    with pytest.raises(OSError, match="supplementary groups"):
        verify(me)
    me = ChildUser(name="root", uid=0, gid=0, groups=tuple(os.getgroups()), home="/root")
    with pytest.raises(OSError, match="root could be regained"):
        verify(me)


def in_fork(body: Callable[[int], None]) -> tuple[int, int, int]:
    """Run ``body(write_fd)`` in a forked process: its pid, the pipe it writes, the go-ahead.

    The child waits for the parent's byte before it exits, so the parent can look at it
    in /proc while it is alive; stderr goes into the same pipe.
    """
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked process ends with os._exit, saving nothing
        status = 0
        try:
            os.dup2(report_w, 2)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - pytest captured the old one
            body(report_w)
            os.read(go_r, 1)
        except BaseException:  # noqa: BLE001 - reported through the exit status
            status = 1
        os._exit(status)
    os.close(report_w)
    os.close(go_r)
    return pid, report_r, go_w


def finish(pid: int, report_r: int, go_w: int) -> tuple[bytes, int]:
    with contextlib.suppress(BrokenPipeError):  # it exited without waiting for the go-ahead
        os.write(go_w, b"x")
    os.close(go_w)
    chunks = []
    while chunk := os.read(report_r, 65536):
        chunks.append(chunk)
    os.close(report_r)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks), os.waitstatus_to_exitcode(status)


def proc_ids(pid: int) -> dict[str, list[int]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {key: [int(v) for v in fields[key].split()] for key in ("Uid", "Gid", "Groups")}


@needs_root
def test_the_drop_in_a_real_process_takes_for_good() -> None:
    user = nobody()

    def body(out: int) -> None:
        drop_to(user)
        libc = ctypes.CDLL(None, use_errno=True)
        report = {
            "resuid": os.getresuid(),
            "resgid": os.getresgid(),
            "groups": os.getgroups(),
            "env": [os.environ.get(k) for k in ("HOME", "USER", "LOGNAME")],
            "dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
        }
        try:
            os.setuid(0)
            report["regained"] = True
        except PermissionError:
            report["regained"] = False
        try:
            Path("/proc/1/environ").read_bytes()
            report["init_environ"] = "read"
        except PermissionError:
            report["init_environ"] = "PermissionError"
        os.write(out, (json.dumps(report) + "\n").encode())

    pid, report_r, go_w = in_fork(body)
    deadline = time.monotonic() + 10
    while proc_ids(pid)["Uid"][0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    ids = proc_ids(pid)  # as the kernel sees it: real, effective, saved and filesystem ids
    output, status = finish(pid, report_r, go_w)
    assert status == 0, output
    report = json.loads(output)
    assert ids["Uid"] == [user.uid] * 4
    assert ids["Gid"] == [user.gid] * 4
    assert sorted(ids["Groups"]) == sorted(user.groups)
    assert report["resuid"] == [user.uid] * 3
    assert report["resgid"] == [user.gid] * 3
    assert report["env"] == [user.home, user.name, user.name]
    assert report["dumpable"] == 0  # its siblings (the same uid) cannot ptrace it
    assert report["regained"] is False
    assert report["init_environ"] == "PermissionError"


@needs_root
def test_a_child_already_without_root_exits_rather_than_run_as_the_wrong_user() -> None:
    """Told to become ``daemon`` when it is ``nobody`` already: the drop fails, the child exits."""
    target = ChildUser.resolve("daemon")

    def body(out: int) -> None:
        os.setgroups([])
        os.setgid(nobody().gid)
        os.setuid(nobody().uid)
        enter_child_user({CREDENTIALS_ENV: target.encode()})
        os.write(out, b"went on\n")

    pid, report_r, go_w = in_fork(body)
    output, status = finish(pid, report_r, go_w)
    assert status == DROP_FAILED_STATUS, output
    assert output.decode().startswith("supervisor child: cannot run as the --child-user: ")
    assert b"went on" not in output


def test_the_scrape_opens_regular_files_only(tmp_path: Path) -> None:
    """A handler owns its metrics folder under --child-user: what it plants there is not read."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    parent, children = tmp_path / "parent", tmp_path / "children"
    parent.mkdir()
    children.mkdir()
    values = MmapedDict(str(children / "counter_slot-0.db"))
    values.write_value(mmap_key("jobs_total", "jobs_total", [], [], "Jobs."), 3.0, 0.0)
    values.close()
    secret = tmp_path / "secret.db"  # a file the handler could not read itself
    secret.write_bytes((children / "counter_slot-0.db").read_bytes())
    (children / "counter_slot-9.db").symlink_to(secret)
    os.mkfifo(children / "counter_slot-8.db")  # would block the reader forever
    assert not http._non_empty(str(children / "counter_slot-9.db"))
    assert not stat.S_ISREG(os.lstat(children / "counter_slot-8.db").st_mode)

    health = Health(stale_after_s=30.0, db_ok_at=time.monotonic())
    served = http.serve("127.0.0.1", 0, str(parent), health, str(children))
    try:
        port = served.server_address[1]
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    finally:
        served.shutdown()
        served.server_close()
    assert "jobs_total 3.0" in body  # the child's own file, once: the symlink is not followed


@needs_root
def test_what_the_user_may_open_is_read_from_the_mode_bits_of_the_file_and_its_folders() -> None:
    user = nobody()
    base = Path(tempfile.mkdtemp(prefix="sv-permits-"))
    try:
        base.chmod(0o755)
        shared, private = base / "shared", base / "private"
        shared.mkdir(mode=0o755)
        private.mkdir(mode=0o700)
        cases = {
            "world-readable": (shared, 0o644, None, None),
            "private-file": (shared, 0o600, None, None),
            "owned": (shared, 0o600, user.uid, None),
            "group": (shared, 0o640, None, user.gid),
            "in-private-folder": (private, 0o666, None, None),
        }
        seen = {}
        for name, (folder, mode, uid, gid) in cases.items():
            path = folder / name
            path.write_bytes(b"")
            path.chmod(mode)
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
            seen[name] = (permits(user, str(path), os.R_OK), permits(user, str(path), os.W_OK))
        assert seen == {
            "world-readable": (True, False),
            "private-file": (False, False),
            "owned": (True, True),
            "group": (True, False),
            "in-private-folder": (False, False),
        }
        assert not permits(user, str(shared / "missing"), os.R_OK)
    finally:
        shutil.rmtree(base)


def test_no_database_warning_for_a_server_or_a_file_the_user_cannot_reach(tmp_path: Path) -> None:
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        service._warn_if_reachable(parse_dsn("mysql://app@db.example:3306/app"), nobody())
        (tmp_path / "tasks.db").write_bytes(b"")  # in pytest's folder, 0700: out of reach
        service._warn_if_reachable(parse_dsn(f"sqlite:///{tmp_path / 'tasks.db'}"), nobody())
    finally:
        logger.remove(sink)
    assert messages == []
