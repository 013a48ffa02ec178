"""The qemu engine booting the real guest kernel and the test init (slow: TCG boots).

Each boot takes ~1-3 s of wall time here; the test init prints
`READY boottime_ns=<ns> cpus=<n>` and resets the VM (or panics, or hangs) as its
command line asks (guest/init/init.c).
"""
import os
import re
import threading
import time

import psutil

import pytest

import vmm
from vmm import QemuOptions
from vmm.guest import kernel
from vmm.engines import qemu_binary
from vmm.engines.qemu import QemuEngine
from vmm.machine import MachineSpec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.qemu,
    pytest.mark.skipif(qemu_binary() is None, reason="qemu-system-x86_64 not installed"),
]

BOOT_TIMEOUT = 60  # TCG on 2 shared cores; a boot normally takes 1-3 s
READY = re.compile(rb"READY boottime_ns=(\d+) cpus=(\d+)")


@pytest.fixture(scope="module")
def guest():
    return kernel.guest_kernel(), kernel.test_initramfs()


def boot(guest, cmdline="", cpus=1, memory_mib=128):
    vmlinux, initrd = guest
    with vmm.Machine(vmlinux, initrd=initrd, cmdline=cmdline, cpus=cpus, memory_mib=memory_mib,
                     engine="qemu") as m:
        m.start()
        status = m.wait(timeout=BOOT_TIMEOUT)
        assert status is not None, f"no exit within {BOOT_TIMEOUT}s; console:\n{m.console!r}"
        return m, status


@pytest.mark.parametrize("cpus", [1, 2])
def test_boots_to_ready_and_shuts_down(guest, cpus):
    m, status = boot(guest, cpus=cpus)
    assert status.kind == "shutdown", (status, m.console)
    found = READY.search(m.console)
    assert found, m.console
    assert int(found.group(2)) == cpus, f"guest saw {found.group(2)} CPUs, asked for {cpus}"
    assert int(found.group(1)) > 0
    t = m.timeline
    assert t["machine_created"] <= t["vm_created"] < t["boot_timer"] < t["exit"]
    assert t["first_console"] <= t["exit"]
    assert m.exit_stats == {}


def test_kernel_is_quiet_by_default_and_talks_when_asked(guest):
    quiet, status = boot(guest)
    assert status.kind == "shutdown"
    other = [line for line in quiet.console.splitlines()
             if line.strip() and not line.startswith(b"READY")]
    # "reboot: Restarting system" is printed at KERN_EMERG; little else may appear.
    assert len(other) <= 2, quiet.console

    loud, status = boot(guest, cmdline="loglevel=8")
    assert status.kind == "shutdown"
    assert b"Linux version 6.1" in loud.console
    assert b"Run /init as init process" in loud.console
    assert len(loud.console.splitlines()) > 50
    assert READY.search(loud.console)


def test_command_line_reaches_the_init(guest):
    m, status = boot(guest, cmdline="vmmtest.say=marker-42")
    assert status.kind == "shutdown"
    assert re.search(rb"READY .* say=marker-42", m.console), m.console


def test_a_guest_panic_is_an_error_naming_it(guest):
    m, status = boot(guest, cmdline="vmmtest.end=panic")
    assert READY.search(m.console)
    assert status.kind == "error"
    assert "Kernel panic - not syncing" in status.message
    assert "Attempted to kill init" in status.message


def test_stop_mid_boot_is_a_host_stop_and_leaves_no_process(guest):
    vmlinux, initrd = guest
    m = vmm.Machine(vmlinux, initrd=initrd, cmdline="loglevel=8", engine="qemu")
    m.start()
    pid = m.inspect().pid
    time.sleep(0.3)  # QEMU is up, the guest is booting
    status = m.stop()
    assert status.kind == "host-stop"
    assert not _alive(pid), f"qemu pid {pid} still exists after stop()"
    assert m.stop() is status  # idempotent


def test_stop_of_a_hung_guest_after_ready(guest):
    vmlinux, initrd = guest
    with vmm.Machine(vmlinux, initrd=initrd, cmdline="vmmtest.end=hang", engine="qemu") as m:
        m.start()
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not READY.search(m.console) and time.monotonic() < deadline:
            assert m.wait(timeout=0.1) is None, m.console
        assert READY.search(m.console)
        pid = m.inspect().pid
    assert m.status.kind == "host-stop"
    assert not _alive(pid)


def test_stop_after_the_guest_ended_keeps_its_status(guest):
    vmlinux, initrd = guest
    m = vmm.Machine(vmlinux, initrd=initrd, engine="qemu")
    m.start()
    # The guest ends by itself; Machine has not looked (no wait()) when stop() comes.
    deadline = time.monotonic() + BOOT_TIMEOUT
    while "exit" not in m.timeline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.status is None and "exit" in m.timeline
    assert m.stop().kind == "shutdown"


def test_a_bad_qemu_argument_is_an_error_with_qemu_message(guest):
    vmlinux, initrd = guest
    spec = MachineSpec(kernel=str(vmlinux), initrd=str(initrd),
                       options=QemuOptions(extra_args=["-no-such-option"]))
    engine = QemuEngine(spec)
    try:
        engine.start(lambda data: None)
        status = engine.wait(BOOT_TIMEOUT)
    finally:
        engine.close()
    assert status.kind == "error" and status.code != 0
    assert "-no-such-option" in status.message


def test_a_file_that_is_not_a_kernel_is_an_error(tmp_path):
    """Machine refuses such a file up front; the engine must still fail cleanly on its own."""
    bogus = tmp_path / "not-a-kernel"
    bogus.write_bytes(b"this is not a kernel\n" * 200)
    engine = QemuEngine(MachineSpec(kernel=str(bogus)))
    try:
        engine.start(lambda data: None)
        status = engine.wait(BOOT_TIMEOUT)
    finally:
        engine.close()
    assert status.kind == "error"
    assert "kernel" in status.message.lower(), status.message


def test_nothing_leaks(guest):
    """Boots, a host stop and a QEMU failure leave no fds, threads or children behind."""
    def snapshot():
        return (sorted(os.listdir("/proc/self/fd")), threading.active_count(),
                [c.pid for c in psutil.Process().children()])

    boot(guest)  # warm up lazily opened things (imports, selectors, ...)
    before = snapshot()
    boot(guest)
    boot(guest, cmdline="vmmtest.end=panic")
    vmlinux, initrd = guest
    m = vmm.Machine(vmlinux, initrd=initrd, engine="qemu")
    m.start()
    m.stop()
    engine = QemuEngine(MachineSpec(kernel=str(vmlinux), options=QemuOptions(extra_args=["-bad"])))
    engine.start(lambda data: None)
    engine.wait(BOOT_TIMEOUT)
    engine.close()
    assert snapshot() == before


def test_close_before_start_and_twice_is_harmless(guest):
    before = sorted(os.listdir("/proc/self/fd")), threading.active_count()
    engine = QemuEngine(MachineSpec(kernel=str(guest[0])))
    engine.close()
    engine.close()
    # Closed before it ran: it says it never started, and it cannot be started any more.
    status = engine.wait(0)
    assert status is not None and status.kind == "error" and "never started" in status.message, status
    with pytest.raises(RuntimeError, match="after close"):
        engine.start(lambda data: None)
    assert engine.inspect().pid is None
    assert (sorted(os.listdir("/proc/self/fd")), threading.active_count()) == before


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True  # running, or a zombie nobody reaped: a leak either way
