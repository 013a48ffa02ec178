"""Spawning a tiny freestanding guest's VMM as a process and timing it from the spawn:
the command line of plain QEMU microvm for such a guest, and the timer that watches the
process's stdout for the guest's boot-timer byte. bench_kvm_boot.py and bench_launcher.py
both time fresh processes this way, so ours and QEMU are measured by the same code."""
import os
import subprocess
import time

BOOT_TIMER_BYTE = 123
QEMU_DEBUG_EXIT_STATUS = 1  # isa-debug-exit: (value 0 << 1) | 1


def qemu_microvm_argv(guest, accel, memory_mib):
    """-cpu qemu64: -cpu host/max fail on PVM; the debugcon forwards the boot-timer byte
    (port 0x440) to stdout, and isa-debug-exit ends QEMU when the guest writes port 0xf4."""
    return [
        "qemu-system-x86_64",
        "-M", "microvm,x-option-roms=off,isa-serial=off,rtc=off,acpi=off",
        "-accel", accel, "-cpu", "qemu64", "-m", str(memory_mib),
        "-nodefaults", "-no-user-config", "-nographic",
        "-device", "isa-debug-exit,iobase=0xf4",
        "-chardev", "stdio,id=dbg", "-device", "isa-debugcon,iobase=0x440,chardev=dbg",
        "-kernel", guest,
    ]


def spawn_and_time(argv, wait_s, watch_byte=False):
    """Spawn argv and read its stdout to the end; returns (t0, t_byte or None, t_exit,
    returncode, stdout, stderr), times in CLOCK_MONOTONIC ns. t_byte is when the boot-timer
    byte reached us (with watch_byte), which includes a pipe wake-up the process's own
    timeline would not."""
    t0 = time.monotonic_ns()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    t_byte, out = None, b""
    try:
        while True:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            if watch_byte and t_byte is None and bytes([BOOT_TIMER_BYTE]) in chunk:
                t_byte = time.monotonic_ns()
            out += chunk
        rc = p.wait(wait_s)
        t_exit = time.monotonic_ns()
        err = p.stderr.read().decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    return t0, t_byte, t_exit, rc, out.decode(errors="replace"), err
