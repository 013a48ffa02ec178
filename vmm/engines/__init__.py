"""Engines: the kvm engine (our C core) and the qemu engine (TCG, devices over vhost-user).

choose("auto") picks kvm only where /dev/kvm is backed by hardware virtualization; on a
software hypervisor such as kvm_pvm a Linux guest cannot boot (see docs/platform.md), so
auto picks qemu there and says why.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ..errors import ConfigError, EngineUnavailable

ENGINES = ("kvm", "qemu")


def kvm_backing() -> str:
    """'missing', 'no-access', 'pvm' (software hypervisor) or 'hardware'."""
    if not os.path.exists("/dev/kvm"):
        return "missing"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no-access"
    if os.path.isdir("/sys/module/kvm_pvm"):
        return "pvm"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    if "vmx" in flags or "svm" in flags or "hypervisor" not in flags:
                        return "hardware"
                    # A guest with no vmx/svm whose /dev/kvm works is nested through some
                    # software path; treat it like PVM.
                    return "pvm"
    except OSError:
        pass
    return "hardware"


def qemu_binary():
    return shutil.which("qemu-system-x86_64")


@dataclass
class EngineChoice:
    name: str
    reason: str

    def engine_class(self):
        """The Engine subclass, imported on first use (each pulls in its own machinery)."""
        if self.name == "kvm":
            from .kvm import KvmEngine
            return KvmEngine
        from .qemu import QemuEngine
        return QemuEngine

    def create(self, spec):
        return self.engine_class()(spec)


def choose(engine: str = "auto") -> EngineChoice:
    if engine not in ("auto",) + ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of auto, kvm, qemu")
    backing = kvm_backing()
    if engine == "kvm":
        if backing == "missing":
            raise EngineUnavailable("the kvm engine needs /dev/kvm, which this host does not have")
        if backing == "no-access":
            raise EngineUnavailable("the kvm engine cannot open /dev/kvm: permission denied "
                                    "(add yourself to the kvm group)")
        why = "requested" + (" (note: /dev/kvm here is the PVM software hypervisor; "
                             "a Linux guest will not reach userspace)" if backing == "pvm" else "")
        return EngineChoice("kvm", why)
    if engine == "qemu":
        if not qemu_binary():
            raise EngineUnavailable("the qemu engine needs qemu-system-x86_64 "
                                    "(apt-get install qemu-system-x86)")
        return EngineChoice("qemu", "requested")
    # auto
    if backing == "hardware":
        return EngineChoice("kvm", "/dev/kvm is hardware-backed")
    reason = {
        "missing": "/dev/kvm is missing",
        "no-access": "/dev/kvm is not accessible",
        "pvm": "/dev/kvm is the PVM software hypervisor (kvm_pvm), too slow for a Linux guest",
    }[backing]
    if not qemu_binary():
        raise EngineUnavailable(f"no engine can run here: {reason}, and qemu-system-x86_64 is not "
                                "installed (apt-get install qemu-system-x86)")
    return EngineChoice("qemu", reason + "; using QEMU with TCG")
