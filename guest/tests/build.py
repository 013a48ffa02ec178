"""Build the freestanding test guests (guest/tests/*.S) with gcc and ld at test time.

    from build import build_guest, build_bzimage
    elf = build_guest("hello", outdir)        # ELF at 1 MiB, 64-bit entry (or PVH note)
    bz = build_bzimage("entry64", outdir)     # the same code wrapped as a bzImage

Nothing built is committed; outputs are cached by the hash of their sources.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import struct
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
LOAD_ADDR = 0x100000


def toolchain_missing() -> str | None:
    for tool in ("gcc", "ld", "objcopy"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install build-essential)"
    return None


def _digest(name: str, defines: tuple) -> str:
    h = hashlib.sha256(repr(defines).encode())
    headers = sorted(p.name for p in HERE.glob("*.h"))  # any guest may include any of them
    for f in (f"{name}.S", *headers, "guest.ld", "build.py"):
        h.update((HERE / f).read_bytes())
    return h.hexdigest()[:16]


def _run(argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed:\n{r.stderr}")


def build_guest(name: str, outdir, defines: tuple = ()) -> pathlib.Path:
    """Assemble and link guest/tests/<name>.S into an ELF; returns its path."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tag = "-".join([name, *(d.lower() for d in defines)])
    out = outdir / f"{tag}-{_digest(name, defines)}.elf"
    if out.exists():
        return out
    obj = out.with_suffix(".o")
    _run(["gcc", "-c", "-nostdlib", "-ffreestanding", "-I", str(HERE),
          *(f"-D{d}" for d in defines), "-o", str(obj), str(HERE / f"{name}.S")])
    tmp = out.with_suffix(".tmp")
    _run(["ld", "-m", "elf_x86_64", "-nostdlib", "--build-id=none", "-z", "noexecstack",
          "-T", str(HERE / "guest.ld"), "-o", str(tmp), str(obj)])
    os.replace(tmp, out)
    obj.unlink()
    return out


def make_bzimage(payload: bytes, *, version=0x20F, setup_sects=1, xloadflags=1, loadflags=1,
                 pref_address=LOAD_ADDR, init_size=None) -> bytes:
    """Wrap a flat 64-bit payload (loaded at 1 MiB, entry at +0x200) in a bzImage header."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x66])          # jmp: header ends at 0x202 + 0x66
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, 0x200000)    # kernel_alignment
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, 2047)        # cmdline_size
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size if init_size is not None else len(payload))
    return bytes(setup) + payload


def build_bzimage(name: str, outdir) -> pathlib.Path:
    """guest/tests/<name>.S built with -DBZIMAGE, flattened and wrapped as a bzImage."""
    elf = build_guest(name, outdir, defines=("BZIMAGE",))
    out = elf.with_suffix(".bzImage")
    if not out.exists():
        flat = elf.with_suffix(".bin")
        _run(["objcopy", "-O", "binary", "--only-section=.text", str(elf), str(flat)])
        out.write_bytes(make_bzimage(flat.read_bytes()))
    return out
