"""The kvm engine and its C core, driven by tiny freestanding guests (guest/tests/*.S).

Each guest is assembled at test time, boots in milliseconds, reports what it saw through
the serial console, a Python port device or a Python MMIO device, and ends itself with an
i8042 reset (or never ends, for the host-stop test).
"""
import os
import pathlib
import threading
import time

import pytest

import vmm
from vmm import KvmOptions, PythonDevice
from vmm.engines import kvm_backing
from vmm.errors import ConfigError, GuestError
from vmm.machine import MachineSpec

from support.kvm_guests import KVM_MARKS, guest_build  # noqa: E402

pytestmark = KVM_MARKS

from vmm.engines.kvm import KvmEngine, probe, CMDLINE_PREFIX  # noqa: E402

REPORT_MMIO = 0xD0000000
REPORT_PORT = 0x500
WAIT = 20  # seconds; every guest here ends in milliseconds


@pytest.fixture(scope="session")
def guests(tmp_path_factory):
    out = tmp_path_factory.mktemp("guests")
    return lambda name: guest_build.build_guest(name, out)


@pytest.fixture(scope="session")
def bzimage(tmp_path_factory):
    return guest_build.build_bzimage("entry64", tmp_path_factory.mktemp("bzimage"))


class Recorder:
    """A Python test device: records accesses, answers reads with 0xcafe0000 | offset."""

    def __init__(self):
        self.accesses = []
        self.lock = threading.Lock()

    def __call__(self, offset, size, is_write, value):
        with self.lock:
            self.accesses.append((offset, size, is_write, value if is_write else None))
        return None if is_write else 0xCAFE0000 | offset

    def writes(self):
        return [(o, s, v) for o, s, w, v in self.accesses if w]

    def slots(self):
        """8-byte MMIO reports as {offset: value}."""
        return {o: v for o, s, v in self.writes() if s == 8}


def run(path, *, devices=(), cpus=1, memory_mib=16, cmdline="", console_input=None):
    """Boot path, wait for its end; returns (Machine, ExitStatus). The machine is stopped."""
    m = vmm.Machine(path, engine="kvm", cpus=cpus, memory_mib=memory_mib, cmdline=cmdline,
                    options=KvmOptions(python_devices=devices))
    try:
        m.start()
        if console_input is not None:
            m.send_console(console_input)
        status = m.wait(timeout=WAIT)
        assert status is not None, f"guest {path} did not end within {WAIT} s: {m.console!r}"
        return m, status
    finally:
        m.stop()


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def thread_count():
    return len(os.listdir("/proc/self/task"))


# --- probe -------------------------------------------------------------------------------------

def test_probe_reports_api_version_and_capabilities():
    info = probe()
    assert info["ok"] and "error" not in info, info
    assert info["api_version"] == 12
    for cap in ("IRQCHIP", "USER_MEMORY", "SET_TSS_ADDR", "IOEVENTFD", "IRQFD", "IMMEDIATE_EXIT"):
        assert cap in info["required"] and info["capabilities"][cap] > 0


# --- entry state -------------------------------------------------------------------------------

def check_long_mode_entry(slots, e820_len):
    cr0, cr4, efer, cs = slots[0x00], slots[0x08], slots[0x10], slots[0x18]
    assert cr0 & 0x1 and cr0 & 0x80000000, f"CR0 {cr0:#x}: want PE and PG"
    assert cr4 & 0x20, f"CR4 {cr4:#x}: want PAE"
    assert efer & 0x500 == 0x500, f"EFER {efer:#x}: want LME and LMA"
    assert cs == 0x10 and slots[0x68] == 0x18, "boot protocol wants __BOOT_CS 0x10, __BOOT_DS 0x18"
    assert slots[0x20] == 0x7000, "rsi must point at the zero page"
    assert slots[0x28] == 0x8FF0 and slots[0x30] == 0x9000  # stack, page tables (layout.h)
    assert slots[0x38] == int.from_bytes(b"HdrS", "little")
    assert slots[0x40] == 0xFF, "type_of_loader"
    assert slots[0x48] == 0x20000, "cmd_line_ptr"
    assert slots[0x50].to_bytes(8, "little") == CMDLINE_PREFIX.encode()[:8]
    assert slots[0x58] == e820_len
    assert not slots[0x60] & 0x200, "interrupts must be off at entry"


