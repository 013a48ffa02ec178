"""The guest kernel and test initramfs builders (vmm.guest.kernel, vmm.guest.initramfs) and
the cache they share (vmm.guest.cache).

Fast tests check the cache keys, the cache lookup, the lock and the initramfs format
without building a kernel. Slow tests build (or reuse) the real kernel and check its
.config against the options the project depends on.
"""
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vmm.guest import agent, cache, initramfs, kernel
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parent.parent

# What the guest needs, written here independently of guest/kernel/config, so that an
# edit to that file dropping one of these fails a test.
REQUIRED_ON = """
64BIT PVH PARAVIRT KVM_GUEST HYPERVISOR_GUEST SMP X86_MPPARSE X86_LOCAL_APIC X86_IO_APIC
VIRTIO VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET NET INET UNIX PACKET
VSOCKETS VIRTIO_VSOCKETS HW_RANDOM_VIRTIO EXT4_FS EXT4_FS_POSIX_ACL EROFS_FS EROFS_FS_XATTR
EROFS_FS_POSIX_ACL OVERLAY_FS DEVTMPFS DEVTMPFS_MOUNT TMPFS PROC_FS SYSFS BLK_DEV_INITRD
RD_GZIP SERIAL_8250 SERIAL_8250_CONSOLE EARLY_PRINTK PRINTK TTY UNIX98_PTYS FUTEX EPOLL
EVENTFD SIGNALFD TIMERFD POSIX_TIMERS MULTIUSER NAMESPACES UTS_NS IPC_NS PID_NS NET_NS
USER_NS CGROUPS SECCOMP BINFMT_ELF BINFMT_SCRIPT FILE_LOCKING INOTIFY_USER PROC_SYSCTL
X86_IOPL_IOPERM
""".split()
REQUIRED_OFF = "MODULES ACPI PCI".split()


# --- cache keys -------------------------------------------------------------------------

def test_kernel_key_is_stable_and_tracks_every_input():
    base = kernel.kernel_key(b"CONFIG_A=y\n", b"make", "6.1.1-1")
    assert base == kernel.kernel_key(b"CONFIG_A=y\n", b"make", "6.1.1-1")
    assert base != kernel.kernel_key(b"CONFIG_A=n\n", b"make", "6.1.1-1")
    assert base != kernel.kernel_key(b"CONFIG_A=y\n", b"make -j2", "6.1.1-1")
    assert base != kernel.kernel_key(b"CONFIG_A=y\n", b"make", "6.1.1-2")
    # Bytes moved from one input to the next must not collide.
    assert kernel.kernel_key(b"ab", b"c", "v") != kernel.kernel_key(b"a", b"bc", "v")


def test_current_key_follows_the_checked_in_config(tmp_path, monkeypatch):
    guest = tmp_path / "guest"
    shutil.copytree(REPO / "guest" / "kernel", guest / "kernel")
    monkeypatch.setenv("VMM_GUEST_DIR", str(guest))
    before = kernel.current_kernel_key()
    assert before == kernel.current_kernel_key()
    with open(guest / "kernel" / "config", "a") as f:
        f.write("CONFIG_IPV6=y\n")
    assert kernel.current_kernel_key() != before


def test_initramfs_key_tracks_the_init_source():
    assert initramfs.initramfs_key(b"int main(){}") == initramfs.initramfs_key(b"int main(){}")
    assert initramfs.initramfs_key(b"int main(){}") != initramfs.initramfs_key(b"int main(){ }")


def test_keys_are_what_they_always_were(tmp_path, monkeypatch):
    """Keys name cache directories on every machine: a changed key function would rebuild
    the kernel (minutes) everywhere. Values computed with the code before vmm/guest/cache.py."""
    assert kernel.kernel_key(b"CONFIG_A=y\n", b"make", "6.1.1-1") == "f3622df71f43e469"
    assert initramfs.initramfs_key(b"int main(){}") == "cc213c7d9e6ae751"
    guest = tmp_path / "guest"
    (guest / "kernel").mkdir(parents=True)
    (guest / "kernel" / "config").write_text("CONFIG_X=y\n")
    (guest / "agent").mkdir()
    (guest / "agent" / "main.c").write_text("int main(void){return 0;}\n")
    (guest / "agent" / "x.h").write_text("#define X 1\n")
    monkeypatch.setenv("VMM_GUEST_DIR", str(guest))
    assert agent.agent_key() == "c43234b38581b3a2"


