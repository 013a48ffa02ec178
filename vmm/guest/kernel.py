"""Find or build the guest kernel and the test initramfs.

    guest_kernel()    -> Path of vmlinux built from Debian's linux-source and guest/kernel/config
    test_initramfs()  -> Path of a gzip cpio holding only /init (guest/init/init.c) and /dev/console
    kernel_info()     -> what `python -m vmm info` shows about the kernel in use

Both artefacts are cached outside the checkout, under ${VMM_CACHE:-~/.cache/vmm}, in a
directory named by a hash of everything that goes into them, so editing the config, the
build script, the init source or upgrading linux-source gives a fresh build and an
unchanged input never rebuilds. A file lock makes concurrent callers build once.
$VMM_KERNEL, if set, names a vmlinux to use instead of building one.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Optional, Tuple

from ..errors import VmmError

LINUX_SOURCE_PACKAGE = "linux-source-6.1"
LINUX_SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
# Bump when the initramfs layout below changes (the init source is hashed anyway).
INITRAMFS_FORMAT = "1"
HEARTBEAT_S = 60  # how often a long kernel compile says it is still going
INIT_CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")


class KernelError(VmmError):
    """The guest kernel or initramfs could not be found or built."""


# --- where things are ---------------------------------------------------------------------

def guest_dir() -> Path:
    """$VMM_GUEST_DIR, else guest/ of the checkout this package runs from, else the copy a
    plain `pip install` puts in the package (vmm/_guest: kernel, init and agent sources)."""
    env = os.environ.get("VMM_GUEST_DIR")
    if env:
        path = Path(env)
        if not (path / "kernel" / "config").is_file():
            raise KernelError(f"VMM_GUEST_DIR={env} does not hold kernel/config")
        return path
    here = Path(__file__).resolve().parents[1]   # the vmm package
    for path in (here.parent / "guest", here / "_guest"):
        if (path / "kernel" / "config").is_file():
            return path
    raise KernelError(f"no guest sources next to the vmm package ({here.parent / 'guest'} or "
                      f"{here / '_guest'}); set VMM_GUEST_DIR to a checkout's guest/ directory")


def cache_dir() -> Path:
    return Path(os.environ.get("VMM_CACHE") or Path.home() / ".cache" / "vmm")


# --- cache keys ---------------------------------------------------------------------------

def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        # Length-prefix each part so moving bytes between parts changes the key.
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def kernel_key(config: bytes, build_script: bytes, source_version: str) -> str:
    """Cache key of a kernel build: the config, the build logic and the source version."""
    return _digest([b"kernel", config, build_script, source_version.encode()])


def initramfs_key(init_source: bytes) -> str:
    return _digest([b"initramfs", INITRAMFS_FORMAT.encode(), " ".join(INIT_CFLAGS).encode(),
                    init_source])


def linux_source_version() -> str:
    """Version of the installed linux-source package (dpkg), or the tarball's size+mtime."""
    if not LINUX_SOURCE_TARBALL.is_file():
        raise KernelError(f"kernel source {LINUX_SOURCE_TARBALL} is missing "
                          f"(apt-get install {LINUX_SOURCE_PACKAGE})")
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", LINUX_SOURCE_PACKAGE],
                             capture_output=True, text=True, check=True).stdout.strip()
        if out:
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    st = LINUX_SOURCE_TARBALL.stat()
    return f"file:{st.st_size}:{st.st_mtime_ns}"


def _kernel_inputs() -> Tuple[Path, Path, str]:
    g = guest_dir()
    return g / "kernel" / "config", g / "kernel" / "build.sh", linux_source_version()


def current_kernel_key() -> str:
    config, script, version = _kernel_inputs()
    return kernel_key(config.read_bytes(), script.read_bytes(), version)


def kernel_build_dir() -> Path:
    return cache_dir() / "kernel" / current_kernel_key()


# --- locking and progress -----------------------------------------------------------------

