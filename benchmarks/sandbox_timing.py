"""The timer of a sandbox boot, shared by bench_sandbox.py and bench_rootdir.py so each
side of their comparisons is measured by the same code: Sandbox.create() with the given
arguments (an image disk or root_dir, engine, RAM, kernel) until it is ready, or until
its first exec(["true"]) has answered; the stop afterwards is not timed."""
import time

import vmm


def sandbox_boot_seconds(first_exec: bool, image_disk=None, **create) -> float:
    t0 = time.perf_counter()
    sb = vmm.Sandbox.create(image_disk, **create)
    try:
        if first_exec:
            assert sb.exec(["true"], timeout=30).code == 0
        return time.perf_counter() - t0
    finally:
        sb.stop()
