"""A real guest floods its serial console from inside a sandbox (a command writing to
/dev/ttyS0 as fast as the emulated UART takes it), then prints one last line: the console
log file stays within its cap, says how much it dropped, and still ends with that line;
the sandbox's console tail (BootFailed's source) has it too. Bytes are measured, not time.
"""
import re

import pytest

from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

import vmm
import vmm.sandbox.console
from vmm.console_limits import ConsoleLimits

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")]

BOOT_TIMEOUT = 60
FLOOD = 512 << 10         # what the guest writes: TCG's UART takes ~140 KiB/s here
# Small limits, so that a guest slowed down by a loaded host still floods them: the
# defaults are the same code with bigger numbers (tests/test_console_limits.py).
LIMITS = ConsoleLimits(file_bytes=8 << 10, rate_bytes=1024, burst_bytes=8 << 10,
                       held_bytes=4 << 10)
MARKER = re.compile(rb"\n\[vmm: (\d+) bytes dropped: [^\]]*\]\n")
LAST = b"LAST-LINE-AFTER-THE-FLOOD"


def test_a_flooding_guest_leaves_a_bounded_console_log_ending_with_its_last_line(
        kernel_path, image, tmp_path, monkeypatch):
    monkeypatch.setattr(vmm.sandbox.console, "ConsoleLimits", lambda: LIMITS)
    log = tmp_path / "console.log"
    limits = LIMITS
    with vmm.Sandbox.create(image, engine=ENGINE, console_log=log,
                            boot_timeout=BOOT_TIMEOUT) as sb:
        r = sb.exec(["sh", "-c", f"yes flood-0123456789abcdef | head -c {FLOOD} > /dev/ttyS0; "
                                 f"echo {LAST.decode()} > /dev/ttyS0"], timeout=300)
        assert r.code == 0, r.stderr
        tail = sb.console
    assert LAST.decode() in tail
    files = {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith("console")}
    assert set(files) <= {"console.log", "console.log.1"}
    assert sum(files.values()) <= 2 * limits.file_bytes
    text = log.read_bytes()
    assert LAST in text[-200:], text[-500:]
    assert (tmp_path / "console.log.1").exists(), "the file never reached its cap"
    dropped = sum(int(n) for n in MARKER.findall(text))
    assert dropped > 0, f"{len(text)} bytes kept, no marker: was the flood under the burst?"
