"""A child told to stop that does not exit (a handler left a non-daemon thread) is killed.

Without a stop deadline its slot was lost for good on recycle or HUP, and a
drain with nothing in flight waited out the whole drain timeout.
"""

from __future__ import annotations

import errno
from typing import NoReturn

import pytest

from supervisor import parent, telemetry
from supervisor.pool import STOP_GRACE_S
from tests.unit.conftest import MakeLoop


def test_drain_kills_a_child_that_ignores_stop_and_ends_at_once(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=2, drain_timeout_s=600.0)
    first, second = loop.children()
    loop.sup.handle_sigterm()
    assert first.told_to_stop() and second.told_to_stop()
    first.exit(0)  # obeys
    loop.step()
    loop.advance(STOP_GRACE_S - 0.1)
    loop.step()
    assert second.kills == 0 and not loop.sup.finished()
    loop.advance(0.2)
    loop.step()  # the stop deadline: its tree is killed
    assert second.kills == 1
    loop.step()  # its exit is reaped
    assert loop.sup.finished()


def test_the_stop_deadline_is_a_wakeup(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, drain_timeout_s=600.0)
    loop.sup.handle_sigterm()
    assert loop.sup.next_wakeup() <= loop.clock.now + STOP_GRACE_S


def test_a_recycled_child_that_ignores_stop_is_killed_and_its_slot_refilled(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, max_tasks_per_child=1)
    loop.enqueue()
    loop.cycle()
    [child] = loop.busy()
    child.say_done()
    loop.step()
    assert child.told_to_stop()
    loop.advance(STOP_GRACE_S + 0.1)
    loop.step()
    assert child.kills == 1
    loop.step()
    [fresh] = loop.children()
    assert fresh is not child and len(loop.spawner.spawned) == 2


def test_hup_replaces_a_child_that_ignores_stop(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    [child] = loop.children()
    loop.sup.handle_sighup()
    assert child.told_to_stop()
    loop.advance(STOP_GRACE_S + 0.1)
    loop.step()
    loop.step()
    [fresh] = loop.children()
    assert fresh is not child


def test_housekeeping_errors_never_crash_the_parent(
    make_loop: MakeLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of fds, psutil and /proc fail with plain OSError; the loop logs and carries on."""

    def out_of_fds(*args: object) -> NoReturn:
        raise OSError(errno.EMFILE, "Too many open files")

    loop = make_loop(workers=1)
    monkeypatch.setattr(parent, "kill_orphans", out_of_fds)
    monkeypatch.setattr(telemetry.psutil, "Process", out_of_fds)
    loop.advance(parent.HOUSEKEEPING_INTERVAL_S + 1)
    loop.step()
    [child] = loop.children()
    child.exit(1)  # a slot's death also sweeps for orphans
    loop.step()
    assert loop.logged("housekeeping failed; trying again later")
    assert len(loop.spawner.spawned) == 2
