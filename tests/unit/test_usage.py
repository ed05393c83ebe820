"""An attempt's figures: the child's meter, the parent's reads at kills and deaths, the wire.

The meter and the parent's live read are exercised on real processes (this
one, and subprocesses that burn CPU or touch memory), since what they read
is the kernel's; the arithmetic around them and the protocol's checks are
plain functions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from supervisor.protocol import DoneMessage, ErrorMessage, ProtocolError, ReadyMessage, decode
from supervisor.protocol import encode as encode_message
from supervisor.usage import (
    MAX_RSS_BYTES,
    AttemptMeter,
    Usage,
    describe,
    exit_usage,
    measure_live,
    read_hwm_bytes,
    since,
)

MIB = 1024 * 1024


def burn(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def touch(mib: int) -> bytearray:
    held = bytearray(mib * MIB)
    held[::4096] = b"\x01" * len(range(0, len(held), 4096))
    return held


# ------------------------------------------------------------------ the wire


@pytest.mark.parametrize(
    "message",
    [
        ReadyMessage(pid=1, cpu_total_s=0.25),
        DoneMessage(id=7, cpu_s=1.5, peak_rss_bytes=300 * MIB, cpu_total_s=2.0),
        DoneMessage(id=7, cpu_s=0, peak_rss_bytes=MAX_RSS_BYTES, cpu_total_s=0),
        DoneMessage(id=7),  # a child that could not measure says null
        ErrorMessage(
            id=7,
            message="m",
            traceback="t",
            permanent=False,
            cpu_s=0.5,
            peak_rss_bytes=None,
            cpu_total_s=9.0,
        ),
    ],
    ids=repr,
)
def test_figures_round_trip(message: ReadyMessage | DoneMessage | ErrorMessage) -> None:
    assert decode(encode_message(message)[:-1]) == message


@pytest.mark.parametrize(
    "figures",
    [
        '"cpu_s": -0.5, "peak_rss_bytes": 1, "cpu_total_s": 1',
        '"cpu_s": NaN, "peak_rss_bytes": 1, "cpu_total_s": 1',
        '"cpu_s": Infinity, "peak_rss_bytes": 1, "cpu_total_s": 1',
        '"cpu_s": "1.0", "peak_rss_bytes": 1, "cpu_total_s": 1',
        '"cpu_s": true, "peak_rss_bytes": 1, "cpu_total_s": 1',
        '"cpu_s": 1, "peak_rss_bytes": 1.5, "cpu_total_s": 1',
        '"cpu_s": 1, "peak_rss_bytes": -1, "cpu_total_s": 1',
        '"cpu_s": 1, "peak_rss_bytes": 9223372036854775808, "cpu_total_s": 1',
        '"cpu_s": 1, "peak_rss_bytes": false, "cpu_total_s": 1',
        '"cpu_s": 1, "peak_rss_bytes": 1, "cpu_total_s": -1e-9',
        '"cpu_s": 1, "peak_rss_bytes": 1, "cpu_total_s": [1]',
        # An int no float can hold: float() of it raises OverflowError in the parent's loop.
        '"cpu_s": 1' + "0" * 400 + ', "peak_rss_bytes": 1, "cpu_total_s": 1',
        '"cpu_s": 1, "peak_rss_bytes": 1, "cpu_total_s": 1' + "0" * 400,
        '"cpu_s": 1e10, "peak_rss_bytes": 1, "cpu_total_s": 1',
    ],
)
def test_garbage_figures_make_the_message_malformed(figures: str) -> None:
    """The parent would write them into the row; a figure that is not one is a broken child."""
    with pytest.raises(ProtocolError):
        decode(b'{"kind": "done", "id": 1, ' + figures.encode() + b"}")


def test_a_ready_message_with_a_negative_total_is_malformed() -> None:
    with pytest.raises(ProtocolError):
        decode(b'{"kind": "ready", "pid": 1, "cpu_total_s": -1}')


def test_a_kind_that_is_not_a_string_is_malformed_not_a_crash() -> None:
    with pytest.raises(ProtocolError):
        decode(b'{"kind": ["done"], "id": 1}')


# ------------------------------------------------------------------ arithmetic and text


def test_since_is_the_cpu_spent_after_the_start() -> None:
    assert since(3.5, 1.25) == 2.25
    assert since(1.0, 1.5) == 0.0  # never negative (a clock's rounding)
    assert since(None, 1.0) is None and since(1.0, None) is None


def test_exit_usage_counts_from_the_attempts_start() -> None:
    assert exit_usage(5.0, 64 * MIB, 1.5) == Usage(cpu_s=3.5, peak_rss_bytes=64 * MIB)
    assert exit_usage(None, 64 * MIB, 1.5) == Usage(cpu_s=None, peak_rss_bytes=64 * MIB)
    assert exit_usage(5.0, 64 * MIB, None) == Usage(cpu_s=None, peak_rss_bytes=64 * MIB)


def test_describe_in_human_units() -> None:
    text = describe(1.0213, int(312.4 * MIB), 1.5)
    assert text == "cpu 1.02 s, peak RSS 312.4 MiB, wall 1.50 s"
    assert describe(None, None, 0.25) == "wall 0.25 s"
    assert describe(None, None, None) is None


def test_read_hwm_bytes() -> None:
    status = b"Name:\tpython\nVmPeak:\t  9 kB\nVmHWM:\t   13552 kB\nVmRSS:\t 1 kB\n"
    assert read_hwm_bytes(status) == 13552 * 1024
    assert read_hwm_bytes(b"VmHWM:\t 7 kB") == 7 * 1024  # the last line, without a newline
    assert read_hwm_bytes(b"Name:\tpython\n") is None
    assert read_hwm_bytes(b"VmHWM:\n") is None
    assert read_hwm_bytes(b"VmHWM:\tlots kB\n") is None


# ------------------------------------------------------------------ the child's meter


def close_all(meter: AttemptMeter) -> None:
    for fd in (meter._clear_refs, meter._status, meter._statm):
        if fd is not None:
            os.close(fd)


@pytest.fixture
def meter() -> Iterator[AttemptMeter]:
    opened = AttemptMeter.open()
    yield opened
    close_all(opened)


def test_the_meter_measures_cpu_and_the_attempts_own_peak(meter: AttemptMeter) -> None:
    start = meter.start()
    assert not meter._stale
    burn(0.2)
    held = touch(64)
    used = meter.finish()
    del held
    assert 0.2 <= used.cpu_s < 0.5
    assert used.cpu_total_s >= start + used.cpu_s - 1e-6
    assert used.peak_rss_bytes is not None and used.peak_rss_bytes >= 64 * MIB

    meter.start()  # the next attempt starts from what is resident now, not the earlier peak
    small = meter.finish()
    assert small.peak_rss_bytes is not None
    assert small.peak_rss_bytes < used.peak_rss_bytes - 32 * MIB


def test_the_meter_counts_a_waited_for_subprocess(meter: AttemptMeter) -> None:
    """CPU and peak of the tree: a subprocess larger than this process sets the peak."""
    meter.start()
    code = (
        "import time\n"
        "held = bytearray(400 * 1024 * 1024)\n"
        "held[::4096] = b'\\x01' * len(range(0, len(held), 4096))\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.2:\n"
        "    pass\n"
    )
    subprocess.run([sys.executable, "-S", "-c", code], check=True)
    used = meter.finish()
    assert used.cpu_s >= 0.2
    assert used.peak_rss_bytes is not None and used.peak_rss_bytes >= 400 * MIB


def fake_file(text: bytes) -> int:
    """A descriptor on a file holding ``text``, standing in for a /proc file."""
    fd, path = tempfile.mkstemp()
    os.write(fd, text)
    os.unlink(path)
    return fd


def test_a_stale_maximum_is_detected_and_the_peak_read_from_the_status_file() -> None:
    """ru_maxrss above the resident size after the reset: a peak kept from an exited thread.
    Then an attempt that does not go past it reads its own mark (VmHWM) instead."""
    meter = AttemptMeter.open()
    assert meter._statm is not None
    os.close(meter._statm)
    meter._statm = fake_file(b"100 1 1 1 0 1 0\n")  # one resident page: ru_maxrss looks stale
    try:
        meter.start()
        assert meter._stale
        used = meter.finish()
    finally:
        close_all(meter)
    assert used.peak_rss_bytes is not None and used.peak_rss_bytes > MIB  # the real VmHWM


def test_a_stale_maximum_without_a_readable_status_means_no_peak() -> None:
    for status in (None, b"Name:\tnothing here\n", "unreadable"):
        meter = AttemptMeter.open()
        assert meter._status is not None and meter._statm is not None
        os.close(meter._status)
        os.close(meter._statm)
        meter._statm = None  # no statm: the maximum cannot be trusted
        if status is None:
            meter._status = None
        elif status == "unreadable":
            meter._status = os.open("/dev/null", os.O_WRONLY)  # pread fails
        else:
            assert isinstance(status, bytes)
            meter._status = fake_file(status)
        try:
            meter.start()
            assert meter._stale
            assert meter.finish().peak_rss_bytes is None, status
        finally:
            close_all(meter)


def test_a_statm_that_does_not_parse_counts_as_stale() -> None:
    meter = AttemptMeter.open()
    assert meter._statm is not None
    os.close(meter._statm)
    meter._statm = fake_file(b"garbage\n")
    try:
        meter.start()
        assert meter._stale
        assert meter.finish().peak_rss_bytes is not None  # from VmHWM
    finally:
        close_all(meter)


def test_without_clear_refs_the_meter_reports_no_peak() -> None:
    """Only an attempt's own peak is reported, never the child's lifetime one."""
    meter = AttemptMeter.open()
    assert meter._clear_refs is not None
    os.close(meter._clear_refs)
    meter._clear_refs = None
    try:
        meter.start()
        used = meter.finish()
    finally:
        close_all(meter)
    assert used.peak_rss_bytes is None and used.cpu_s >= 0


def test_a_clear_refs_that_refuses_the_reset_means_no_peak() -> None:
    meter = AttemptMeter.open()
    assert meter._clear_refs is not None
    os.close(meter._clear_refs)
    meter._clear_refs = os.open("/proc/self/status", os.O_RDONLY)  # a write to it fails
    try:
        meter.start()
        assert meter.finish().peak_rss_bytes is None
    finally:
        close_all(meter)


def test_opening_where_there_is_no_proc_gives_a_meter_without_a_peak() -> None:
    meter = AttemptMeter.open(proc="/nonexistent/proc")
    assert (meter._clear_refs, meter._status, meter._statm) == (None, None, None)
    meter.start()
    assert meter.finish().peak_rss_bytes is None


# ------------------------------------------------------------------ the parent's live read


def test_measure_live_reads_a_running_tree_against_the_attempts_start() -> None:
    """A child that burned CPU and touched memory, still running (as at a kill)."""
    ready_r, ready_w = os.pipe()
    code = (
        "import os, sys, time\n"
        "held = bytearray(96 * 1024 * 1024)\n"
        "held[::4096] = b'\\x01' * len(range(0, len(held), 4096))\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.3:\n"
        "    pass\n"
        "os.write(int(sys.argv[1]), b'x')\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-S", "-c", code, str(ready_w)], pass_fds=(ready_w,))
    try:
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        from_zero = measure_live(child.pid, 0.0)
        later = measure_live(child.pid, 0.25)
        unknown_start = measure_live(child.pid, None)
    finally:
        child.kill()
        child.wait()
        os.close(ready_r)
    assert from_zero.cpu_s is not None and 0.3 <= from_zero.cpu_s < 1.0
    assert later.cpu_s is not None
    assert later.cpu_s == pytest.approx(from_zero.cpu_s - 0.25, abs=0.05)
    assert unknown_start.cpu_s is None
    assert from_zero.peak_rss_bytes is not None and from_zero.peak_rss_bytes >= 96 * MIB


def test_measure_live_adds_the_descendants_still_running() -> None:
    """At a kill the handler's subprocesses were never waited for: their CPU is added, and
    their peak counts if it is the largest."""
    ready_r, ready_w = os.pipe()
    grandchild = (
        "import os, sys, time\n"
        "held = bytearray(128 * 1024 * 1024)\n"
        "held[::4096] = b'\\x01' * len(range(0, len(held), 4096))\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.3:\n"
        "    pass\n"
        "os.write(int(sys.argv[1]), b'x')\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-S', '-c', {grandchild!r}, sys.argv[1]],"
        " pass_fds=(int(sys.argv[1]),))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-S", "-c", parent, str(ready_w)], pass_fds=(ready_w,)
    )
    try:
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        used = measure_live(child.pid, 0.0)
        no_start = measure_live(child.pid, None)
    finally:
        import psutil

        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()
        os.close(ready_r)
    assert used.cpu_s is not None and used.cpu_s >= 0.3
    assert used.peak_rss_bytes is not None and used.peak_rss_bytes >= 128 * MIB
    assert no_start.cpu_s is None and no_start.peak_rss_bytes == used.peak_rss_bytes


def test_measure_live_of_a_process_that_is_gone_says_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    child.wait()
    assert measure_live(child.pid, 0.0) == Usage()


def test_measure_live_without_a_status_file_has_no_peak() -> None:
    assert measure_live(os.getpid(), 0.0, proc="/nonexistent/proc").peak_rss_bytes is None


def test_the_operators_task_page_shows_the_figures() -> None:
    from supervisor import web
    from supervisor.store.base import NewTask
    from supervisor.store.memory import ManualClock, MemoryStore

    store = MemoryStore(clock=ManualClock())
    task_id = store.enqueue(NewTask(type="t"))
    [claim] = store.claim("A", ["t"], 1, 60)
    assert store.complete(claim, Usage(cpu_s=1.0, peak_rss_bytes=300 * MIB, wall_s=1.5))
    row = store.get(task_id)
    assert row is not None
    page = web.task_body(row, None, with_options=False)
    assert "<td>usage</td><td>cpu 1.00 s, peak RSS 300.0 MiB, wall 1.50 s</td>" in page
