"""Other VMMs booting the same kernel and test init, measured in the same run as ours.

    qemu-tcg          plain `qemu-system-x86_64 -M microvm` with TCG: none of our devices,
                      our process or our vhost-user back ends; the same kernel, initrd
                      (or root disk) and command line as ours
    qemu-kvm          the same with `-accel kvm -cpu host`, only where /dev/kvm is
                      hardware-backed (under PVM, a software hypervisor, Linux does not boot)
    firecracker       `firecracker --no-api --config-file`, when on PATH and /dev/kvm is
    cloud-hypervisor  `cloud-hypervisor --kernel ...`, likewise           hardware-backed

A baseline is timed from just before its process is spawned (its start-up is part of what
it costs) to the test init's READY line on its serial console; the guest's own clock
comes from that line. What is not available is skipped with a line saying why, never
replaced by a number from elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from .phases import INITCALL_CMDLINE
from .samples import failed_sample
from .spawned import run_process
# Matches the qemu engine's choices where they change boot time for everyone: rtc=on
# (without an RTC Linux 6.1 polls a second for one), no option ROMs, no ACPI.
QEMU_MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off"
QEMU_CMDLINE = "console=ttyS0 reboot=t panic=-1 no_timer_check"
# The qemu engine's prefix, all TCG: noapictimer skips a local APIC timer calibration that
# fails under TCG anyway (vmm/engines/qemu.py); with -accel kvm the APIC timer works.
TCG_CMDLINE = QEMU_CMDLINE + " noapictimer"
FC_CMDLINE = "console=ttyS0 reboot=k panic=1 pci=off"
CH_CMDLINE = "console=ttyS0 reboot=k panic=1"


@dataclass
class Launch:
    """What a baseline needs to boot one configuration."""
    kernel: str
    initrd: Optional[str]
    root_disk: Optional[str]
    root_cmdline: str
    memory: int
    cpus: int
    hugepages: bool
    cmdline: str
    workdir: str


@dataclass
class Baseline:
    name: str
    binary: str
    argv: Callable[["Baseline", Launch], List[str]]
    supports_disk: bool = True
    supports_hugepages: bool = True

    def run(self, launch: Launch, *, initcalls: int, timeout: float) -> dict:
        if launch.root_disk and not self.supports_disk:
            return failed_sample(self.name, f"{self.name}: root=disk not implemented here")
        if launch.hugepages and not self.supports_hugepages:
            return failed_sample(self.name, f"{self.name}: hugepages not implemented here")
        if initcalls:
            launch = _with_cmdline(launch, INITCALL_CMDLINE)
        return run_process(self.name, self.argv(self, launch), initcalls=initcalls,
                           timeout=timeout)


def _with_cmdline(launch: Launch, more: str) -> Launch:
    d = dict(launch.__dict__)
    d["cmdline"] = " ".join(x for x in (launch.cmdline, more) if x)
    return Launch(**d)


def _append(base: str, launch: Launch) -> str:
    return " ".join(x for x in (base, launch.root_cmdline if launch.root_disk else "",
                                launch.cmdline) if x)


def qemu_argv(b: Baseline, launch: Launch, accel: str) -> List[str]:
    mem = launch.memory
    machine = QEMU_MACHINE
    argv = [b.binary, "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(launch.cpus), "-m", str(mem)]
    if launch.hugepages:
        machine += ",memory-backend=mem"
        argv += ["-object", f"memory-backend-memfd,id=mem,size={mem}M,hugetlb=on,hugetlbsize=2M"]
    argv += ["-M", machine, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
             "-serial", "stdio", "-kernel", launch.kernel, "-append",
             _append(TCG_CMDLINE if accel == "tcg" else QEMU_CMDLINE, launch)]
    if launch.initrd and not launch.root_disk:
        argv += ["-initrd", launch.initrd]
    if launch.root_disk:
        argv += ["-drive", f"id=root,file={launch.root_disk},format=raw,if=none,readonly=on",
                 "-device", "virtio-blk-device,drive=root"]
    return argv


def firecracker_argv(b: Baseline, launch: Launch) -> List[str]:
    config = {"boot-source": {"kernel_image_path": launch.kernel,
                              "boot_args": _append(FC_CMDLINE, launch)},
              "drives": [],
              "machine-config": {"vcpu_count": launch.cpus, "mem_size_mib": launch.memory}}
    if launch.initrd and not launch.root_disk:
        config["boot-source"]["initrd_path"] = launch.initrd
    if launch.root_disk:
        config["drives"].append({"drive_id": "root", "path_on_host": launch.root_disk,
                                 "is_root_device": False, "is_read_only": True})
    path = os.path.join(launch.workdir, "firecracker.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return [b.binary, "--no-api", "--config-file", path]


def cloud_hypervisor_argv(b: Baseline, launch: Launch) -> List[str]:
    argv = [b.binary, "--kernel", launch.kernel, "--cmdline", _append(CH_CMDLINE, launch),
            "--cpus", f"boot={launch.cpus}", "--memory", f"size={launch.memory}M",
            "--serial", "tty", "--console", "off"]
    if launch.initrd and not launch.root_disk:
        argv += ["--initramfs", launch.initrd]
    if launch.root_disk:
        argv += ["--disk", f"path={launch.root_disk},readonly=on"]
    return argv


def available(requested, kvm_backing: str, which=shutil.which) -> Tuple[List[Baseline], List[str]]:
    """The baselines this host can run among `requested` (names from settings.BASELINE_NAMES),
    and one line for each one skipped, saying why."""
    found, skipped = [], []
    hardware = kvm_backing == "hardware"
    if "qemu" in requested:
        qemu = which("qemu-system-x86_64")
        if qemu is None:
            skipped.append("qemu-system-x86_64: not found on PATH, skipped")
        else:
            found.append(Baseline("qemu-tcg", qemu, lambda b, l: qemu_argv(b, l, "tcg")))
            if hardware:
                found.append(Baseline("qemu-kvm", qemu, lambda b, l: qemu_argv(b, l, "kvm")))
            else:
                skipped.append(f"qemu-kvm: /dev/kvm is {kvm_backing}, not hardware-backed, skipped")
    for name, argv in (("firecracker", firecracker_argv),
                       ("cloud-hypervisor", cloud_hypervisor_argv)):
        if name not in requested:
            continue
        binary = which(name)
        if binary is None:
            skipped.append(f"{name}: not found on PATH, skipped")
        elif not hardware:
            skipped.append(f"{name}: found at {binary}, but /dev/kvm is {kvm_backing}, "
                           "not hardware-backed, skipped")
        else:
            found.append(Baseline(name, binary, argv, supports_hugepages=False))
    return found, skipped
