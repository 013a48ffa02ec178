"""The bounds on what a guest console costs the host (vmm/console_limits.py) and the
sandbox's console log built from them (vmm/sandbox/console.py): floods of hundreds of MiB
keep the bytes in memory and on disk bounded, the excess is counted in a marker line, and
the last thing the guest printed (a panic) survives. Sizes are measured, not timed: the
rate limit runs on a clock the test moves."""
import re

import pytest

from vmm.console_limits import (CappedFile, ConsoleLimits, ConsoleSink, ConsoleTail,
                                RateLimit, dropped_marker)
from vmm.errors import ConfigError
from vmm.sandbox.console import CONSOLE_TAIL_BYTES, ConsoleCopier, ConsoleLog

MIB = 1 << 20
CHUNK = 65536
MARKER = re.compile(rb"\n\[vmm: (\d+) bytes dropped: [^\]]*\]\n")
PANIC = b"[   99.0] Kernel panic - not syncing: Attempted to kill init!\n"


def chunk(i: int) -> bytes:
    line = b"line %010d " % i + b"y" * 50 + b"\n"
    return (line * (CHUNK // len(line) + 1))[:CHUNK]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_tail_keeps_the_last_bytes_and_holds_a_bounded_amount():
    tail = ConsoleTail(MIB)
    most = 0
    stream_end = b""
    for i in range(4096):               # 256 MiB
        data = chunk(i)
        tail.add(data)
        most = max(most, tail.held)
        stream_end = (stream_end + data)[-MIB:]
    assert tail.total == 256 * MIB
    assert tail.value() == stream_end
    assert most <= 2 * MIB + CHUNK, f"held {most} bytes for a 1 MiB tail"
    tail.add(b"x" * (3 * MIB))          # one write bigger than the tail: only its end is kept
    assert tail.value() == b"x" * MIB and tail.held == MIB


def test_under_the_burst_every_byte_passes_unchanged():
    out = bytearray()
    limit = RateLimit(out.extend, ConsoleLimits(), clock=Clock())
    for i in range(3):
        limit.write(chunk(i))
    limit.flush()
    assert bytes(out) == chunk(0) + chunk(1) + chunk(2)
    assert limit.dropped == 0


def test_a_flood_keeps_its_start_and_its_end_and_counts_the_middle():
    limits = ConsoleLimits(burst_bytes=256 << 10, rate_bytes=64 << 10, held_bytes=32 << 10)
    out = bytearray()
    limit = RateLimit(out.extend, limits, clock=Clock())   # the clock never moves
    stream = bytearray()
    for i in range(1600):               # 100 MiB
        data = chunk(i)
        stream += data if i < 8 or i >= 1590 else b""
        limit.write(data)
    limit.write(PANIC)
    total = 1600 * CHUNK + len(PANIC)
    assert len(out) == limits.burst_bytes          # nothing more until the budget returns
    limit.flush()
    dropped = total - limits.burst_bytes - limits.held_bytes
    assert limit.dropped == dropped
    end = (bytes(stream) + PANIC)[-limits.held_bytes:]
    assert bytes(out) == bytes(stream[:limits.burst_bytes]) + dropped_marker(dropped, limits.rate_bytes) + end
    assert out.endswith(PANIC)


def test_over_time_the_output_keeps_to_the_rate_and_accounts_for_every_byte():
    limits = ConsoleLimits(burst_bytes=256 << 10, rate_bytes=64 << 10, held_bytes=32 << 10)
    clock = Clock()
    out = bytearray()
    limit = RateLimit(out.extend, limits, clock=clock)
    start, total = clock.now, 0
    for i in range(3200):               # 200 MiB over 100 s: 2 MiB/s against 64 KiB/s
        clock.now += 1 / 32
        data = chunk(i)
        total += len(data)
        limit.write(data)
    limit.write(PANIC)
    total += len(PANIC)
    limit.flush()
    elapsed = clock.now - start
    markers = MARKER.findall(out)
    assert markers, "a flood must leave a counted marker"
    guest_bytes = len(MARKER.sub(b"", bytes(out)))
    assert guest_bytes + sum(int(n) for n in markers) == total
    assert limit.dropped == sum(int(n) for n in markers)
    budget = limits.burst_bytes + limits.rate_bytes * elapsed + limits.held_bytes
    assert guest_bytes <= budget, (guest_bytes, budget)
    assert out.endswith(PANIC)


def test_a_rate_of_none_passes_everything():
    out = bytearray()
    limit = RateLimit(out.extend, ConsoleLimits(rate_bytes=None), clock=Clock())
    for i in range(100):
        limit.write(chunk(i))
    assert len(out) == 100 * CHUNK and limit.dropped == 0


def test_the_capped_file_rotates_and_keeps_the_stream_end(tmp_path):
    path = tmp_path / "console.log"
    f = CappedFile(path, MIB)
    stream_end = b""
    sizes = [1, 4095, CHUNK, 3 * MIB + 17, 100_000]   # a write bigger than the cap is split
    for i in range(600):
        data = (b"%d:" % i) * (sizes[i % len(sizes)] // 2 + 1)
        data = data[:sizes[i % len(sizes)]]
        f.write(data)
        stream_end = (stream_end + data)[-2 * MIB:]
        assert path.stat().st_size <= MIB
    f.close()
    older = (tmp_path / "console.log.1").read_bytes()
    assert len(older) == MIB
    kept = older + path.read_bytes()
    assert stream_end.endswith(kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log", "console.log.1"]


def test_an_existing_file_over_the_cap_is_rotated_before_the_first_write(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"old" * MIB)
    f = CappedFile(path, MIB)
    f.write(b"new\n")
    f.close()
    assert path.read_bytes() == b"new\n"
    assert (tmp_path / "console.log.1").read_bytes() == b"old" * MIB


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1"])
def test_limits_must_be_positive_byte_counts(bad):
    with pytest.raises(ConfigError, match="tail_bytes"):
        ConsoleLimits(tail_bytes=bad)
    with pytest.raises(ConfigError, match="rate_bytes"):
        ConsoleLimits(rate_bytes=bad)


def test_a_sink_refuses_what_is_not_a_console_target():
    with pytest.raises(ConfigError, match="not float"):
        ConsoleSink(1.5, ConsoleLimits())


def test_a_flooded_sandbox_console_log_stays_bounded_and_ends_with_the_panic(tmp_path):
    path = tmp_path / "console.log"
    limits = ConsoleLimits()
    log = ConsoleLog(str(path), limits)
    most = 0
    for i in range(4096):               # 256 MiB, as fast as Python hands it over
        log.write(chunk(i))
        if i % 256 == 0:
            most = max(most, sum(p.stat().st_size for p in tmp_path.iterdir()))
    log.write(PANIC)
    log.close()
    log.write(b"after close\n")         # the VM's reader may still deliver: only the tail
    files = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert set(files) <= {"console.log", "console.log.1"}
    assert all(size <= limits.file_bytes for size in files.values()), files
    assert max(most, sum(files.values())) <= 2 * limits.file_bytes
    text = path.read_bytes()
    assert text.endswith(PANIC), text[-200:]
    dropped = [int(n) for n in MARKER.findall(text)]
    assert dropped and log.dropped >= sum(dropped) > 200 * MIB
    tail = log.tail()
    assert tail.endswith("after close\n") and PANIC.decode() in tail
    assert len(tail.encode()) <= CONSOLE_TAIL_BYTES


def test_console_log_keeps_small_output_whole(tmp_path):
    log = ConsoleLog(str(tmp_path / "c.log"))
    for i in range(5000):
        log.write(f"message {i}\n".encode())
    log.close()
    assert (tmp_path / "c.log").read_text().count("\n") == 5000
    assert log.dropped == 0


class Collect:
    def __init__(self):
        self.data = bytearray()

    def write(self, source, data):
        assert source == "system"
        self.data += data


def test_the_copier_follows_the_console_file_across_rotations(tmp_path):
    path = tmp_path / "console.log"
    log = ConsoleLog(str(path), ConsoleLimits(file_bytes=100_000, rate_bytes=None))
    sink = Collect()
    copier = ConsoleCopier(str(path), sink)
    stream = bytearray()
    for i in range(40):                 # 40 x 60 KB: a rotation every other round
        data = (b"round %d " % i) * 6000
        data = data[:60_000]
        log.write(data)
        stream += data
        copier.copy()
    log.write(PANIC)
    stream += PANIC
    log.close()
    copier.close()
    assert (tmp_path / "console.log.1").exists()
    assert bytes(sink.data) == bytes(stream)


def test_one_write_bigger_than_the_held_bytes_keeps_its_end():
    limits = ConsoleLimits(burst_bytes=1000, rate_bytes=100, held_bytes=500)
    out = bytearray()
    limit = RateLimit(out.extend, limits, clock=Clock())
    data = bytes(range(256)) * 40 + PANIC
    limit.write(data)
    limit.flush()
    dropped = len(data) - 1000 - 500
    assert bytes(out) == data[:1000] + dropped_marker(dropped, 100) + data[-500:]
    assert limit.dropped == dropped


def test_held_bytes_above_the_burst_are_still_released_when_the_bucket_is_full():
    limits = ConsoleLimits(burst_bytes=1000, rate_bytes=100, held_bytes=5000)
    clock = Clock()
    out = bytearray()
    limit = RateLimit(out.extend, limits, clock=clock)
    limit.write(b"a" * 3000)            # 1000 pass, 2000 held
    assert len(out) == 1000
    clock.now += 10                     # the bucket is full again
    limit.write(b"b")
    assert bytes(out) == b"a" * 3000 + b"b" and limit.dropped == 0