def test_long_mode_entry_state(guests):
    dev = Recorder()
    m, status = run(guests("entry64"), devices=[PythonDevice(REPORT_MMIO, 0x1000, dev)])
    assert status.kind == "shutdown", status
    check_long_mode_entry(dev.slots(), len(m.inspect().e820))


def test_bzimage_entry(bzimage):
    dev = Recorder()
    m, status = run(bzimage, devices=[PythonDevice(REPORT_MMIO, 0x1000, dev)])
    assert status.kind == "shutdown", status
    check_long_mode_entry(dev.slots(), len(m.inspect().e820))


def test_pvh_entry(guests):
    dev = Recorder()
    m, status = run(guests("pvh"), devices=[PythonDevice(REPORT_PORT, 4, dev, mmio=False)])
    assert status.kind == "shutdown", status
    ebx, magic, cr0, cs, cmdline, nmap, cr4 = [v for _, _, v in dev.writes()]
    assert ebx == 0x6000 and magic == 0x336EC578
    assert cr0 & 1 and not cr0 & 0x80000000, f"CR0 {cr0:#x}: PVH wants protected mode, paging off"
    assert cs == 0x10 and cr4 == 0
    assert cmdline == 0x20000
    assert nmap == len(m.inspect().e820)


# --- devices -------------------------------------------------------------------------------------

def test_serial_boot_timer_and_i8042_reset(guests):
    m, status = run(guests("hello"))
    assert b"hello from the test guest\n" in m.console
    assert status.kind == "shutdown" and "i8042" in status.message
    t = m.timeline
    phases = ["vm_created", "kernel_loaded", "first_vcpu_entry", "boot_timer", "exit"]
    assert all(p in t for p in phases), t
    assert [t[p] for p in phases] == sorted(t[p] for p in phases)
    stats = m.exit_stats
    assert stats["io"] >= len(b"hello from the test guest\n") + 2  # chars, boot timer, reset
    assert stats["unclaimed_io"] == 0


def test_mmio_range_routed_to_a_python_device(guests):
    dev = Recorder()
    m, status = run(guests("mmio"), devices=[PythonDevice(REPORT_MMIO, 0x1000, dev)])
    assert status.kind == "shutdown", status
    assert dev.accesses[:7] == [
        (0x00, 8, True, 0x1122334455667788),
        (0x08, 4, False, None),
        (0x10, 4, True, 0xCAFE0009),          # the read answer + 1: the guest saw our value
        (0x18, 1, False, None),
        (0x19, 1, True, 0x18),                # low byte of 0xcafe0018
        (0x1A, 2, False, None),
        (0x1C, 2, True, 0x001A),
    ]
    # Nobody's MMIO and nobody's port read as all-ones, are counted, and are not fatal.
    assert dev.writes()[-2:] == [(0x20, 4, 0xFFFFFFFF), (0x24, 4, 0xFFFFFFFF)]
    stats = m.exit_stats
    assert stats["unclaimed_mmio"] == 1 and stats["unclaimed_io"] == 1
    assert stats["mmio"] >= 10


def test_two_vcpus_both_run(guests):
    dev = Recorder()
    m, status = run(guests("smp"), cpus=2, devices=[PythonDevice(REPORT_PORT, 4, dev, mmio=False)])
    assert status.kind == "shutdown", status
    assert sorted(v for _, _, v in dev.writes()) == [0, 1], "each vCPU reports its own APIC id"


def test_console_input_is_echoed(guests):
    m, status = run(guests("echo"), console_input=b"ping 123\n")
    assert status.kind == "shutdown", status
    assert m.console == b"ready\nping 123\n"


def _wait_console(m, text, timeout=10):
    deadline = time.monotonic() + timeout
    while text not in m.console and time.monotonic() < deadline:
        time.sleep(0.01)
    assert text in m.console, m.console