def test_the_cache_is_where_it_always_was(tmp_path, monkeypatch):
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    entry = cache.CacheDir("kernel", "0123456789abcdef")
    assert entry.path == tmp_path / "kernel" / "0123456789abcdef"
    assert entry.lock_path == tmp_path / "kernel" / "0123456789abcdef.lock"
    monkeypatch.delenv("VMM_CACHE")
    assert cache.cache_root() == Path.home() / ".cache" / "vmm"


def test_a_failed_build_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    entry = cache.CacheDir("thing", "k")

    def half_written(target):
        with cache.publishing(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        entry.build_once("out", half_written)
    assert list(entry.path.iterdir()) == []
    assert entry.build_once("out", lambda t: cache.publish(t, b"whole")).read_bytes() == b"whole"


# --- cache lookup -----------------------------------------------------------------------

def test_a_cached_kernel_is_reused_without_building(tmp_path, monkeypatch):
    monkeypatch.delenv("VMM_KERNEL", raising=False)
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "_build_kernel", _must_not_build)
    with pytest.raises(VmmError, match="not built yet"):
        kernel.guest_kernel(build=False)
    out = tmp_path / "kernel" / kernel.current_kernel_key()
    out.mkdir(parents=True)
    (out / "vmlinux").write_bytes(b"\x7fELF fake")
    (out / "release").write_text("6.1.0-vmm\n")
    assert kernel.guest_kernel() == out / "vmlinux"
    assert kernel.guest_kernel(build=False) == out / "vmlinux"
    info = kernel.kernel_info()
    assert info["built"] and info["release"] == "6.1.0-vmm" and info["path"] == str(out / "vmlinux")


def _must_not_build(*args):
    raise AssertionError("guest_kernel() rebuilt a cached kernel")


def test_a_failed_build_names_its_log_and_shows_its_tail(tmp_path, monkeypatch, capsys):
    """The builder relays progress lines, keeps the rest in build.log, and fails loudly."""
    if not kernel.LINUX_SOURCE_TARBALL.is_file():
        pytest.skip(f"{kernel.LINUX_SOURCE_TARBALL} missing (linux-source-6.1)")
    guest = tmp_path / "guest"
    (guest / "kernel").mkdir(parents=True)
    (guest / "kernel" / "config").write_text("CONFIG_64BIT=y\n")
    (guest / "kernel" / "build.sh").write_text(
        'echo "vmm-kernel: pretending to configure"\n'
        'echo "noise that stays in the log"\n'
        'echo "cc1: error: something broke" >&2\n'
        'exit 2\n')
    monkeypatch.setenv("VMM_GUEST_DIR", str(guest))
    monkeypatch.setenv("VMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VMM_KERNEL", raising=False)
    with pytest.raises(VmmError) as failure:
        kernel.guest_kernel()
    message = str(failure.value)
    assert "exit 2" in message and "build.log" in message
    assert "cc1: error: something broke" in message
    err = capsys.readouterr().err
    assert "pretending to configure" in err and "noise" not in err
    log = next((tmp_path / "cache" / "kernel").glob("*/build.log"))
    assert "noise that stays in the log" in log.read_text()


def test_vmm_kernel_overrides_the_build(tmp_path, monkeypatch):
    fake = tmp_path / "vmlinux"
    fake.write_bytes(b"x")
    monkeypatch.setenv("VMM_KERNEL", str(fake))
    assert kernel.guest_kernel() == fake
    monkeypatch.setenv("VMM_KERNEL", str(tmp_path / "missing"))
    with pytest.raises(VmmError, match="missing"):
        kernel.guest_kernel()


