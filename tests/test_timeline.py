"""vmm.timeline: this process's start on CLOCK_MONOTONIC, from /proc/self/stat."""
import os
import subprocess
import sys
import time

import pytest

from vmm import timeline

TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def test_starttime_field_survives_a_hostile_command_name():
    # comm may hold spaces and parentheses; field 22 is counted from the last ')'.
    fields = [str(n) for n in range(3, 53)]  # field n holds the number n
    stat = b"1234 (a) b (c)) " + " ".join(fields).encode()
    assert timeline._starttime_ticks(stat) == 22


def test_a_child_started_after_now_says_so():
    before = time.monotonic_ns()
    out = subprocess.run([sys.executable, "-c",
                          "import time; from vmm.timeline import process_start_ns as p; "
                          "print(p(), time.monotonic_ns())"],
                         capture_output=True, text=True, check=True).stdout
    start, child_now = map(int, out.split())
    # The kernel truncates to a clock tick; allow that and a little conversion jitter.
    assert before - TICK_NS - 1_000_000 <= start <= child_now, (before, start, child_now)


def test_agrees_with_psutil():
    """A coarse cross-check against an independent reading (what this module replaced):
    psutil adds the same starttime to /proc/stat's btime, which is whole seconds of wall
    clock, so it is off by up to a second."""
    psutil = pytest.importorskip("psutil")
    wall_age = time.time() - psutil.Process().create_time()
    via_psutil = time.monotonic_ns() - int(wall_age * 1e9)
    assert abs(timeline.process_start_ns() - via_psutil) <= 1_000_000_000 + 2 * TICK_NS


def test_falls_back_when_proc_is_unreadable(monkeypatch):
    monkeypatch.setattr(timeline, "_cached", None)

    def no_proc():
        raise OSError("no /proc")
    monkeypatch.setattr(timeline, "_from_proc", no_proc)
    monkeypatch.setattr(timeline, "_from_psutil", lambda: 42)
    assert timeline.process_start_ns() == 42


def test_phases_come_in_boot_order_unset_ones_dropped():
    got = timeline.ordered({"exit": 9, "boot_timer": 0, "vm_created": 3, "process_start": 1,
                            "first_console": 5, "something_new": 7})
    assert list(got) == ["process_start", "vm_created", "first_console", "exit", "something_new"]