def test_pause_freezes_the_guest_and_resume_lets_it_run(guests):
    """The echo guest polls the UART: every poll is a port-I/O exit, so the count of exits
    moves exactly while the guest runs."""
    m = vmm.Machine(guests("echo"), engine="kvm", memory_mib=16)
    try:
        m.start()
        _wait_console(m, b"ready\n")
        for _ in range(2):   # pause and resume twice: the second pause must hold too
            m.pause()
            frozen = sum(m.exit_stats.values())
            time.sleep(0.3)
            assert sum(m.exit_stats.values()) == frozen, "the guest ran while paused"
            m.resume()
            time.sleep(0.3)
            assert sum(m.exit_stats.values()) > frozen, "the guest did not run after resume"
        m.send_console(b"bye\n")   # the guest echoes up to the newline, then resets
        status = m.wait(10)
        assert status is not None and status.kind == "shutdown", status
        assert m.console == b"ready\nbye\n"
    finally:
        m.stop()


def test_a_paused_machine_stops(guests):
    m = vmm.Machine(guests("spin"), engine="kvm", memory_mib=16)
    m.start()
    _wait_console(m, b"spinning")
    m.pause()
    status = m.stop()
    assert status.kind == "host-stop", status
    with pytest.raises(vmm.GuestError):
        m.pause()


# --- endings -------------------------------------------------------------------------------------

def _cpu_has_svm() -> bool:
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and " svm" in line for line in f)


def test_triple_fault_is_an_error_with_honest_registers(guests):
    """The faulting registers where KVM still has them (Intel VMX, the PVM software
    hypervisor); on AMD SVM (real, or the nested tier's L1) KVM resets the vCPU before it
    reports the fault, and the message says the registers are gone instead of showing the
    power-on state as if the guest had faulted there."""
    m, status = run(guests("triple"))
    assert status.kind == "error"
    assert "triple fault" in status.message
    if _cpu_has_svm():
        assert "registers unavailable" in status.message, status.message
        assert "rip=" not in status.message
    else:
        for reg in ("rip=0x100001", "rsp=0x8ff0", "cr0=0x80000031", "cr3=0x9000", "cr4=0x20",
                    "efer=0x500", "cs=0x10"):
            assert reg in status.message, status.message
    assert m.exit_stats["shutdown"] == 1


def test_host_stop_of_a_spinning_guest_is_quick_and_leaks_nothing(guests):
    path = guests("spin")
    fds, threads = fd_count(), thread_count()
    m = vmm.Machine(path, engine="kvm", memory_mib=16)
    m.start()
    deadline = time.monotonic() + WAIT
    while b"spinning" not in m.console and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b"spinning" in m.console
    assert m.wait(timeout=0.2) is None, "the guest spins: it must not end by itself"
    t0 = time.monotonic()
    status = m.stop()
    took = time.monotonic() - t0
    assert status.kind == "host-stop"
    assert took < 1.0, f"stop() took {took:.3f} s"
    assert m.stop() is status  # idempotent
    assert fd_count() == fds
    assert thread_count() == threads


def test_close_is_idempotent_and_safe_before_start(guests):
    fds = fd_count()
    engine = KvmEngine(MachineSpec(kernel=str(guests("hello")), memory_mib=16))
    engine.close()
    engine.close()
    assert engine.wait(0) is None and engine.timeline() == {}
    m = vmm.Machine(guests("hello"), engine="kvm", memory_mib=16)
    m.stop()
    m.stop()
    assert fd_count() == fds


def test_failures_during_start_leak_nothing(guests, tmp_path):
    fds, threads = fd_count(), thread_count()
    # VM creation fails: too little memory.
    engine = KvmEngine(MachineSpec(kernel=str(guests("hello")), memory_mib=1))
    with pytest.raises(GuestError, match="too small"):
        engine.start(lambda data: None)
    engine.close()
    # Loading fails (the engine used directly skips Machine's own check): a kernel that
    # needs 64 MiB in a 16 MiB VM.
    big = tmp_path / "big.bzImage"
    big.write_bytes(guest_build.make_bzimage(b"\xf4" * 4096, init_size=64 << 20))
    engine = KvmEngine(MachineSpec(kernel=str(big), memory_mib=16))
    with pytest.raises(ConfigError, match=r"memory 16 MiB is too small for kernel .*big.bzImage \(needs at least 65 MiB\)"):
        engine.start(lambda data: None)
    engine.close()
    engine.close()
    # A Python device over the serial port is refused (ranges must not overlap).
    m = vmm.Machine(guests("hello"), engine="kvm", memory_mib=16,
                    options=KvmOptions(python_devices=[PythonDevice(0x3F8, 8, Recorder(), mmio=False)]))
    with pytest.raises(ConfigError, match="overlaps serial"):
        m.start()
    m.stop()
    assert fd_count() == fds and thread_count() == threads


