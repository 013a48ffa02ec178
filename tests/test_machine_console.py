"""A Machine whose guest floods its console (tests/support/flood_engine.py: hundreds of MiB,
then a kernel panic): memory and the console file stay bounded, the panic is still seen,
and the console's consumers (Machine.console, a callable, a path, an fd) get what the
docs promise (vmm/console_limits.py). Bytes kept are measured, not time."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from support.flood_engine import AFTER, PANIC, READ, FloodEngine, flood_lines, flooding_machine
from vmm.console_limits import ConsoleLimits

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIB = 1 << 20
MARKER = re.compile(rb"\n\[vmm: (\d+) bytes dropped: [^\]]*\]\n")


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    """Any kernel Machine() accepts: the flood engine never runs it."""
    sys.path.insert(0, str(ROOT / "guest" / "tests"))
    try:
        import build as guest_build
    finally:
        sys.path.pop(0)
    if guest_build.toolchain_missing():
        pytest.skip(guest_build.toolchain_missing())
    return guest_build.build_guest("hello", tmp_path_factory.mktemp("console"))


def test_a_256_mib_flood_keeps_memory_and_disk_bounded_and_the_panic_seen(hello, tmp_path):
    # A fresh process, so that its peak RSS is this flood's alone.
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "flood_engine.py"),
                        str(hello), str(tmp_path), "256"],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    limits = ConsoleLimits()
    written = 256 * MIB + len(b"\n" + PANIC + b"\n" + AFTER)
    assert got["stats"]["written"] == written
    assert got["stats"]["held"] <= 2 * limits.tail_bytes + READ
    assert got["console_len"] == limits.tail_bytes and got["console_ends_with_panic"]
    # The panic after the flood still turns the reset into an error naming it.
    assert got["kind"] == "error" and "Kernel panic - not syncing" in got["message"], got
    assert set(got["files"]) <= {"console.log", "console.log.1"}
    assert sum(got["files"].values()) <= 2 * limits.file_bytes, got["files"]
    assert got["stats"]["dropped"] > 200 * MIB
    # Keeping the flood would take > 256 MiB; Python, vmm and the bounded console take ~40.
    assert got["peak_rss_kib"] < 128 * 1024, f"peak RSS {got['peak_rss_kib']} KiB for a 256 MiB flood"
    text = (tmp_path / "console.log").read_bytes()
    assert text.endswith(PANIC + b"\n" + AFTER)
    assert MARKER.search(text)


def test_a_callable_gets_every_byte_and_the_tail_is_the_last_mib(hello, monkeypatch):
    monkeypatch.setattr(FloodEngine, "flood_bytes", 32 * MIB)
    seen = [0, b""]

    def on_console(data):
        seen[0] += len(data)
        seen[1] = (seen[1] + data)[-64:]
        m.console  # a callback may read the console: no deadlock

    m = flooding_machine(monkeypatch, hello, console=on_console)
    with m:
        m.start()
        status = m.wait(120)
    assert status is not None and status.kind == "error", status
    total = 32 * MIB + len(b"\n" + PANIC + b"\n" + AFTER)
    assert seen[0] == total and seen[1] == (PANIC + b"\n" + AFTER)[-64:]
    assert m.console_stats == {"written": total, "held": m.console_stats["held"], "dropped": 0}
    assert m.console.endswith(AFTER) and len(m.console) == MIB
    start = m.console.index(b"\n") + 1      # the tail starts mid-line: the next line is whole
    assert re.match(rb"flood \d{10} x{40}\n", m.console[start:])


def test_an_fd_is_rate_limited_and_told_what_was_dropped(hello, tmp_path, monkeypatch):
    monkeypatch.setattr(FloodEngine, "flood_bytes", 64 * MIB)
    limits = ConsoleLimits(tail_bytes=64 << 10, burst_bytes=128 << 10, rate_bytes=1,
                           held_bytes=8 << 10)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        m = flooding_machine(monkeypatch, hello, console=fd, console_limits=limits)
        with m:
            m.start()
            assert m.wait(120) is not None
    finally:
        os.close(fd)
    out = (tmp_path / "out").read_bytes()
    (n,) = MARKER.findall(out)               # one burst, one gap, the held end
    kept = len(MARKER.sub(b"", out))
    assert kept <= limits.burst_bytes + limits.held_bytes + 64  # + a second's rate, at most
    assert int(n) + kept == m.console_stats["written"] == 64 * MIB + len(b"\n" + PANIC + b"\n" + AFTER)
    assert out.startswith(flood_lines(0)) and out.endswith(PANIC + b"\n" + AFTER)
    assert len(m.console) == 64 << 10


def test_a_small_console_is_whole_everywhere(hello, tmp_path, monkeypatch):
    monkeypatch.setattr(FloodEngine, "flood_bytes", 4 * READ)
    path = tmp_path / "console.log"
    m = flooding_machine(monkeypatch, hello, console=path)
    with m:
        m.start()
        m.wait(60)
    whole = b"".join(flood_lines(i) for i in range(4)) + b"\n" + PANIC + b"\n" + AFTER
    assert m.console == whole
    assert path.read_bytes() == whole
    assert m.console_stats == {"written": len(whole), "held": len(whole), "dropped": 0}


def test_console_limits_must_be_console_limits(hello, monkeypatch):
    from vmm.errors import ConfigError
    with pytest.raises(ConfigError, match="console_limits"):
        flooding_machine(monkeypatch, hello, console_limits={"tail_bytes": 1})