def test_a_bad_guest_dir_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("VMM_GUEST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(VmmError, match="nowhere"):
        kernel.guest_kernel(build=False)


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    calls = []

    def slow_compile(source, output):
        calls.append(source)
        time.sleep(0.3)
        output.write_bytes(b"\x7fELF init")
        return output

    monkeypatch.setattr(initramfs, "compile_static", slow_compile)
    results = []
    threads = [threading.Thread(target=lambda: results.append(initramfs.test_initramfs()))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and results[0].is_file()


# --- the initramfs ----------------------------------------------------------------------

def parse_newc(data: bytes) -> dict:
    """name -> (mode, rdev, content), read independently of vmm.guest.initramfs's writer."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad cpio magic at {pos}"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name_at = pos + 110
        name = data[name_at:name_at + namesize - 1].decode()
        body = (name_at + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, (rmaj, rmin), data[body:body + size])
        pos = (body + size + 3) & ~3


def test_initramfs_cpio_layout():
    entries = parse_newc(initramfs.initramfs_cpio(b"#!init"))
    assert entries["init"] == (0o100755, (0, 0), b"#!init")
    assert entries["dev/console"][:2] == (0o020600, (5, 1))
    assert entries["dev"][0] == 0o040755


@pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-gcc not installed (musl-tools)")
def test_test_init_is_a_small_static_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    import gzip
    entries = parse_newc(gzip.decompress(kernel.test_initramfs().read_bytes()))
    init = entries["init"][2]
    assert init[:4] == b"\x7fELF" and init[4] == 2, "not a 64-bit ELF"
    assert len(init) < 100_000, f"init is {len(init)} bytes"
    assert not (_program_header_types(init) & {3, 2}), "init has PT_INTERP or PT_DYNAMIC"
    if shutil.which("cpio"):  # and the system cpio agrees with our writer
        listing = subprocess.run(["cpio", "-it"], input=gzip.decompress(
            kernel.test_initramfs().read_bytes()), capture_output=True, check=True).stdout.split()
        assert b"init" in listing and b"dev/console" in listing


def _program_header_types(elf: bytes) -> set:
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return {struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)}


# --- the real kernel ------------------------------------------------------------------------

def _parse_config(path: Path) -> dict:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            values[name[7:]] = value
    return values


@pytest.mark.slow
def test_built_config_has_every_required_option():
    vmlinux = kernel.guest_kernel()
    if os.environ.get("VMM_KERNEL"):
        pytest.skip("VMM_KERNEL names a kernel this project did not build")
    config = _parse_config(vmlinux.parent / "config")
    missing = [o for o in REQUIRED_ON if config.get(o) != "y"]
    assert not missing, f"required options missing from the built .config: {missing}"
    present = [o for o in REQUIRED_OFF if o in config]
    assert not present, f"options that must be off are on: {present}"
    # Quiet by default; printk still there for loglevel=N.
    assert int(config["CONSOLE_LOGLEVEL_DEFAULT"]) <= 2
    assert vmlinux.stat().st_size > 1_000_000
    assert (kernel.kernel_release(vmlinux) or "").startswith("6.1")
    assert _has_pvh_entry(vmlinux.read_bytes()), "vmlinux has no PVH entry note"


def _has_pvh_entry(elf: bytes) -> bool:
    """Whether a PT_NOTE holds the Xen note XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


@pytest.mark.slow
def test_build_fails_naming_a_dropped_option(tmp_path):
    """EROFS without MISC_FILESYSTEMS is silently dropped by olddefconfig: must fail loudly."""
    config = tmp_path / "config"
    text = (REPO / "guest" / "kernel" / "config").read_text()
    config.write_text(text.replace("CONFIG_MISC_FILESYSTEMS=y\n", ""))
    out = tmp_path / "out"
    proc = subprocess.run(["sh", str(REPO / "guest" / "kernel" / "build.sh"),
                           str(kernel.LINUX_SOURCE_TARBALL), str(config), str(out), "1"],
                          capture_output=True, text=True)
    shutil.rmtree(out / "src", ignore_errors=True)  # 1.3 GB of extracted source
    assert proc.returncode != 0
    assert "dropped: CONFIG_EROFS_FS=y" in proc.stdout
    assert not (out / "vmlinux").exists()
