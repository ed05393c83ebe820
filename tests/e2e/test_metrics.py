"""Metrics, ``/healthz`` and the multiprocess directory of the real ``python -m supervisor``.

Every test starts the supervisor in a subprocess with ``--metrics-port`` set
to a free port, runs a known workload, scrapes ``/metrics`` over HTTP and
parses it with prometheus_client's own parser. Values are compared exactly.
The database outage for ``/healthz`` is made with a TCP proxy the test
controls (:mod:`tests.e2e.tcp_proxy`): the real MariaDB server is never
stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.lifecycle import Failure, Status
from supervisor.producer import new_task
from tests.e2e.harness import Launcher, SupervisorProcess, wait_until
from tests.e2e.tcp_proxy import in_front_of

Labels = frozenset[tuple[str, str]]

RETURNS = """
    def handle(task, progress):
        progress(100)
"""

FAILS_FIRST_ATTEMPT = """
    def handle(task, progress):
        if task.attempt == 1:
            raise RuntimeError("the first attempt fails on purpose")
"""

ALWAYS_RAISES = """
    def handle(task, progress):
        raise ValueError("this handler always fails")
"""

DIES = """
    import os

    def handle(task, progress):
        os._exit(3)
"""

HANGS = """
    import time

    def handle(task, progress):
        time.sleep(60)
"""

WAITS_FOR_RELEASE = """
    import json
    import time
    from pathlib import Path

    def handle(task, progress):
        release = Path(json.loads(task.options)["release"])
        limit = time.monotonic() + 60
        while not release.exists() and time.monotonic() < limit:
            time.sleep(0.02)
"""

# A handler with a metric of its own, created at import time inside the child.
COUNTS_WIDGETS = """
    import json
    import os
    from pathlib import Path

    from prometheus_client import Counter

    WIDGETS = Counter("handler_widgets", "Widgets made by the handler.")

    def handle(task, progress):
        WIDGETS.inc()
        with Path(json.loads(task.options)["pids"]).open("a") as pids:
            pids.write(f"{os.getpid()}\\n")
"""

# No work at all, but a counter and a live gauge of its own: each child writes value files.
NOOP_WITH_METRICS = """
    from prometheus_client import Counter, Gauge

    NOOPS = Counter("handler_noops", "No-op tasks run by the handler.")
    ALIVE = Gauge("handler_alive", "Children that imported it.", multiprocess_mode="livesum")
    ALIVE.set(1)

    def handle(task, progress):
        NOOPS.inc()
"""


# ---------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str, str]:
    """Status, content type and body of ``GET http://127.0.0.1:port/path``."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


