"""Kernel file inspection (vmm.kernel_image over the C parser) and the C loader on hostile
input, and the core's limits as Python sees them.

Every malformed ELF or bzImage must be a ConfigError naming the file, from inspection and
from the C loader alike (vmm_kernel_load_check runs the real loader on scratch memory,
no KVM needed); nothing may crash.
"""
import importlib.util
import pathlib
import random
import struct

import pytest

import vmm
from vmm import kernel_image
from vmm.errors import ConfigError
from vmm.engines.kvm import load_check

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("guest_build", ROOT / "guest" / "tests" / "build.py")
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)
make_bzimage = guest_build.make_bzimage

PT_LOAD, PT_NOTE = 1, 4
CODE = b"\xf4" * 64  # hlt


def make_elf(segments=None, entry=0x100000, *, phoff=64, phnum=None, phentsize=56,
             ei_class=2, machine=62, e_type=2, notes=b"", tail=b""):
    """A minimal ELF64: segments = [(type, paddr, data, memsz)], data placed after headers."""
    if segments is None:
        segments = [(PT_LOAD, 0x100000, CODE, len(CODE))]
    if notes:
        segments = segments + [(PT_NOTE, 0, notes, len(notes))]
    n = len(segments)
    data_off = 64 + 56 * n
    ph, blobs = b"", b""
    for ptype, paddr, data, memsz in segments:
        ph += struct.pack("<IIQQQQQQ", ptype, 7, data_off + len(blobs), paddr, paddr, len(data), memsz, 8)
        blobs += data
    ident = b"\x7fELF" + bytes([ei_class, 1, 1]) + bytes(9)
    eh = ident + struct.pack("<HHIQQQIHHHHHH", e_type, machine, 1, entry, phoff, 0, 0, 64,
                             phentsize, n if phnum is None else phnum, 64, 0, 0)
    return eh + ph + blobs + tail


def pvh_note(entry, name=b"Xen\0", ntype=18, desc=None):
    desc = struct.pack("<I", entry) if desc is None else desc
    return struct.pack("<III", len(name), len(desc), ntype) + name + desc


@pytest.fixture
def write(tmp_path):
    counter = iter(range(1000))

    def _write(data, name=None):
        p = tmp_path / (name or f"k{next(counter)}")
        p.write_bytes(data)
        return p
    return _write


# --- valid files --------------------------------------------------------------------------------

def test_elf_64_bit_entry(write):
    img = kernel_image.inspect(write(make_elf(entry=0x100010)))
    assert (img.kind, img.entry, img.load_start, img.load_end) == ("elf-64", 0x100010, 0x100000, 0x100040)
    assert img.min_memory_mib == 2


def test_elf_with_pvh_note(write):
    img = kernel_image.inspect(write(make_elf(notes=pvh_note(0x100020))))
    assert (img.kind, img.entry) == ("elf-pvh", 0x100020)


def test_bzimage(write):
    img = kernel_image.inspect(write(make_bzimage(CODE, pref_address=0x1000000, init_size=0x800000)))
    assert (img.kind, img.entry, img.load_end) == ("bzimage", 0x100200, 0x1800000)
    assert img.min_memory_mib == 24


def test_valid_files_load_in_c(write):
    for data in (make_elf(), make_elf(notes=pvh_note(0x100020)), make_bzimage(CODE)):
        load_check(write(data), memory_mib=16, cmdline="console=ttyS0")


# --- hostile ELF -------------------------------------------------------------------------------------

HOSTILE_ELF = {
    "truncated header": make_elf()[:40],
    "32-bit class": make_elf(ei_class=1),
    "not x86-64": make_elf(machine=3),
    "not an executable": make_elf(e_type=3),
    "program headers past the end": make_elf(phoff=1 << 40),
    "absurd program header count": make_elf(phnum=60000),
    "bad program header size": make_elf(phentsize=32),
    "no loadable segment": make_elf(segments=[(PT_NOTE, 0, b"", 0)]),
    "segment below 1 MiB": make_elf(segments=[(PT_LOAD, 0x1000, CODE, 64)], entry=0x1000),
    "file size above memory size": make_elf(segments=[(PT_LOAD, 0x100000, CODE, 8)]),
    "address wraps": make_elf(segments=[(PT_LOAD, 0xFFFFFFFFFFFFF000, CODE, 0x2000)]),
    "entry outside segments": make_elf(entry=0x200000),
    "pvh entry outside segments": make_elf(notes=pvh_note(0x300000)),
}


@pytest.mark.parametrize("why", sorted(HOSTILE_ELF))
def test_hostile_elf_is_a_config_error(write, why):
    path = write(HOSTILE_ELF[why])
    with pytest.raises(ConfigError, match="is not a kernel"):
        kernel_image.inspect(path)
    with pytest.raises(ConfigError, match=str(path)):
        load_check(path, memory_mib=16)


def test_segment_data_past_the_end_of_the_file(write):
    data = bytearray(make_elf())
    struct.pack_into("<Q", data, 64 + 8, 1 << 33)  # p_offset of the first segment
    path = write(bytes(data))
    with pytest.raises(ConfigError, match="outside the file"):
        kernel_image.inspect(path)
    with pytest.raises(ConfigError, match="outside the file"):
        load_check(path)


