"""Real Linux on the kvm engine: the first seconds of a boot.

On the development machines /dev/kvm is the PVM software hypervisor, where a Linux guest
prints its banner, command line and memory map and later stops on an emulation failure
(docs/platform.md). So this test checks what the VMM is responsible for in those seconds:
the kernel was loaded and entered (banner), it got our exact command line, and the e820
map it prints is the one the VMM built. Then it stops the VM from the host.
"""
import re
import struct
import time
import uuid

import pytest

import vmm
from vmm.engines import kvm_backing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kvm,
    pytest.mark.skipif(kvm_backing() in ("missing", "no-access"), reason=f"/dev/kvm is {kvm_backing()}"),
]

BOOT_BUDGET = 60  # seconds for the banner, command line and e820 map to appear
E820_LINE = re.compile(rb"BIOS-e820: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (\w+)")
E820_TYPES = {1: b"usable", 2: b"reserved"}
COMMAND_LINE = re.compile(rb"Command line: ([^\r\n]*)\r?\n")


@pytest.fixture(scope="module")
def vmlinux():
    from vmm.guest.kernel import guest_kernel
    return guest_kernel()  # builds (minutes) on first use


@pytest.fixture(scope="module")
def initrd():
    from vmm.guest.kernel import test_initramfs
    return test_initramfs()


def without_pvh_note(vmlinux, out):
    """A copy of vmlinux whose PVH note is renamed, so the VMM takes the 64-bit entry."""
    data = bytearray(vmlinux.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    for i in range(phnum):
        ptype, _, off, _, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i)
        o = off
        while ptype == 4 and o + 12 <= off + filesz:
            namesz, descsz, ntype = struct.unpack_from("<III", data, o)
            if ntype == 18 and data[o + 12:o + 16] == b"Xen\0":
                struct.pack_into("<I", data, o + 8, 0x7FFF)
            o += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("entry", ["elf-pvh", "elf-64"])
def test_linux_prints_banner_our_cmdline_and_our_e820(vmlinux, initrd, entry, tmp_path):
    kernel = vmlinux if entry == "elf-pvh" else without_pvh_note(vmlinux, tmp_path / "vmlinux")
    marker = f"vmm-test-{uuid.uuid4().hex[:12]}"
    # loglevel before earlyprintk: the boot console replays the log buffer when it
    # registers, at the loglevel in force then (the guest config defaults to 1).
    cmdline = f"loglevel=8 earlyprintk=ttyS0 {marker}"
    m = vmm.Machine(kernel, initrd=initrd, engine="kvm", memory_mib=256, cmdline=cmdline)
    try:
        m.start()
        deadline = time.monotonic() + BOOT_BUDGET
        while time.monotonic() < deadline:
            console = m.console
            if b"Linux version" in console and COMMAND_LINE.search(console) \
                    and b"RAMDISK:" in console:
                break
            if m.wait(timeout=0.5) is not None:
                break
        console = m.console
        assert b"Linux version" in console, f"no banner within {BOOT_BUDGET} s: {console[-2000:]!r}"
        # What the guest says it got: the engine's whole line (its record of it agrees), with
        # ours, marker included, last and unchanged. The marker is checked on the guest's
        # side: an engine that lost our part would still agree with its own record.
        found = COMMAND_LINE.search(console)
        assert found, f"the guest printed no command line: {console[-3000:]!r}"
        got = found.group(1).decode()
        assert got == m.inspect().cmdline, (got, m.inspect().cmdline)
        assert marker in got.split(), f"our marker {marker} is not on the guest's command line: {got}"
        assert got.endswith(" " + cmdline), f"our part is not last and whole: {got}"

        printed = [(int(a, 16), int(b, 16) + 1 - int(a, 16), kind)
                   for a, b, kind in E820_LINE.findall(console)]
        built = [(addr, size, E820_TYPES[t]) for addr, size, t in m.inspect().e820]
        assert printed == built, f"guest printed {printed}, VMM built {built}"
        boot = m.inspect().boot
        assert boot["kind"] == entry
        start, size = boot["initrd_addr"], boot["initrd_size"]
        assert size == initrd.stat().st_size
        ramdisk = f"RAMDISK: [mem {start:#010x}-{(start + size + 4095) // 4096 * 4096 - 1:#010x}]"
        assert ramdisk.encode() in console, console[-3000:]
        assert m.timeline["first_vcpu_entry"] > m.timeline["kernel_loaded"]
    finally:
        t0 = time.monotonic()
        status = m.stop()
        assert time.monotonic() - t0 < 5, "stop() took too long"
    # The guest may have died on the PVM emulator already; a host stop is the other end.
    assert status.kind in ("host-stop", "error"), status
    if status.kind == "error":
        assert "rip=" in status.message
