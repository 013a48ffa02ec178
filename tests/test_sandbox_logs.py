"""Sandbox logs: the writer (vmm/sandbox/logs.py), the reader (vmm/sandbox/log_reader.py)
and `msb logs` (vmm/cli/logs.py).

Concurrency is tested with real processes appending the same log at once, since the
supervisor and each `msb exec` do exactly that."""
import json
import multiprocessing
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from datetime import datetime, timezone

import pytest

from vmm.sandbox.log_reader import LogQueryError, LogReader, parse_sources, parse_time
from vmm.sandbox.logs import CHUNK_CHARS, LOG_NAME, LogWriter, log_files

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def raw_lines(log_dir):
    """Every line of every log file, oldest file first."""
    out = []
    for p in log_files(log_dir):
        out.extend(p.read_bytes().splitlines())
    return out


def entries(log_dir):
    return [json.loads(line) for line in raw_lines(log_dir)]


def all_sources(log_dir, **kw):
    return LogReader(log_dir, parse_sources("all"), **kw)


# -- writer -------------------------------------------------------------------------------

def test_entry_shape(tmp_path):
    with LogWriter(tmp_path) as w:
        w.write("system", b"sandbox started\n")
        w.write("stdout", b"hello\n", "e1")
        w.write("stderr", b"oops\n", "e1")
    got = entries(tmp_path)
    assert [(e["s"], e["d"], e["id"]) for e in got] == [
        ("system", "sandbox started\n", None), ("stdout", "hello\n", "e1"),
        ("stderr", "oops\n", "e1")]
    assert all(set(e) == {"t", "s", "d", "id"} and STAMP.match(e["t"]) for e in got)
    with pytest.raises(ValueError, match="unknown log source"):
        LogWriter(tmp_path).write("bogus", b"x")


def test_utf8_split_across_writes_kept_whole_and_invalid_bytes_replaced(tmp_path):
    euro = "€".encode()
    with LogWriter(tmp_path) as w:
        w.write("stdout", b"price " + euro[:2], "e1")
        w.write("stderr", b"other stream\n", "e1")     # does not disturb e1's stdout
        w.write("stdout", euro[2:] + b" \xff\xfe end\n", "e1")
        w.write("stdout", b"dangling " + euro[:1], "e2")
    got = entries(tmp_path)
    assert "".join(e["d"] for e in got if e["id"] == "e1" and e["s"] == "stdout") == \
        "price € \ufffd\ufffd end\n"
    # close() flushes the held-back incomplete sequence of e2 as U+FFFD
    assert "".join(e["d"] for e in got if e["id"] == "e2") == "dangling \ufffd"


def test_big_chunk_split_into_bounded_lines(tmp_path):
    # the worst case for a line's size: control characters, 6 bytes each in JSON
    text = "".join(chr(0x20 + i % 90) for i in range(5 * CHUNK_CHARS + 7)) + "\x01" * (2 * CHUNK_CHARS)
    with LogWriter(tmp_path) as w:
        w.write("stdout", text.encode())
    lines = raw_lines(tmp_path)
    assert len(lines) == 8
    assert max(len(line) for line in lines) < 32 * 1024
    assert "".join(json.loads(line)["d"] for line in lines) == text


def _writer_process(log_dir, name, count, max_bytes, keep):
    w = LogWriter(log_dir, max_bytes=max_bytes, keep=keep)
    for i in range(count):
        # Sizes vary, some lines big, some split into several entries.
        pad = "x" * ((i * 37) % 300) if i % 50 else "y" * (CHUNK_CHARS + 100)
        w.write("stdout", f"{name} {i} {pad}\n".encode(), name)
    w.close()