def test_truncated_pvh_note_falls_back_to_the_64_bit_entry(write):
    broken = pvh_note(0x100020)[:14]
    path = write(make_elf(notes=broken))
    assert kernel_image.inspect(path).kind == "elf-64"
    load_check(path)


# --- hostile bzImage ---------------------------------------------------------------------------------

HOSTILE_BZ = {
    "protocol too old": (make_bzimage(CODE, version=0x205), "too old"),
    "setup past the end": (make_bzimage(CODE, setup_sects=40)[:4096], "ends inside its setup"),
    "no 64-bit entry": (make_bzimage(CODE, xloadflags=0), "no 64-bit entry"),
    "not loaded high": (make_bzimage(CODE, loadflags=0), "not loadable at 1 MiB"),
    "absurd pref_address": (make_bzimage(CODE, pref_address=1 << 60), "absurd"),
    "header only": (make_bzimage(CODE)[:0x210], "not a kernel"),
}


@pytest.mark.parametrize("why", sorted(HOSTILE_BZ))
def test_hostile_bzimage_is_a_config_error(write, why):
    data, message = HOSTILE_BZ[why]
    path = write(data)
    with pytest.raises(ConfigError, match=message):
        kernel_image.inspect(path)
    with pytest.raises(ConfigError, match=str(path)):
        load_check(path, memory_mib=16)


@pytest.mark.parametrize("data", [b"", b"\0" * 4096, b"MZ" + bytes(1000), b"\x7fELF"])
def test_garbage_is_not_a_kernel(write, data):
    path = write(data)
    with pytest.raises(ConfigError, match="is not a kernel"):
        kernel_image.inspect(path)
    with pytest.raises(ConfigError, match="is not a kernel"):
        load_check(path)


def test_random_corruption_never_crashes(write):
    """Flip bytes in the headers of valid files: each run is fine or a ConfigError."""
    rng = random.Random(1234)
    bases = [make_elf(notes=pvh_note(0x100020)), make_bzimage(CODE)]
    for i in range(300):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(min(len(data), 0x300))] = rng.randrange(256)
        path = write(bytes(data), name="fuzz")
        for check in (kernel_image.inspect, lambda p: load_check(p, memory_mib=8)):
            try:
                check(path)
            except ConfigError:
                pass


# --- memory, initrd, command line -----------------------------------------------------------------

def test_memory_too_small_names_both_sizes(write):
    path = write(make_bzimage(CODE, pref_address=0x1000000, init_size=0x800000), name="bz")
    img = kernel_image.inspect(path)
    with pytest.raises(ConfigError, match=rf"^memory 8 MiB is too small for kernel {path} \(needs at least 24 MiB\)$"):
        kernel_image.check_memory(img, 8)
    kernel_image.check_memory(img, 24)
    with pytest.raises(ConfigError, match=rf"^memory 8 MiB is too small for kernel {path} \(needs at least 24 MiB\)$"):
        load_check(path, memory_mib=8)
    load_check(path, memory_mib=24)


def test_machine_validates_the_kernel_before_any_engine(write):
    with pytest.raises(ConfigError, match="is not a kernel"):
        vmm.Machine(write(b"\0" * 4096), engine="kvm")
    big = write(make_bzimage(CODE, pref_address=0x1000000, init_size=0x800000))
    with pytest.raises(ConfigError, match="too small for kernel"):
        vmm.Machine(big, memory_mib=8, engine="kvm")


def test_initrd_that_does_not_fit(write):
    kernel = write(make_elf())
    initrd = write(b"\0" * (20 << 20), name="initrd")
    with pytest.raises(ConfigError, match="initrd .* does not fit"):
        load_check(kernel, initrd=initrd, memory_mib=16)
    load_check(kernel, initrd=initrd, memory_mib=32)
    with pytest.raises(ConfigError, match="initrd .* is empty"):
        load_check(kernel, initrd=write(b"", name="empty"), memory_mib=32)


def test_command_line_too_long(write):
    kernel = write(make_elf())
    with pytest.raises(ConfigError, match="command line is 3000 bytes"):
        load_check(kernel, cmdline="x" * 3000)


# --- the core's limits ------------------------------------------------------------------------------

def test_core_limits_come_from_the_c_core():
    lim = kernel_image.core_limits()
    assert (lim.max_cpus, lim.max_devices) == (64, 8)
    assert (lim.mmio_hole, lim.high_ram_base, lim.kernel_min) == (3 << 30, 4 << 30, 1 << 20)
    assert (lim.min_memory_bytes, lim.cmdline_size) == (2 << 20, 2048)
    assert (lim.virtio_mmio_base, lim.virtio_mmio_window) == (0xD0100000, 0x1000)


def test_the_core_limits_are_the_ones_linux_and_the_layout_need():
    lim = kernel_image.core_limits()
    assert lim.cmdline_size == 2048          # x86 COMMAND_LINE_SIZE
    assert lim.mmio_hole == 0xC0000000 and lim.high_ram_base == 1 << 32
    assert lim.max_cpus >= 2 and lim.min_memory_bytes >= 1 << 20


def test_unreadable_kernel_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"^cannot read kernel {tmp_path}/nope: No such file or directory$"):
        kernel_image.inspect(tmp_path / "nope")
    with pytest.raises(ConfigError, match=rf"^cannot read kernel {tmp_path}: Is a directory$"):
        kernel_image.inspect(tmp_path)
