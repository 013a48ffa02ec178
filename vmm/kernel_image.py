"""What kind of kernel a file is, where it loads and how much memory it needs.

Pure Python, no KVM: Machine validation runs it for every engine, so a file that is not
a kernel, or a VM too small for it, is one clear ConfigError before anything starts.
The rules match the C loader (csrc/x86_boot.c), which checks the same things again.

    img = inspect("vmlinux")          # KernelImage(kind="elf-pvh", entry=..., load_end=...)
    check_memory(img, memory_mib=8)   # ConfigError: memory 8 MiB is too small for ...
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .errors import ConfigError

MiB = 1 << 20
KERNEL_MIN = 0x100000            # segments below 1 MiB would overwrite the VMM's boot tables
MMIO_HOLE = 0xC0000000           # RAM below 4 GiB ends at 3 GiB
XEN_ELFNOTE_PHYS32_ENTRY = 18
_HEADER_READ = 4096              # enough for the ELF header or the bzImage setup header
_MAX_PHNUM = 256


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


def _not_a_kernel(path, why):
    return ConfigError(f"{path} is not a kernel: {why}")


def inspect(path) -> KernelImage:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_READ)
            size = os.fstat(f.fileno()).st_size
            if head[:4] == b"\x7fELF":
                return _inspect_elf(path, f, head, size)
    except OSError as e:
        raise ConfigError(f"cannot read kernel {path}: {e.strerror}") from None
    if len(head) >= 0x206 and head[0x1FE:0x200] == b"\x55\xaa" and head[0x202:0x206] == b"HdrS":
        return _inspect_bzimage(path, head, size)
    raise _not_a_kernel(path, "neither an ELF vmlinux nor a bzImage")


# --- ELF ------------------------------------------------------------------------------------

def _inspect_elf(path, f, head, size) -> KernelImage:
    if len(head) < 64:
        raise _not_a_kernel(path, "truncated ELF header")
    if head[4] != 2 or head[5] != 1:
        raise _not_a_kernel(path, "not a 64-bit little-endian ELF")
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    if e_machine != 62:
        raise _not_a_kernel(path, f"ELF machine {e_machine} is not x86-64")
    if e_type != 2:
        raise _not_a_kernel(path, f"ELF type {e_type} is not an executable")
    (e_entry, e_phoff) = struct.unpack_from("<QQ", head, 24)
    (e_phentsize, e_phnum) = struct.unpack_from("<HH", head, 54)
    if e_phentsize != 56 or not 0 < e_phnum <= _MAX_PHNUM or e_phoff > size \
            or e_phnum * 56 > size - e_phoff:
        raise _not_a_kernel(path, "bad ELF program header table")
    f.seek(e_phoff)
    table = f.read(e_phnum * 56)
    loads, pvh_entry = [], None
    for i in range(e_phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", table, i * 56)
        if off > size or filesz > size - off:
            raise _not_a_kernel(path, f"segment {i} lies outside the file")
        if p_type == 4 and pvh_entry is None:  # PT_NOTE
            f.seek(off)
            pvh_entry = _pvh_note(f.read(min(filesz, 1 << 20)))
        if p_type != 1 or memsz == 0:          # PT_LOAD
            continue
        if filesz > memsz or paddr + memsz >= 1 << 64:
            raise _not_a_kernel(path, f"segment {i} has bad sizes")
        if paddr < KERNEL_MIN:
            raise _not_a_kernel(path, f"segment {i} loads at {paddr:#x}, below 1 MiB")
        loads.append((paddr, paddr + memsz))
    if not loads:
        raise _not_a_kernel(path, "no loadable segments")
    entry = pvh_entry if pvh_entry is not None else e_entry
    if not any(a <= entry < b for a, b in loads):
        raise _not_a_kernel(path, f"entry point {entry:#x} is outside its segments")
    return KernelImage(path, "elf-pvh" if pvh_entry is not None else "elf-64", entry,
                       min(a for a, _ in loads), max(b for _, b in loads))


def _pvh_note(notes: bytes):
    """XEN_ELFNOTE_PHYS32_ENTRY's address in a PT_NOTE segment, or None."""
    off = 0
    while len(notes) - off >= 12:
        namesz, descsz, ntype = struct.unpack_from("<III", notes, off)
        off += 12
        name_end = off + (namesz + 3) // 4 * 4
        desc_end = name_end + (descsz + 3) // 4 * 4
        if desc_end > len(notes):
            return None
        name, desc = notes[off:off + namesz], notes[name_end:name_end + descsz]
        off = desc_end
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY and name == b"Xen\0" and descsz in (4, 8):
            return int.from_bytes(desc, "little")
    return None


# --- bzImage ------------------------------------------------------------------------------------

def _inspect_bzimage(path, head, size) -> KernelImage:
    if len(head) < 0x23C:
        raise _not_a_kernel(path, "too short for a bzImage header")
    version = struct.unpack_from("<H", head, 0x206)[0]
    if version < 0x206:
        raise ConfigError(f"{path}: boot protocol {version >> 8}.{version & 0xff:02d} is too old "
                          "(need 2.06 or later)")
    setup_sects = head[0x1F1] or 4
    pm_offset = (setup_sects + 1) * 512
    if pm_offset >= size:
        raise _not_a_kernel(path, "bzImage ends inside its setup code")
    if not head[0x211] & 1:
        raise ConfigError(f"{path}: bzImage is not loadable at 1 MiB (zImage?)")
    if version >= 0x20C and not struct.unpack_from("<H", head, 0x236)[0] & 1:
        raise ConfigError(f"{path}: bzImage has no 64-bit entry point (xloadflags)")
    load_end = KERNEL_MIN + (size - pm_offset)
    if version >= 0x20A and len(head) >= 0x264:
        pref, init_size = struct.unpack_from("<Q", head, 0x258)[0], struct.unpack_from("<I", head, 0x260)[0]
        if pref > 64 << 30:
            raise _not_a_kernel(path, f"pref_address {pref:#x} is absurd")
        load_end = max(load_end, pref + init_size)
    return KernelImage(path, "bzimage", KERNEL_MIN + 0x200, KERNEL_MIN, load_end)


# --- memory -------------------------------------------------------------------------------------

def check_memory(image: KernelImage, memory_mib: int) -> None:
    """ConfigError if a VM of memory_mib cannot hold the kernel."""
    low_ram = min(memory_mib * MiB, MMIO_HOLE)
    if image.load_end > low_ram:
        raise ConfigError(f"memory {memory_mib} MiB is too small for kernel {image.path} "
                          f"(needs at least {image.min_memory_mib} MiB)")
