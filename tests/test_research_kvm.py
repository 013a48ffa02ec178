"""Our kvm engine through the lab's own run (vmm.research.ours), with a freestanding guest
that acts out a boot: EARLY_EXITS port writes to a port nobody serves (the "kernel"), the
boot-timer mark, the test init's READY line, then EXTRA_EXITS more unserved writes before
it resets. The exits must come back split exactly at the boot-timer mark (the C core
copies its counters at that write), and the READY line must be timed.
(A real Linux guest on the kvm engine needs hardware KVM: the nested tier.)"""
import subprocess

import pytest

from vmm.research import ours
from vmm.research.settings import BootConfig

from test_research_cli import needs_kvm

EARLY_EXITS = 35
EXTRA_EXITS = 20000
GUEST = r"""
#include "guest.h"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_entry
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    ud2
    .code32
pvh_entry:
    mov $EARLY, %ecx
    mov $0x600, %dx
0:  outb %al, %dx
    loop 0b
    movb $123, %al
    mov $BOOT_TIMER, %dx
    outb %al, %dx
    mov $msg, %esi
    mov $COM1, %dx
1:  movb (%esi), %al
    test %al, %al
    jz 2f
    outb %al, %dx
    inc %esi
    jmp 1b
2:  mov $EXTRA, %ecx
    mov $0x600, %dx
3:  outb %al, %dx
    loop 3b
    RESET
msg: .asciz "READY boottime_ns=1500000 cpus=1\n"
"""
READY_BYTES = len("READY boottime_ns=1500000 cpus=1\n")


@pytest.fixture(scope="module")
def acted_boot(tmp_path_factory):
    from test_research_cli import ROOT
    out = tmp_path_factory.mktemp("lab-guest")
    src = out / "acted_boot.S"
    src.write_text(GUEST)
    obj, elf = out / "acted_boot.o", out / "acted_boot.elf"
    tests = ROOT / "guest" / "tests"
    subprocess.run(["gcc", "-c", "-nostdlib", "-ffreestanding", "-I", str(tests),
                    f"-DEARLY={EARLY_EXITS}", f"-DEXTRA={EXTRA_EXITS}", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "-nostdlib", "--build-id=none", "-z", "noexecstack",
                    "-T", str(tests / "guest.ld"), "-o", str(elf), str(obj)], check=True)
    return str(elf)


@needs_kvm
def test_exits_split_at_the_boot_timer(acted_boot):
    cfg = BootConfig(engine="kvm", kernel=acted_boot, memory=16)
    s = ours.boot_test_init(cfg, "kvm", initrd=None, root_disk=None, cmdline="", initcalls=0,
                            timeout=60)
    assert s["ok"], s
    assert s["system"] == "vmm-kvm" and s["status"] == "shutdown: guest reset (i8042 0xFE)"
    assert list(s["marks_ms"]) == ["request", "vm_created", "kernel_loaded", "first_vcpu_entry",
                                   "boot_timer", "ready_line"], s["marks_ms"]
    assert s["guest_ms"] == {"guest_kernel_to_init": 1.5}
    exits = s["exits"]
    assert list(exits) == ["to_boot_timer", "after_boot_timer"], exits
    before, after = exits["to_boot_timer"], exits["after_boot_timer"]
    # before: the early writes and the boot-timer write itself; after: the READY line byte
    # by byte, EXTRA_EXITS to port 0x600, the reset. Exact, however fast the guest ran.
    assert (before["io"], before["unclaimed_io"]) == (EARLY_EXITS + 1, EARLY_EXITS), exits
    assert (after["io"], after["unclaimed_io"]) == (READY_BYTES + EXTRA_EXITS + 1, EXTRA_EXITS), exits
    assert before["mmio"] == after["mmio"] == 0, exits


@needs_kvm
def test_a_fresh_process_run_reports_its_own_marks(acted_boot, tmp_path):
    """process=fresh: `python -m vmm boot --timeline-out` in a new process, READY read from
    its stdout, its own timeline (the host's CLOCK_MONOTONIC) joined to the spawn."""
    cfg = BootConfig(engine="kvm", kernel=acted_boot, memory=16, process="fresh")
    s = ours.boot_fresh_process(cfg, "kvm", initrd=None, cmdline="", initcalls=0,
                                timeout=60, workdir=str(tmp_path))
    assert s["ok"], s
    assert s["system"] == "vmm-kvm-fresh" and s["status"] == "exit 0"
    assert list(s["marks_ms"]) == ["request", "machine_created", "vm_created", "kernel_loaded",
                                   "first_vcpu_entry", "boot_timer", "ready_line"], s["marks_ms"]
    times = list(s["marks_ms"].values())
    assert times == sorted(times), s["marks_ms"]
    # the interpreter and its imports: more than nothing, less than the run
    assert 5 < s["phases_ms"]["machine_created"] < s["phases_ms"]["total"]
    assert s["exits"]["to_boot_timer"]["io"] == EARLY_EXITS + 1, s["exits"]
    assert s["exits"]["after_boot_timer"]["io"] == READY_BYTES + EXTRA_EXITS + 1, s["exits"]


@needs_kvm
def test_a_launcher_run_reports_its_own_marks_and_the_exact_split(acted_boot):
    """process=launcher: the compiled vmm-boot --timeline per run, timed from its spawn,
    its marks and exit split parsed from its timeline."""
    from vmm.research import launcher
    cfg = BootConfig(engine="kvm", kernel=acted_boot, memory=16, process="launcher")
    s = launcher.boot_launcher(cfg, initrd=None, cmdline="", initcalls=0, timeout=60)
    assert s["ok"], s
    assert s["system"] == "vmm-kvm-launcher" and s["status"] == "exit 0"
    assert list(s["marks_ms"]) == ["request", "machine_created", "vm_created", "kernel_loaded",
                                   "first_vcpu_entry", "boot_timer", "ready_line"], s["marks_ms"]
    times = list(s["marks_ms"].values())
    assert times == sorted(times), s["marks_ms"]
    assert s["guest_ms"] == {"guest_kernel_to_init": 1.5}
    before, after = s["exits"]["to_boot_timer"], s["exits"]["after_boot_timer"]
    assert (before["io"], before["unclaimed_io"]) == (EARLY_EXITS + 1, EARLY_EXITS), s["exits"]
    assert (after["io"], after["unclaimed_io"]) == (READY_BYTES + EXTRA_EXITS + 1, EXTRA_EXITS)
    print("launcher, spawn to boot_timer: %.2f ms (exec to main %.2f ms)"
          % (s["marks_ms"]["boot_timer"], s["marks_ms"]["machine_created"]))
