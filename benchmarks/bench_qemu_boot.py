"""QEMU engine: boot of the project's kernel + test initramfs to the READY line, against
plain qemu-system-x86_64 with the same kernel, initrd and command line, in the same run.

Both sides spawn QEMU and time from just before that (ours: Machine(), which spawns it) to
the READY line's arrival; the guest's exit afterwards is waited for but not timed. The two
alternate round by round after one warm-up round each (never in a median).

Target (issue 2): ratio at most 1.1 (our engine adds little over QEMU itself).

    pytest benchmarks/bench_qemu_boot.py --benchmark-only
"""
import os
import shutil
import subprocess
import time

import pytest

from vmm.guest import kernel
from support.ready_boot import READY, boot_to_ready

pytestmark = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                reason="qemu-system-x86_64 is not installed")
ROUNDS = 10


@pytest.fixture(scope="module")
def guest():
    return str(kernel.guest_kernel()), str(kernel.test_initramfs())


def _boot_ours(kernel_path, initrd):
    return boot_to_ready(kernel_path, initrd, engine="qemu")


def plain_qemu_argv(kernel_path, initrd, memory_mib=128, cpus=1):
    """The platform note's microvm command line, nothing of ours attached."""
    return [
        "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off",
        "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mib),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
        "-kernel", kernel_path, "-initrd", initrd,
        "-append", "console=ttyS0 reboot=t panic=-1",
    ]


def _boot_plain(kernel_path, initrd):
    t0 = time.perf_counter()
    p = subprocess.Popen(plain_qemu_argv(kernel_path, initrd), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    buf = b""
    t_ready = None
    try:
        while True:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            if t_ready is None and READY in buf:
                t_ready = time.perf_counter() - t0
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    assert t_ready is not None, f"no READY from plain QEMU: {buf[-500:]!r}"
    return t_ready


def test_qemu_boot_to_ready(benchmark, alternate, guest):
    alternate(benchmark, "qemu boot to READY", ours=("vmm qemu engine", lambda: _boot_ours(*guest)),
              baseline=("plain qemu-system-x86_64 microvm", lambda: _boot_plain(*guest)),
              rounds=ROUNDS, target="target <= 1.1")
