"""The console panic watch both engines use (vmm/engines/panic_watch.py)."""
from vmm.engines.panic_watch import PanicWatch

LINE = b"[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"


def test_a_panic_line_split_across_reads_is_found_whole():
    w = PanicWatch()
    w.feed(b"booting\n" + LINE[:20])
    assert w.line is None
    w.feed(LINE[20:] + b"\n[ 2.2] more\n")
    assert w.line == LINE.decode()
    assert w.message() == "guest kernel panic: " + LINE.decode()


def test_the_first_panic_wins_and_an_unfinished_last_line_counts_at_eof():
    w = PanicWatch()
    w.feed(b"x\n" + LINE)
    assert w.line is None          # not a whole line yet
    w.feed(b"", at_eof=True)
    assert w.line == LINE.decode()
    w.feed(b"Kernel panic - not syncing: later\n")
    assert w.line == LINE.decode()


def test_no_panic_no_message_and_a_flood_without_newlines_stays_bounded():
    w = PanicWatch()
    for _ in range(100):
        w.feed(b"A" * 65536)
    assert w.line is None and w.message() is None
    w.feed(b"\n" + LINE + b"\n")   # the flood was dropped, not kept, and the watch still works
    assert w.line == LINE.decode()


def test_a_panic_after_a_64_mib_flood_is_still_seen():
    """The engines feed the watch every console byte, before any console limit
    (vmm/console_limits.py) drops some: a flood of lines, some longer than a read, then
    the panic."""
    w = PanicWatch()
    long_line = b"L" * (3 * 65536) + b"\n"
    lines = (b"[    1.0] flood line\n" * 3000)[:65536 - 30]
    for i in range(1024):               # 64 MiB in the engines' 64 KiB reads
        w.feed(long_line[(i % 3) * 65536:(i % 3 + 1) * 65536] if i % 7 < 3 else lines)
    assert w.line is None
    w.feed(b"\n" + LINE[:10])
    w.feed(LINE[10:] + b"\n")
    assert w.line == LINE.decode()