@contextmanager
def _locked(path: Path):
    """An exclusive flock on path (created if needed): one builder per artefact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process building {path.stem}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _say(msg: str) -> None:
    print(f"vmm: {msg}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --- the kernel ---------------------------------------------------------------------------

def guest_kernel(build: bool = True) -> Path:
    """Path of the guest vmlinux, building it (minutes, once) if needed and allowed."""
    override = os.environ.get("VMM_KERNEL")
    if override:
        if not os.path.isfile(override):
            raise KernelError(f"VMM_KERNEL={override} is not a file")
        return Path(override)
    config, script, version = _kernel_inputs()
    out = cache_dir() / "kernel" / kernel_key(config.read_bytes(), script.read_bytes(), version)
    vmlinux = out / "vmlinux"
    if vmlinux.is_file():
        return vmlinux
    if not build:
        raise KernelError(f"the guest kernel is not built yet ({vmlinux}); "
                          "call vmm.kernel.guest_kernel() or run `python -m vmm.kernel`")
    with _locked(out.with_suffix(".lock")):
        if not vmlinux.is_file():  # another process may have built it while we waited
            _build_kernel(config, script, out)
    return vmlinux


def _build_kernel(config: Path, script: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    # make -j$(nproc), as Kbuild is used to; VMM_KERNEL_JOBS caps it on shared machines.
    jobs = os.environ.get("VMM_KERNEL_JOBS") or str(os.cpu_count() or 1)
    if not jobs.isdigit() or int(jobs) < 1:
        raise KernelError(f"VMM_KERNEL_JOBS must be a positive number, got {jobs!r}")
    _say(f"building the guest kernel into {out} (log: {log})")
    start = time.monotonic()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["sh", str(script), str(LINUX_SOURCE_TARBALL), str(config),
                                 str(out), jobs],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        compiled, next_note = 0, start + HEARTBEAT_S
        try:
            for line in proc.stdout:
                logf.write(line)
                now = time.monotonic()
                if line.startswith(b"vmm-kernel: "):
                    _say(f"[{now - start:5.0f}s] " + line[12:].decode(errors="replace").rstrip())
                    next_note = now + HEARTBEAT_S
                elif line.startswith(b"  CC "):
                    compiled += 1
                    if now >= next_note:  # a sign of life during the long compile
                        _say(f"[{now - start:5.0f}s] ... {compiled} files compiled")
                        next_note = now + HEARTBEAT_S
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
    if rc != 0 or not (out / "vmlinux").is_file():
        raise KernelError(f"guest kernel build failed (exit {rc}); log {log} ends with:\n{_tail(log)}")
    _say(f"guest kernel built in {time.monotonic() - start:.0f}s")


def kernel_release(vmlinux: Path) -> Optional[str]:
    """The `uname -r` of a kernel we built (from the cache), or parsed from the image."""
    release = vmlinux.parent / "release"
    if release.is_file():
        return release.read_text().strip()
    try:
        data = vmlinux.read_bytes()
    except OSError:
        return None
    at = data.find(b"Linux version ")
    if at < 0:
        return None
    return data[at + 14:data.find(b" ", at + 14)].decode(errors="replace")


def kernel_info() -> dict:
    """What `python -m vmm info` shows: which kernel, whether built, its version."""
    info = {"source_package": LINUX_SOURCE_PACKAGE}
    try:
        override = os.environ.get("VMM_KERNEL")
        path = Path(override) if override else kernel_build_dir() / "vmlinux"
        info.update(path=str(path), built=path.is_file(), from_env=bool(override))
        if not override:
            info["source_version"] = linux_source_version()
            info["key"] = path.parent.name
        if path.is_file():
            info["release"] = kernel_release(path)
            info["size"] = path.stat().st_size
    except VmmError as e:
        info.update(built=False, error=str(e))
    return info


# --- the test init and its initramfs ------------------------------------------------------

def test_initramfs(build: bool = True) -> Path:
    """Path of initramfs.cpio.gz holding the static test init (guest/init/init.c)."""
    source = guest_dir() / "init" / "init.c"
    if not source.is_file():
        raise KernelError(f"test init source not found: {source}")
    out = cache_dir() / "initramfs" / initramfs_key(source.read_bytes())
    image = out / "initramfs.cpio.gz"
    if image.is_file():
        return image
    if not build:
        raise KernelError(f"the test initramfs is not built yet ({image})")
    with _locked(out.with_suffix(".lock")):
        if not image.is_file():
            out.mkdir(parents=True, exist_ok=True)
            init = compile_static(source, out / "init")
            tmp = out / "initramfs.cpio.gz.tmp"
            tmp.write_bytes(gzip.compress(initramfs_cpio(init.read_bytes()), mtime=0))
            tmp.rename(image)
    return image


def compile_static(source: Path, output: Path) -> Path:
    """Compile a one-file C program into a static binary with musl-gcc."""
    cc = shutil.which("musl-gcc")
    if cc is None:
        raise KernelError("musl-gcc is needed to build the test init (apt-get install musl-tools)")
    tmp = output.with_name(output.name + ".tmp")
    proc = subprocess.run([cc, *INIT_CFLAGS, "-o", str(tmp), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"compiling {source} failed:\n{proc.stderr.strip()[-2000:]}")
    tmp.rename(output)
    return output


def initramfs_cpio(init: bytes) -> bytes:
    """A cpio archive (newc) with /dev, /dev/console, /proc, /sys and /init.

    /dev/console must exist before init runs: the kernel opens it as init's stdin,
    stdout and stderr, and there is no devtmpfs yet at that point.
    """
    buf = io.BytesIO()
    entries = [
        ("dev", 0o040755, b"", 0),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("proc", 0o040755, b"", 0),
        ("sys", 0o040755, b"", 0),
        ("init", 0o100755, init, 0),
    ]
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        _cpio_entry(buf, ino, name, mode, data, rdev or (0, 0))
    _cpio_entry(buf, 0, "TRAILER!!!", 0, b"", (0, 0))
    return buf.getvalue()


def _cpio_entry(buf: io.BytesIO, ino: int, name: str, mode: int, data: bytes, rdev) -> None:
    name_b = name.encode() + b"\0"
    nlink = 2 if mode & 0o040000 else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
    buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
    buf.write(name_b)
    _pad4(buf)
    buf.write(data)
    _pad4(buf)


def _pad4(buf: io.BytesIO) -> None:
    buf.write(b"\0" * (-buf.tell() % 4))


if __name__ == "__main__":
    print(guest_kernel())
    print(test_initramfs())