def test_memory_above_the_mmio_hole(guests):
    dev = Recorder()
    m, status = run(guests("entry64"), memory_mib=4096, devices=[PythonDevice(REPORT_MMIO, 0x1000, dev)])
    assert status.kind == "shutdown", status
    e820 = m.inspect().e820
    ram = [(a, s) for a, s, t in e820 if t == 1]
    assert (0x100000, 0xC0000000 - 0x100000) in ram, e820
    assert (1 << 32, (4096 << 20) - 0xC0000000) in ram, e820
    check_long_mode_entry(dev.slots(), len(e820))


def test_hugepages_without_reserved_pages_is_a_clear_error(guests):
    try:
        reserved = int(pathlib.Path("/proc/sys/vm/nr_hugepages").read_text())
        reserved += int(pathlib.Path("/proc/sys/vm/nr_overcommit_hugepages").read_text())
    except OSError:
        pytest.skip("no /proc/sys/vm/nr_hugepages")
    if reserved:
        pytest.skip("huge pages are available on this host")
    m = vmm.Machine(guests("hello"), engine="kvm", memory_mib=16, hugepages=True)
    with pytest.raises(GuestError, match="huge pages"):
        m.start()
    m.stop()


def test_console_callback_may_answer_from_the_reader_thread(guests):
    """An expect-style console: input sent from inside the console callback."""
    sent = []

    def on_console(data):
        # Bytes arrive in any chunking: look at the whole console so far.
        if b"ready\n" in m.console and not sent:
            sent.append(True)
            m.send_console(b"from the callback\n")

    m = vmm.Machine(guests("echo"), engine="kvm", memory_mib=16, console=on_console)
    try:
        m.start()
        status = m.wait(timeout=WAIT)
    finally:
        m.stop()
    assert status is not None and status.kind == "shutdown", (status, m.console)
    assert m.console == b"ready\nfrom the callback\n"


def test_stop_from_another_thread_ends_a_waiting_wait(guests):
    m = vmm.Machine(guests("spin"), engine="kvm", memory_mib=16)
    m.start()
    timer = threading.Timer(0.3, m.stop)
    timer.start()
    t0 = time.monotonic()
    status = m.wait()  # no timeout: only the other thread's stop() ends it
    took = time.monotonic() - t0
    timer.join()
    m.stop()
    assert status.kind == "host-stop" and took < 5
    assert m.timeline["exit"] > m.timeline["first_vcpu_entry"]


def test_uart_registers_as_linux_probes_them(guests):
    dev, sent = Recorder(), []

    def on_console(data):
        if b"send\n" in m.console and not sent:
            sent.append(True)
            m.send_console(b"Z")

    m = vmm.Machine(guests("uart"), engine="kvm", memory_mib=16, console=on_console,
                    options=KvmOptions(python_devices=[PythonDevice(REPORT_PORT, 4, dev, mmio=False)]))
    try:
        m.start()
        status = m.wait(timeout=WAIT)
    finally:
        m.stop()
    assert status is not None and status.kind == "shutdown", (status, m.console)
    got = [v for _, _, v in dev.writes()]
    assert got[:7] == [0x5A, 0x01, 0x03, 0xC1, 0x90, 0x61, ord("X")]
    assert not got[7] & 0x10, "IRQ 4 raised before any interrupt was enabled"
    assert got[8:10] == [0xC2, 0xC1]
    assert got[10] & 0x10, "enabling the THR-empty interrupt must raise IRQ 4"
    assert got[11:] == [0xC4, ord("Z"), 0xC1]
    assert m.console == b"send\n", "loopback bytes must not reach the console"


def test_emulation_failure_is_an_error_with_the_instruction(guests):
    """PVM cannot emulate lock cmpxchg16b at CPL0 (docs/platform.md); hardware runs it."""
    m, status = run(guests("cmpxchg16b"))
    if kvm_backing() != "pvm":
        assert status.kind == "shutdown", status
        return
    assert status.kind == "error"
    assert "emulation failure" in status.message and "instruction f0 48 0f c7" in status.message
    assert "rip=0x10000d" in status.message, status.message
    assert m.exit_stats["internal_error"] == 1
