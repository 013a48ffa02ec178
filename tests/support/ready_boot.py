"""The foundation's boot, timed: a bare Machine with the test init, to its READY line.

Shared by the benchmarks that compare against it (QEMU engine vs plain QEMU; sandbox boot
vs plain boot), so both measure exactly the same thing.
"""
import threading
import time

import vmm

READY = b"READY"


def boot_to_ready(kernel_path, initrd, *, engine="qemu", memory_mib=128) -> float:
    """Machine() to the READY line; then waits for a clean end. Returns seconds to READY."""
    seen = threading.Event()
    buf = bytearray()

    def on_console(data):
        buf.extend(data)
        if READY in buf:
            seen.set()

    t0 = time.perf_counter()
    with vmm.Machine(kernel_path, initrd=initrd, engine=engine, memory_mib=memory_mib,
                     console=on_console) as m:
        m.start()
        if not seen.wait(60):
            raise AssertionError(f"no READY from the test init: {m.console[-500:]!r}")
        t_ready = time.perf_counter() - t0
        status = m.wait(30)
        assert status is not None and status.kind == "shutdown", status
    return t_ready
