"""What kind of kernel a file is, where it loads and how much memory it needs; and the C
core's fixed limits.

Both come from the C core (csrc/kernel_image.c, csrc/core_limits.c through core_api.h), so
Python and the loader cannot disagree: inspect() runs the loader's own parser on the file
without loading it (no KVM), and core_limits() reads the constants the C code uses.
Machine validation runs inspect() for every engine, so a file that is not a kernel, or a
VM too small for it, is one clear ConfigError before anything starts.

    img = inspect("vmlinux")          # KernelImage(kind="elf-pvh", entry=..., load_end=...)
    check_memory(img, memory_mib=8)   # ConfigError: memory 8 MiB is too small for ...
    core_limits().max_cpus            # 64: the core's vCPU table
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .errors import ConfigError

MiB = 1 << 20
_ERRLEN = 512


def _core():
    from . import _binding
    return _binding.ffi, _binding.lib


@dataclass(frozen=True)
class KernelImage:
    path: str
    kind: str          # "elf-pvh" | "elf-64" | "bzimage"
    entry: int         # guest-physical entry point
    load_start: int    # lowest guest-physical byte loaded
    load_end: int      # highest guest-physical byte the kernel needs + 1

    @property
    def min_memory_mib(self) -> int:
        return -(-self.load_end // MiB)


@dataclass(frozen=True)
class CoreLimits:
    """The C core's fixed limits (struct vmm_core_limits)."""
    max_cpus: int            # vCPUs per VM in the kvm engine (KVM may allow fewer)
    max_devices: int         # virtio-mmio devices per VM in the kvm engine
    min_memory_bytes: int    # smallest guest RAM the core takes
    mmio_hole: int           # RAM below 4 GiB ends here; the rest is mapped from high_ram_base
    high_ram_base: int
    kernel_min: int          # no kernel segment loads below this
    cmdline_size: int        # Linux's COMMAND_LINE_SIZE, with the terminating NUL
    virtio_mmio_base: int    # kvm engine: device i's window is at base + i * window
    virtio_mmio_window: int


@functools.lru_cache(maxsize=1)
def core_limits() -> CoreLimits:
    ffi, lib = _core()
    out = ffi.new("struct vmm_core_limits *")
    lib.vmm_core_limits(out)
    return CoreLimits(**{name: getattr(out, name) for name, _ in ffi.typeof("struct vmm_core_limits").fields})


def inspect(path) -> KernelImage:
    """The kernel file's kind, entry point and load range; ConfigError naming the file if
    it cannot be read or is not a kernel the loader takes."""
    ffi, lib = _core()
    path = os.fspath(path)
    out = ffi.new("struct vmm_kernel_info *")
    err = ffi.new("char[]", _ERRLEN)
    if lib.vmm_kernel_inspect(os.fsencode(path), out, err, _ERRLEN) != 0:
        raise ConfigError(ffi.string(err).decode(errors="replace"))
    return KernelImage(path, ffi.string(out.kind).decode(), out.entry, out.load_start, out.load_end)


def check_memory(image: KernelImage, memory_mib: int) -> None:
    """ConfigError if a VM of memory_mib cannot hold the kernel (below the MMIO hole, where
    the loader puts it)."""
    low_ram = min(memory_mib * MiB, core_limits().mmio_hole)
    if image.load_end > low_ram:
        raise ConfigError(f"memory {memory_mib} MiB is too small for kernel {image.path} "
                          f"(needs at least {image.min_memory_mib} MiB)")