class Scrape:
    """One parsed ``/metrics`` page: sample values by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                by_labels = self.samples.setdefault(sample.name, {})
                by_labels[frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get(name, {}).get(frozenset(labels.items()))

    def by(self, name: str, *keys: str, nonzero: bool = True) -> dict[tuple[str, ...], float]:
        """``{label values in the order of keys: value}`` of one sample name."""
        found = {}
        for labels, value in self.samples.get(name, {}).items():
            if nonzero and value == 0:
                continue
            as_dict = dict(labels)
            found[tuple(as_dict.get(k, "") for k in keys)] = value
        return found


def scrape(port: int) -> Scrape:
    status, content_type, body = http_get(port, "/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain"), content_type
    return Scrape(body)


def wait_metrics(port: int, supervisor: SupervisorProcess, timeout: float = 15) -> Scrape:
    """Wait until the metrics server answers; the first scrape."""

    def attempt() -> Scrape | None:
        assert supervisor.running, "supervisor exited:\n" + supervisor.stderr()[-3000:]
        with contextlib.suppress(OSError):
            return scrape(port)
        return None

    return wait_until(attempt, timeout, f"/metrics on port {port}")


def wait_scrape(
    port: int, check: Any, timeout: float = 20, what: str = "metrics to match"
) -> Scrape:
    """Scrape until ``check(scrape)`` holds (the sampled gauges refresh every few seconds)."""
    last: list[Scrape] = []

    def attempt() -> Scrape | None:
        current = scrape(port)
        last[:] = [current]
        return current if check(current) else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = attempt()
        if found is not None:
            return found
        time.sleep(0.1)
    assert last, f"no scrape while waiting for {what}"
    return last[0]  # timed out: the caller's exact assertions then show what differs


def healthz(port: int) -> tuple[int, str]:
    status, _, body = http_get(port, "/healthz")
    return status, body


def listening(pid: int) -> list[tuple[str, int]]:
    """Addresses the process listens on (TCP)."""
    process = psutil.Process(pid)
    connections = process.net_connections(kind="tcp")
    return [(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]


def metrics_args(port: int) -> tuple[str, ...]:
    return ("--metrics-port", str(port))


@pytest.fixture
def no_multiproc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Supervisors started by the test choose their own multiprocess directory."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


@pytest.fixture
def launcher(tmp_path: Path, dsn: str, no_multiproc_env: None) -> Iterator[Launcher]:
    with Launcher(tmp_path, dsn) as launcher:
        yield launcher


@pytest.fixture
def sqlite_launcher(tmp_path: Path, sqlite_dsn: str, no_multiproc_env: None) -> Iterator[Launcher]:
    with Launcher(tmp_path, sqlite_dsn) as launcher:
        yield launcher


# ---------------------------------------------------------------------------- 1. a known workload


def test_every_metric_has_exact_values_after_a_known_workload(launcher: Launcher) -> None:
    for task_type, source in {
        "ok": RETURNS,
        "late": RETURNS,
        "flaky": FAILS_FIRST_ATTEMPT,
        "bad": ALWAYS_RAISES,
        "boom": DIES,
        "slow": HANGS,
        "hold": WAITS_FOR_RELEASE,
    }.items():
        launcher.handler(task_type, source)
    # Enqueued before the supervisor starts with a budget that runs out before it does:
    # expired by housekeeping, never claimed. "nobody" has no handler anywhere.
    late = launcher.enqueue("late", budget=0.3)
    nobody_late = launcher.enqueue("nobody", budget=0.3)
    nobody = launcher.enqueue("nobody")
    time.sleep(0.6)

    port = free_port()
    workers = 3
    supervisor = launcher.start_ready(
        *metrics_args(port), "--backoff", "0", workers=workers, poll_interval=0.05
    )
    wait_metrics(port, supervisor)
    ids = [launcher.enqueue("ok") for _ in range(3)]
    flaky = launcher.enqueue("flaky")
    bad = launcher.enqueue("bad", max_attempts=3)
    boom = launcher.enqueue("boom")
    slow = launcher.enqueue("slow", budget=2)

    # The rows are what the metrics must agree with.
    for task_id in ids:
        assert launcher.wait_status(task_id, Status.COMPLETED).attempts == 1
    assert launcher.wait_status(flaky, Status.COMPLETED).attempts == 2
    for task_id, failure, attempts in (
        (bad, Failure.ERROR, 3),
        (boom, Failure.PANIC, 1),
        (slow, Failure.TIMEOUT, 1),
        (late, Failure.EXPIRED, 0),
        (nobody_late, Failure.EXPIRED, 0),
    ):
        row = launcher.wait_status(task_id, Status.FAILED, timeout=20)
        assert (row.failure, row.attempts) == (failure, attempts), task_id
    assert launcher.get(nobody).status is Status.QUEUED

    # One task held running: the in-flight and busy gauges show exactly it.
    release = launcher.path("release")
    held = launcher.enqueue("hold", json.dumps({"release": str(release)}))
    launcher.wait_status(held, Status.RUNNING)
    during = wait_scrape(
        port,
        lambda s: s.value("tasks_in_flight") == 1 and s.value("supervisor_workers_busy") == 1,
        what="one task in flight",
    )
    assert during.value("tasks_in_flight") == 1
    assert during.value("supervisor_workers_busy") == 1
    assert during.value("supervisor_workers") == workers
    release.write_text("go")
    launcher.wait_status(held, Status.COMPLETED)

    claimed = {("ok",): 3, ("flaky",): 2, ("bad",): 3, ("boom",): 1, ("slow",): 1, ("hold",): 1}
    processed = {
        ("ok", "completed"): 3,
        ("flaky", "retried"): 1,
        ("flaky", "completed"): 1,
        ("bad", "retried"): 2,
        ("bad", "error"): 1,
        ("boom", "panic"): 1,
        ("slow", "timeout"): 1,
        ("hold", "completed"): 1,
    }
    durations = {t: n for (t,), n in claimed.items()}  # one observation per attempt that ran
    depth = {("unknown", "queued"): 1}

    def settled(s: Scrape) -> bool:
        rss = s.by("supervisor_child_rss_bytes", "slot")
        return (
            s.by("tasks_claimed_total", "type") == claimed
            and {
                k: v
                for k, v in s.by("tasks_processed_total", "type", "outcome").items()
                if k[1] != "expired"
            }
            == processed
            and s.by("supervisor_queue_depth", "type", "status") == depth
            and s.value("tasks_in_flight") == 0
            and all(rss.get((str(slot),), 0) > 0 for slot in range(workers))
        )

    final = wait_scrape(port, settled, timeout=30, what="the final metrics")

    assert final.by("tasks_claimed_total", "type") == claimed
    outcomes = final.by("tasks_processed_total", "type", "outcome")
    assert {k: v for k, v in outcomes.items() if k[1] != "expired"} == processed
    # Every outcome kind of this workload appears with its own label.
    assert {"completed", "retried", "error", "panic", "timeout"} <= {k[1] for k in outcomes}

    counts = {
        (labels.get("type"),): value
        for labels, value in (
            (dict(k), v) for k, v in final.samples["task_duration_seconds_count"].items()
        )
        if labels.get("type") != "late"  # whether an expiry observes a duration is not the point
    }
    assert counts == {(t,): float(n) for t, n in durations.items()}
    slow_s = final.value("task_duration_seconds_sum", type="slow") or 0
    assert 0 < slow_s <= 2.5  # killed when its 2 s budget (counted from enqueue) ran out
    buckets = final.by("task_duration_seconds_bucket", "type", "le", nonzero=False)
    assert buckets[("ok", "+Inf")] == 3
    assert ("ok", "3600.0") in buckets and ("ok", "0.01") in buckets  # 10 ms .. 1 h

    assert final.value("tasks_in_flight") == 0
    assert final.value("supervisor_workers") == workers
    assert final.value("supervisor_workers_busy") == 0
    assert final.by("supervisor_child_restarts_total", "reason") == {("panic",): 1, ("timeout",): 1}
    assert final.value("supervisor_db_errors_total") == 0
    claim_count = final.value("supervisor_claim_seconds_count")
    assert claim_count is not None and claim_count > 0
    rss = final.by("supervisor_child_rss_bytes", "slot")
    assert set(rss) == {(str(slot),) for slot in range(workers)}
    assert all(value > 1_000_000 for value in rss.values()), rss  # a real process, not a stub

    # Queue depth: the unhandled type is "unknown", never its own name.
    assert final.by("supervisor_queue_depth", "type", "status") == depth
    assert "nobody" not in final.text

    # EXPIRY BY HOUSEKEEPING (asserted last on purpose, so everything above is proven first).
    # Tasks whose deadline passed while queued are failed by the sweep, not by a claim; they
    # count in tasks_processed_total{outcome="expired"} with their type if handled here, else
    # "unknown". This failed while Supervisor.sweep() only logged a bare count.
    expired = {k: v for k, v in outcomes.items() if k[1] == "expired"}
    assert expired == {("late", "expired"): 1, ("unknown", "expired"): 1}, (
        "housekeeping expiry missing from tasks_processed_total{outcome='expired'}"
    )


# ---------------------------------------------------------------------------- 2. handler metrics


def test_a_handler_counter_is_summed_exactly_across_recycled_children(launcher: Launcher) -> None:
    launcher.handler("widget", COUNTS_WIDGETS)
    pids = launcher.path("pids.txt")
    tasks = 20
    port = free_port()
    supervisor = launcher.start_ready(*metrics_args(port), "--max-tasks-per-child", "3", workers=4)
    wait_metrics(port, supervisor)
    launcher.store.enqueue_many(
        [new_task("widget", json.dumps({"pids": str(pids)})) for _ in range(tasks)]
    )

    def spent() -> int:
        """Children that ran their 3 tasks (each is recycled: stopped and replaced)."""
        ran_in = pids.read_text().split() if pids.exists() else []
        return sum(1 for pid in set(ran_in) if ran_in.count(pid) == 3)

    final = wait_scrape(
        port,
        lambda s: (
            s.value("tasks_processed_total", type="widget", outcome="completed") == tasks
            and s.value("handler_widgets_total") == tasks
            and s.value("supervisor_child_restarts_total", reason="recycled") == spent()
        ),
        timeout=60,
        what=f"{tasks} widgets",
    )

    assert final.value("handler_widgets_total") == tasks
    assert final.value("tasks_processed_total", type="widget", outcome="completed") == tasks
    assert final.value("tasks_claimed_total", type="widget") == tasks
    # The work really was spread over recycled children: at most 3 tasks each.
    ran_in = pids.read_text().split()
    assert len(ran_in) == tasks
    assert max(ran_in.count(pid) for pid in ran_in) == 3
    assert len(set(ran_in)) >= 7
    assert spent() >= 4
    assert final.value("supervisor_child_restarts_total", reason="recycled") == spent()


# ---------------------------------------------------------------------------- 3. bounded files


@pytest.mark.timeout(600)  # ~1 min on an idle 2-CPU host; a fresh Python process per task
def test_files_stay_bounded_by_worker_slots_with_a_fresh_child_per_task(
    sqlite_launcher: Launcher, tmp_path: Path
) -> None:
    launcher = sqlite_launcher
    launcher.handler("noop", NOOP_WITH_METRICS)
    directory = tmp_path / "prometheus-multiproc"
    directory.mkdir()
    tasks, workers = 1000, 4
    bound = 3 * (workers + 1)
    launcher.store.enqueue_many([new_task("noop") for _ in range(tasks)])

    port = free_port()
    supervisor = launcher.start(
        *metrics_args(port),
        "--max-tasks-per-child",
        "1",
        workers=workers,
        log_level="INFO",
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    wait_metrics(port, supervisor)

    most: list[tuple[int, list[str]]] = [(0, [])]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            names = sorted(os.listdir(directory))
            if len(names) > most[0][0]:
                most[0] = (len(names), names)
            time.sleep(0.02)

    def completed() -> int:
        rows = launcher.store.counts()
        return sum(row.count for row in rows if row.status is Status.COMPLETED)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # Polled in the database, not by scraping: a scrape costs the parent CPU time.
        deadline = time.monotonic() + 540
        while completed() < tasks and time.monotonic() < deadline:
            assert supervisor.running, supervisor.stderr()[-3000:]
            time.sleep(0.5)
        final = wait_scrape(
            port,
            lambda s: (
                s.value("tasks_processed_total", type="noop", outcome="completed") == tasks
                and s.value("supervisor_child_restarts_total", reason="recycled") == tasks
            ),
            timeout=20,
            what=f"{tasks} tasks completed",
        )
    finally:
        stop.set()
        watcher.join(5)

    assert most[0][0] <= bound, most[0]
    at_end = sorted(os.listdir(directory))
    assert len(at_end) <= bound, at_end
    # Files are named after the parent and the worker slots, never after a process id.
    owners = {name.rsplit("_", 1)[-1].removesuffix(".db") for name in at_end}
    assert owners <= {"parent", *(f"slot-{slot}" for slot in range(workers))}, at_end
    assert final.value("tasks_processed_total", type="noop", outcome="completed") == tasks
    assert final.value("tasks_claimed_total", type="noop") == tasks
    assert final.value("handler_noops_total") == tasks
    assert final.value("supervisor_child_restarts_total", reason="recycled") == tasks
    assert final.value("task_duration_seconds_count", type="noop") == tasks
    assert final.value("supervisor_db_errors_total") == 0
    # Live gauges of exited processes are dropped. Every child that imported the handler ran
    # its one task and was replaced; the replacements have not imported it yet.
    assert (final.value("handler_alive") or 0) == 0
    done = [
        (row.type, row.count) for row in launcher.store.counts() if row.status is Status.COMPLETED
    ]
    assert done == [("noop", tasks)]

    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(30) == 0
    assert directory.is_dir(), "an operator's directory is not removed"


# ---------------------------------------------------------------------------- 4. /healthz


@pytest.mark.mysql
def test_healthz_follows_the_database_through_a_proxy(
    tmp_path: Path, mysql_dsn: str, no_multiproc_env: None
) -> None:
    lease = 3.0
    with in_front_of(mysql_dsn) as (proxy, proxied), Launcher(tmp_path, mysql_dsn) as launcher:
        launcher.handler("ok", RETURNS)
        port = free_port()
        supervisor = launcher.start_ready(
            *metrics_args(port),
            "--dsn",
            proxied,
            workers=1,
            lease=lease,
            poll_interval=0.2,
        )
        wait_metrics(port, supervisor)
        assert wait_until(lambda: healthz(port)[0] == 200, 10, "healthy")
        assert healthz(port) == (200, "ok\n")
        first = launcher.enqueue("ok")
        launcher.wait_status(first, Status.COMPLETED)  # through the proxy
        assert proxy.accepted >= 1

        proxy.cut()
        cut_at = time.monotonic()

        def unhealthy() -> tuple[int, str] | None:
            answer = healthz(port)
            return answer if answer[0] == 503 else None

        _, body = wait_until(unhealthy, 4 * lease, "/healthz 503 after the database was cut")
        assert "database" in body
        assert time.monotonic() - cut_at >= lease * 0.9  # not before a lease period
        assert proxy.dropped >= 1  # it kept trying
        assert supervisor.running

        proxy.restore()
        wait_until(lambda: healthz(port)[0] == 200, 35, "/healthz 200 after restore")
        assert healthz(port) == (200, "ok\n")
        second = launcher.enqueue("ok")
        launcher.wait_status(second, Status.COMPLETED)
        errors = scrape(port).value("supervisor_db_errors_total")
        assert errors is not None and errors >= 1


# ---------------------------------------------------------------------------- 5. the server itself


def test_metrics_server_binds_loopback_by_default_and_404s_unknown_paths(
    sqlite_launcher: Launcher,
) -> None:
    launcher = sqlite_launcher
    launcher.handler("ok", RETURNS)
    port = free_port()
    supervisor = launcher.start_ready(*metrics_args(port), workers=1)
    wait_metrics(port, supervisor)

    assert listening(supervisor.pid) == [("127.0.0.1", port)]
    for path in ("/nope", "/metrics/extra", "/healthz/x"):
        status, _, body = http_get(port, path)
        assert status == 404, path
        assert "not found" in body
    assert healthz(port) == (200, "ok\n")
    assert scrape(port).value("supervisor_workers") == 1


def test_metrics_port_zero_serves_nothing(sqlite_launcher: Launcher, tmp_path: Path) -> None:
    launcher = sqlite_launcher
    launcher.handler("ok", RETURNS)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    supervisor = launcher.start_ready(
        "--metrics-port", "0", workers=2, env={"TMPDIR": str(scratch)}
    )
    task = launcher.enqueue("ok")
    launcher.wait_status(task, Status.COMPLETED)

    assert listening(supervisor.pid) == []
    assert not list(scratch.glob("supervisor-metrics-*"))
    for child in supervisor.children():
        assert "PROMETHEUS_MULTIPROC_DIR" not in child.environ()
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(30) == 0


def test_own_multiprocess_directory_is_removed_after_a_drain(
    sqlite_launcher: Launcher, tmp_path: Path
) -> None:
    launcher = sqlite_launcher
    launcher.handler("ok", RETURNS)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    supervisor = launcher.start_ready(*metrics_args(port), workers=2, env={"TMPDIR": str(scratch)})
    wait_metrics(port, supervisor)
    task = launcher.enqueue("ok")
    launcher.wait_status(task, Status.COMPLETED)
    created = list(scratch.glob("supervisor-metrics-*"))
    assert len(created) == 1, created
    assert list(created[0].glob("*.db"))
    for child in supervisor.children():
        assert child.environ().get("PROMETHEUS_MULTIPROC_DIR") == str(created[0])

    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(30) == 0
    assert not created[0].exists()


def test_stale_files_in_an_operators_directory_are_wiped_at_start(
    sqlite_launcher: Launcher, tmp_path: Path
) -> None:
    launcher = sqlite_launcher
    launcher.handler("ok", RETURNS)
    directory = tmp_path / "prometheus-multiproc"
    directory.mkdir()
    stale = directory / "counter_999999.db"
    stale.write_bytes(b"left over by a previous run")
    port = free_port()
    supervisor = launcher.start_ready(
        *metrics_args(port), workers=1, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    )
    wait_metrics(port, supervisor)
    assert not stale.exists()
    # The loop publishes its gauges at the end of each turn: the server may answer before that.
    wait_scrape(port, lambda current: current.value("supervisor_workers") == 1)
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(30) == 0
    assert directory.is_dir()
