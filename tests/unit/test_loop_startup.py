"""Start-up and signals: run() until drained, the handler import check, the signal inbox."""

from __future__ import annotations

import signal

from supervisor.lifecycle import Status
from tests.unit.conftest import MakeLoop
from tests.unit.fakes import FakeChild


def test_run_starts_the_children_and_returns_0_once_a_term_has_drained_them(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=2, start=False)
    [task_id] = loop.enqueue()

    def obedient(child: FakeChild) -> None:
        child.exit_on_stop = True
        child.say_ready()
        if child.slot == 1:  # the last child is up: the operator stops the supervisor
            signal.raise_signal(signal.SIGTERM)  # recorded by run()'s handler, acted on by the loop

    loop.spawner.on_spawn.append(obedient)
    assert loop.run() == 0
    assert loop.sup.finished()
    assert all(c.told_to_stop() for c in loop.spawner.spawned)
    assert loop.store.supervisors() == []  # deregistered by the link's final flush
    assert loop.row(task_id).status is Status.QUEUED  # never claimed, or given back
    assert loop.row(task_id).attempts == 0
    assert loop.logged("supervisor stopped")


def test_signals_are_recorded_by_the_handler_and_acted_on_by_the_loop(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1)
    loop.sup.signals.install(loop.sup.selector)
    signal.raise_signal(signal.SIGTTIN)
    signal.raise_signal(signal.SIGTTIN)
    assert loop.sup.pool.target == 1  # nothing happened inside the handler
    loop.step()
    assert loop.sup.pool.target == 3
    signal.raise_signal(signal.SIGHUP)
    loop.step()
    assert loop.child(0).told_to_stop()


def test_a_handler_that_cannot_be_imported_is_reported_loudly_at_start_up(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop(workers=1, start=False, import_check=True)
    loop.add_handler("broken", "raise ImportError('no module named thumbnails')\n")
    loop.start()
    for _ in range(100):  # the check runs in a real interpreter; wait for its report
        loop.sup.step(max_wait_s=0.05)
        if loop.logged("handler cannot be imported; its tasks will fail with this error"):
            break
    [report] = loop.logged("handler cannot be imported; its tasks will fail with this error")
    assert report["type"] == "broken"
    assert "no module named thumbnails" in report["error"]
    assert loop.sup.handlers.keys() == {"echo", "broken"}  # its tasks are still claimed


def test_an_import_check_that_hangs_is_given_up_at_its_deadline(make_loop: MakeLoop) -> None:
    loop = make_loop(workers=1, start=False, import_check=True)
    loop.add_handler("slow", "import time\ntime.sleep(60)\n")
    loop.start()
    assert loop.sup.imports.next_due() == loop.clock() + 60
    loop.advance(60)
    loop.step()
    [report] = loop.logged("handler cannot be imported; its tasks will fail with this error")
    assert report["type"] == "*"
    assert "ran out of time" in report["error"]
    assert loop.sup.imports.next_due() is None