def _run_writers(log_dir, n_procs, count, max_bytes, keep):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer_process, args=(log_dir, f"w{p}", count, max_bytes, keep))
             for p in range(n_procs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def _sequences(log_dir):
    """Per writer, the numbers of its whole messages in file order (a message split into
    several entries is joined back first); every line must parse."""
    pieces = {}
    for line in raw_lines(log_dir):
        e = json.loads(line)          # raises on a corrupt or interleaved line
        pieces.setdefault(e["id"], []).append(e["d"])
    seqs = {}
    for writer, ds in pieces.items():
        text = "".join(ds)
        messages = text.split("\n")
        if messages and not messages[0].startswith(writer + " "):
            messages = messages[1:]   # the start of a split message fell off the end
        seqs[writer] = [int(m.split(" ")[1]) for m in messages if m]
    return seqs


def test_concurrent_writers_never_corrupt_lines(tmp_path):
    _run_writers(tmp_path, n_procs=4, count=400, max_bytes=1 << 30, keep=3)
    assert log_files(tmp_path) == [tmp_path / LOG_NAME]
    seqs = _sequences(tmp_path)
    assert seqs == {f"w{p}": list(range(400)) for p in range(4)}


def test_rotation_under_concurrent_writers_keeps_each_line_once(tmp_path):
    # keep large enough that nothing falls off: every line exactly once, in order.
    _run_writers(tmp_path, n_procs=4, count=400, max_bytes=64 * 1024, keep=1000)
    assert len(log_files(tmp_path)) > 5
    assert _sequences(tmp_path) == {f"w{p}": list(range(400)) for p in range(4)}
    for p in log_files(tmp_path):
        # about max_bytes: concurrent appends may each pass the check once
        assert p.stat().st_size <= 64 * 1024 + 4 * 32 * 1024


def test_rotation_drops_only_the_oldest(tmp_path):
    _run_writers(tmp_path, n_procs=3, count=400, max_bytes=32 * 1024, keep=3)
    files = log_files(tmp_path)
    assert [p.name for p in files] == [LOG_NAME + ".2", LOG_NAME + ".1", LOG_NAME]
    for writer, seq in _sequences(tmp_path).items():
        # what is left of each writer is its newest messages, each once, in order
        assert seq == list(range(seq[0], 400)), writer


def _fill_disk_child(log_dir, q):
    # RLIMIT_FSIZE stands in for a full disk: writes past it fail with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    w = LogWriter(log_dir)
    w.write("stdout", b"before\n")
    resource.setrlimit(resource.RLIMIT_FSIZE, (400, hard))
    for i in range(20):
        w.write("stdout", f"lost {i} {'z' * 40}\n".encode())
    dropped = w.dropped
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    w.write("stdout", b"after\n")
    w.close()
    q.put(dropped)


def test_full_disk_drops_counts_and_says_so(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fill_disk_child, args=(tmp_path, q))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    dropped = q.get(timeout=5)
    assert 10 <= dropped <= 20
    got = list(all_sources(tmp_path).entries())      # the torn line is skipped
    texts = [e["d"] for e in got]
    assert texts[0] == "before\n" and texts[-1] == "after\n"
    assert texts[-2] == f"[msb] {dropped} log entries were dropped (the log could not be written)\n"
    assert got[-2]["s"] == "system"


# -- reader -------------------------------------------------------------------------------

def write_entries(log_dir, rows, name=LOG_NAME):
    """Log lines with chosen times: rows of (t, s, d, id)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / name, "a") as f:
        for t, s, d, i in rows:
            f.write(json.dumps({"t": t, "s": s, "d": d, "id": i}) + "\n")


ROWS = [("2025-11-29T10:00:00.000000Z", "system", "started", None),
        ("2025-11-29T10:01:00.000000Z", "stdout", "a\n", "e1"),
        ("2025-11-29T10:02:00.000000Z", "stderr", "b\n", "e1"),
        ("2025-11-29T10:03:00.000000Z", "stdout", "c\n", "e2"),
        ("2025-11-29T10:04:00.000000Z", "system", "stopped", None)]


def test_filters_sources_since_until_tail(tmp_path):
    write_entries(tmp_path, ROWS[:2], LOG_NAME + ".2")
    write_entries(tmp_path, ROWS[2:3], LOG_NAME + ".1")
    with open(tmp_path / (LOG_NAME + ".1"), "a") as f:
        f.write("not json\n{\"t\": 1}\n")                # skipped, not fatal
    write_entries(tmp_path, ROWS[3:])

    def ds(**kw):
        tail = kw.pop("tail", None)
        src = parse_sources(kw.pop("source", "output"))
        return [e["d"] for e in LogReader(tmp_path, src, **kw).entries(tail)]

    assert ds() == ["a\n", "b\n", "c\n"]
    assert ds(source="all") == ["started", "a\n", "b\n", "c\n", "stopped"]
    assert ds(source="system") == ["started", "stopped"]
    assert ds(source="stderr,system") == ["started", "b\n", "stopped"]
    assert ds(since=parse_time("2025-11-29T10:02:00Z")) == ["b\n", "c\n"]
    assert ds(until=parse_time("2025-11-29T11:02:00+01:00")) == ["a\n", "b\n"]
    assert ds(source="all", tail=2) == ["c\n", "stopped"]
    assert ds(tail=10) == ["a\n", "b\n", "c\n"]
    assert ds(tail=0) == []
    assert ds(source="all", since=parse_time("2025-11-29T10:01:00Z"), tail=2) == ["c\n", "stopped"]
    assert list(LogReader(tmp_path / "missing").entries()) == []


def test_parse_time_and_sources():
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_time("2026-11-29T10:00:00Z") == "2026-11-29T10:00:00.000000Z"
    assert parse_time("2026-11-29T10:00:00.5Z") == "2026-11-29T10:00:00.500000Z"
    assert parse_time("2026-11-29T10:00:00") == "2026-11-29T10:00:00.000000Z"
    assert parse_time("2026-11-29T12:00:00+02:00") == "2026-11-29T10:00:00.000000Z"
    assert parse_time("2026-11-29") == "2026-11-29T00:00:00.000000Z"
    assert parse_time("10m", now) == "2026-11-29T11:50:00.000000Z"
    assert parse_time("1h30m", now) == "2026-11-29T10:30:00.000000Z"
    assert parse_time("2d", now) == "2026-11-27T12:00:00.000000Z"
    assert parse_time("90", now) == "2026-11-29T11:58:30.000000Z"
    for bad in ("", "yesterday", "10x", "-5m", "2026-13-01"):
        with pytest.raises(LogQueryError, match="bad time"):
            parse_time(bad)
    assert parse_sources("output") == {"stdout", "stderr"}
    assert parse_sources("all") == {"stdout", "stderr", "system"}
    with pytest.raises(LogQueryError, match="unknown log source 'out'"):
        parse_sources("out")


def test_tail_reads_from_the_end_in_bounded_memory(tmp_path):
    line = (json.dumps({"t": "2025-11-29T10:00:00.000000Z", "s": "stdout",
                        "d": "x" * 900 + "\n", "id": None}) + "\n").encode()
    n = (48 << 20) // len(line)          # a 48 MiB file
    with open(tmp_path / LOG_NAME, "wb") as f:
        block = line * 1024
        for _ in range(n // 1024):
            f.write(block)
        f.write(json.dumps({"t": "2025-11-29T10:00:01.000000Z", "s": "stdout",
                            "d": "last\n", "id": None}).encode() + b"\n")
    tracemalloc.start()
    try:
        got = list(LogReader(tmp_path).entries(tail=5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e["d"] for e in got][-1] == "last\n" and len(got) == 5
    assert peak < 1 << 20, peak


def test_torn_and_oversized_lines_are_skipped(tmp_path):
    write_entries(tmp_path, ROWS[1:2])
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(b"z" * (3 << 20) + b"\n")                # no writer makes such a line
    write_entries(tmp_path, ROWS[3:4])
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(b'{"t":"2025-11-29T10:05:00.000000Z","s":"stdout","d":"half')   # mid-write
    assert [e["d"] for e in LogReader(tmp_path).entries()] == ["a\n", "c\n"]
    assert [e["d"] for e in LogReader(tmp_path).entries(tail=5)] == ["a\n", "c\n"]


def test_follow_across_rotation(tmp_path):
    w = LogWriter(tmp_path, max_bytes=4096, keep=50)
    w.write("stdout", b"old\n")
    total = 600
    done = threading.Event()

    def produce():
        time.sleep(0.2)
        for i in range(total):
            w.write("stdout", f"line {i}\n".encode())
            if i % 50 == 0:
                time.sleep(0.05)        # several rotations between some polls, none in others
        done.set()

    got = []
    deadline = time.monotonic() + 30
    t = threading.Thread(target=produce)
    t.start()
    for e in LogReader(tmp_path).follow(tail=1, poll=0.02,
                                        stop=lambda: done.is_set() or time.monotonic() > deadline):
        got.append(e["d"])
    t.join()
    w.close()
    assert len(log_files(tmp_path)) > 5
    assert got == ["old\n"] + [f"line {i}\n" for i in range(total)]


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path):
    log_dir = tmp_path / "logs"
    stop = threading.Event()

    def produce():
        time.sleep(0.2)
        with LogWriter(log_dir, max_bytes=200, keep=10) as w:
            for i in range(10):
                w.write("stdout", f"n{i}\n".encode())
        time.sleep(0.2)
        stop.set()

    t = threading.Thread(target=produce)
    t.start()
    got = [e["d"] for e in LogReader(log_dir).follow(poll=0.02, stop=stop.is_set)]
    t.join()
    assert got == [f"n{i}\n" for i in range(10)]


# -- msb logs -----------------------------------------------------------------------------

def msb(home, *args, **kw):
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True,
                          env=dict(os.environ, MSB_HOME=str(home)), timeout=60, **kw)


@pytest.fixture
def home(tmp_path):
    logs = tmp_path / "sandboxes" / "demo" / "logs"
    write_entries(logs, ROWS)
    with open(logs / LOG_NAME, "ab") as f:
        f.write((json.dumps({"t": "2025-11-29T10:05:00.000000Z", "s": "stdout",
                             "d": "part", "id": "e3"}) + "\n").encode())
        f.write((json.dumps({"t": "2025-11-29T10:05:01.000000Z", "s": "stdout",
                             "d": "ial\nnext \u20ac\n", "id": "e3"}, ensure_ascii=False)
                 + "\n").encode())
    (tmp_path / "sandboxes" / "stopped-no-logs").mkdir()
    return tmp_path


def test_cli_default_prints_output_as_written(home):
    p = msb(home, "logs", "demo")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "a\nb\nc\npartial\nnext €\n".encode()
    assert p.stderr == b""


def test_cli_timestamps_sources_tail_json(home):
    p = msb(home, "logs", "demo", "--timestamps", "--source", "all")
    assert p.stdout.decode().splitlines() == [
        "2025-11-29T10:00:00.000000Z started",
        "2025-11-29T10:01:00.000000Z a",
        "2025-11-29T10:02:00.000000Z b",
        "2025-11-29T10:03:00.000000Z c",
        "2025-11-29T10:04:00.000000Z stopped",
        "2025-11-29T10:05:00.000000Z partial",
        "2025-11-29T10:05:01.000000Z next €"]
    p = msb(home, "logs", "demo", "--source", "system")
    assert p.stdout == b"started\nstopped\n"
    p = msb(home, "logs", "demo", "--tail", "1", "--json")
    assert [json.loads(line) for line in p.stdout.splitlines()] == [
        {"t": "2025-11-29T10:05:01.000000Z", "s": "stdout", "d": "ial\nnext €\n", "id": "e3"}]
    p = msb(home, "logs", "demo", "--since", "2025-11-29T10:02:00Z",
            "--until", "2025-11-29T10:03:00Z")
    assert p.stdout == b"b\nc\n"
    p = msb(home, "logs", "stopped-no-logs")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")


def test_cli_errors(home):
    for args, status, text in [
            (["nope"], 1, "error: no sandbox named 'nope'\n"),
            (["demo", "--since", "soon"], 2, "error: bad time 'soon'"),
            (["demo", "--source", "out"], 2, "error: unknown log source 'out'"),
            (["demo", "--tail", "-1"], 2, "error: "),
            (["../x"], 2, "error: bad sandbox name")]:
        p = msb(home, "logs", *args)
        assert p.returncode == status, (args, p.stderr)
        assert p.stderr.decode().startswith(text) and p.stderr.count(b"\n") == 1, p.stderr
        assert b"Traceback" not in p.stderr and p.stdout == b""


def test_cli_follow_prints_new_entries_and_ends_at_until(home):
    logs = home / "sandboxes" / "demo" / "logs"
    proc = subprocess.Popen([sys.executable, "-m", "vmm.cli", "logs", "demo", "-f", "--tail", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, MSB_HOME=str(home)))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=20) + lines.get(timeout=20) == "ial\nnext €\n".encode()
        with LogWriter(logs, max_bytes=300, keep=50) as w:     # rotates while followed
            for i in range(20):
                w.write("stdout", f"new {i}\n".encode())
        got = [lines.get(timeout=20) for _ in range(20)]
        assert got == [f"new {i}\n".encode() for i in range(20)]
        proc.send_signal(signal.SIGINT)       # Ctrl-C is how a follow ends: exit 0
        assert proc.wait(20) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # --until in the past: prints what there is and ends by itself
    p = msb(home, "logs", "demo", "-f", "--until", "2025-11-29T10:02:00Z")
    assert (p.returncode, p.stdout) == (0, b"a\nb\n")


def test_cli_reader_going_away_is_not_an_error(tmp_path):
    logs = tmp_path / "sandboxes" / "big" / "logs"
    with LogWriter(logs) as w:
        for i in range(20000):
            w.write("stdout", f"line {i}\n".encode())
    p = subprocess.run(f"{sys.executable} -m vmm.cli logs big | head -1", shell=True,
                       capture_output=True, env=dict(os.environ, MSB_HOME=str(tmp_path)),
                       timeout=60)
    assert (p.stdout, p.stderr) == (b"line 0\n", b"")
