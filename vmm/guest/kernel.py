"""Find or build the guest kernel.

    guest_kernel()    -> Path of vmlinux built from Debian's linux-source and guest/kernel/config
    guest_kernel(fragments=["nosmp.config"])
                      -> the same with config fragments laid over the config (config_fragment.py)
    kernel_info()     -> what `python -m vmm info` shows about the kernel in use

The kernel is cached outside the checkout (vmm/guest/cache.py) under a key of everything
that goes into it, so editing the config, the build script or upgrading linux-source gives
a fresh build and an unchanged input never rebuilds. $VMM_KERNEL, if set, names a vmlinux
to use instead of the project's kernel (a request with fragments is a request to build,
and ignores it).

The test initramfs lives in initramfs.py; test_initramfs, compile_static and
initramfs_cpio are imported here too because callers have always found them next to
guest_kernel().
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Tuple

from . import cache
from .config_fragment import Fragment, merge_config, owners
from .initramfs import compile_static, initramfs_cpio, test_initramfs  # noqa: F401 (docstring)
from .sources import GuestBuildError, guest_dir
from ..errors import VmmError

LINUX_SOURCE_PACKAGE = "linux-source-6.1"
LINUX_SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
HEARTBEAT_S = 60  # how often a long kernel compile says it is still going


class KernelError(GuestBuildError):
    """The guest kernel could not be found or built."""


# --- cache keys ---------------------------------------------------------------------------

def kernel_key(config: bytes, build_script: bytes, source_version: str,
               fragments: Sequence[bytes] = ()) -> str:
    """Cache key of a kernel build: the config, the build logic, the source version and
    the text of each config fragment, in order (none: the key it has always been)."""
    parts = [b"kernel", config, build_script, source_version.encode()]
    if fragments:
        parts += [b"fragments", *fragments]
    return cache.key(parts)


# dpkg's database: any package install or upgrade rewrites it.
DPKG_STATUS = Path("/var/lib/dpkg/status")
_source_version_memo: dict = {}


def _stat_key(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def linux_source_version() -> str:
    """Version of the installed linux-source package (dpkg), or the tarball's size+mtime.

    Remembered per process while neither the tarball nor dpkg's database changes: asking
    dpkg-query is a process spawn (20-30 ms on the host, ~0.4 s in the nested tier's L1)
    that every Sandbox.create() paid through guest_kernel()."""
    if not LINUX_SOURCE_TARBALL.is_file():
        raise KernelError(f"kernel source {LINUX_SOURCE_TARBALL} is missing "
                          f"(apt-get install {LINUX_SOURCE_PACKAGE})")
    key = (_stat_key(LINUX_SOURCE_TARBALL), _stat_key(DPKG_STATUS))
    if key not in _source_version_memo:
        _source_version_memo.clear()
        _source_version_memo[key] = _query_source_version()
    return _source_version_memo[key]


def _query_source_version() -> str:
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
    return cache.CacheDir("kernel", current_kernel_key()).path


# --- progress ---------------------------------------------------------------------------

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

def read_fragments(paths: Sequence) -> list[Fragment]:
    """The fragment files, read and checked (FragmentError names a bad one)."""
    return [p if isinstance(p, Fragment) else Fragment.read(p) for p in paths]


def guest_kernel(build: bool = True, fragments: Sequence = ()) -> Path:
    """Path of the guest vmlinux, building it (minutes, once) if needed and allowed.

    fragments: config fragment files (or Fragments) laid over the project's config, in
    order; the kernel is cached under a key that includes their text."""
    frags = read_fragments(fragments)
    override = os.environ.get("VMM_KERNEL")
    if override and not frags:
        if not os.path.isfile(override):
            raise KernelError(f"VMM_KERNEL={override} is not a file")
        return Path(override)
    config, script, version = _kernel_inputs()
    base = config.read_bytes()
    entry = cache.CacheDir("kernel", kernel_key(base, script.read_bytes(), version,
                                                [f.text for f in frags]))
    vmlinux = entry.file("vmlinux")
    if not build and not vmlinux.is_file():
        raise KernelError(f"the guest kernel is not built yet ({vmlinux}); "
                          "call vmm.guest.kernel.guest_kernel() or run `python -m vmm.guest.kernel`")
    if not frags:
        # build.sh publishes vmlinux last, by rename: its presence marks a complete build.
        return entry.build_once("vmlinux", lambda _: _build_kernel(config, script, entry.path))
    return entry.build_once("vmlinux", lambda _: _build_with_fragments(base, frags, script,
                                                                       entry.path))


def _build_with_fragments(base: bytes, frags: list[Fragment], script: Path, out: Path) -> None:
    """Write the merged config (and what it came from) into the entry, then build it; an
    option of a fragment that olddefconfig dropped is named with its fragment."""
    out.mkdir(parents=True, exist_ok=True)
    cache.publish(out / "fragments.txt", b"".join(
        f"# --- {f.name}\n".encode() + f.text + (b"" if f.text.endswith(b"\n") else b"\n")
        for f in frags))
    merged = cache.publish(out / "config+fragments", merge_config(base, frags))
    try:
        _build_kernel(merged, script, out, what=" with " + ", ".join(f.name for f in frags))
    except KernelError:
        dropped = _dropped_options(out / "build.log")
        theirs = owners(frags)
        named = [f"{line} (from {theirs[opt]})" for opt, line in dropped if opt in theirs]
        if named:
            raise KernelError(
                f"olddefconfig dropped {len(named)} option(s) a config fragment asks for: "
                f"{'; '.join(named)}. Their dependencies are not met: turn those on in the "
                f"fragment too (see the kernel's Kconfig). Log: {out / 'build.log'}") from None
        raise


def _dropped_options(log: Path) -> list[tuple[str, str]]:
    """[(option, build.sh's line)] from the "vmm-kernel: dropped: " lines of a build log."""
    out = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("vmm-kernel: dropped: "):
            what = line[len("vmm-kernel: dropped: "):]
            out.append((what.split("=")[0].split(" ")[0], what))
    return out


def _build_kernel(config: Path, script: Path, out: Path, what: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    # make -j$(nproc), as Kbuild is used to; VMM_KERNEL_JOBS caps it on shared machines.
    jobs = os.environ.get("VMM_KERNEL_JOBS") or str(os.cpu_count() or 1)
    if not jobs.isdigit() or int(jobs) < 1:
        raise KernelError(f"VMM_KERNEL_JOBS must be a positive number, got {jobs!r}")
    _say(f"building the guest kernel{what} into {out} (log: {log})")
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


if __name__ == "__main__":
    print(guest_kernel())
    print(test_initramfs())
