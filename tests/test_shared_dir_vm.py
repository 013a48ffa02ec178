"""Shared directories in real guests (qemu engine, TCG): virtio-fs served by virtiofsd.

The guest is the sandbox's own (agent initramfs, busybox image) booted as a bare Machine
with SharedDirs; the tests mount the shares themselves (`mount -t virtiofs TAG DIR`
through the agent's exec), so what is checked here is the device and its server, not the
agent's automatic mounting.
"""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import vmm
from support.shared_dir_guest import boot, processes_alive, virtiofsd_pids, wait_gone
from vmm.devices import SharedDir

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

pytestmark = [pytest.mark.slow, pytest.mark.qemu,
              pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not os.access("/usr/lib/qemu/virtiofsd", os.X_OK), reason="no virtiofsd")]

MMAP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
    if (fd < 0) { perror("open"); return 1; }
    if (ftruncate(fd, 4096) != 0) { perror("ftruncate"); return 1; }
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    if (argc > 2) { printf("%.20s\n", p); }
    memcpy(p, "written through mmap", 20);
    if (msync(p, 4096, MS_SYNC) != 0) { perror("msync"); return 1; }
    munmap(p, 4096);
    close(fd);
    return 0;
}
"""


@pytest.fixture(scope="module")
def shares(tmp_path_factory):
    base = tmp_path_factory.mktemp("shares")
    work, ro, outside = base / "work", base / "ro", base / "outside"
    for d in (work, ro, outside):
        d.mkdir()
    (ro / "readme").write_text("read me\n")
    secret = secrets.token_hex(16)
    (outside / "secret.txt").write_text(secret + "\n")
    # Links a guest could follow out of the share, were they resolved on the host.
    (work / "etc-link").symlink_to("/etc")
    (work / "out-abs").symlink_to(outside)
    (work / "out-rel").symlink_to("../outside")
    if shutil.which("musl-gcc"):
        src = base / "mmap.c"
        src.write_text(MMAP_C)
        subprocess.run(["musl-gcc", "-static", "-O1", "-o", str(work / "mmaptool"), str(src)],
                       check=True, capture_output=True)
    return {"base": base, "work": work, "ro": ro, "outside": outside, "secret": secret}


@pytest.fixture(scope="module")
def guest(kernel_path, image, shares, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    g = boot(kernel_path, image, [SharedDir(shares["work"], "work"),
                                  SharedDir(shares["ro"], "ro", read_only=True)], str(run))
    g.ok("mkdir -p /mnt/work /mnt/ro && mount -t virtiofs work /mnt/work "
         "&& mount -t virtiofs ro /mnt/ro")
    yield g
    g.stop()


def test_files_written_on_either_side_are_seen_on_the_other(guest, shares):
    work = shares["work"]
    (work / "from-host").write_text("host 1\n")
    assert guest.ok("cat /mnt/work/from-host") == "host 1\n"
    # The host changes and grows a file the guest has read: seen at the next read.
    (work / "from-host").write_text("host 2, longer than before\n")
    assert guest.ok("cat /mnt/work/from-host") == "host 2, longer than before\n"
    # ... and removes it: gone for the guest at once (no cached name, timeout=0).
    (work / "from-host").unlink()
    r = guest.sh("cat /mnt/work/from-host")
    assert r.exit_code != 0 and b"No such file" in r.stderr
    # The guest's writes reach the host file without a sync.
    guest.ok("echo guest 1 > /mnt/work/from-guest && mkdir -p /mnt/work/d1 /mnt/work/d2 "
             "&& echo moved > /mnt/work/d1/f && mv /mnt/work/d1/f /mnt/work/d2/f")
    assert (work / "from-guest").read_text() == "guest 1\n"
    assert (work / "d2" / "f").read_text() == "moved\n" and not (work / "d1" / "f").exists()
    guest.ok("echo guest 2 >> /mnt/work/from-guest")
    assert (work / "from-guest").read_text() == "guest 1\nguest 2\n"


def test_guest_root_files_belong_to_root_on_a_root_host(guest, shares):
    if os.geteuid() != 0:
        pytest.skip("virtiofsd runs as root only when we do")
    guest.ok("echo x > /mnt/work/owned && chown 1234:2345 /mnt/work/owned && chmod 640 /mnt/work/owned")
    st = (shares["work"] / "owned").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 2345, 0o640)
    guest.ok("touch /mnt/work/rootfile")
    assert (shares["work"] / "rootfile").stat().st_uid == 0


@pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc")
def test_shared_mmap_works_both_ways(guest, shares):
    """cache=none (direct I/O) would refuse this mmap on the guest's 6.1 kernel."""
    work = shares["work"]
    guest.ok("/mnt/work/mmaptool /mnt/work/mapped")
    assert (work / "mapped").read_bytes()[:20] == b"written through mmap"
    (work / "mapped").write_bytes(b"host wrote this" + bytes(4096 - 15))
    assert guest.ok("/mnt/work/mmaptool /mnt/work/mapped show").startswith("host wrote this")


def test_a_read_only_share_refuses_writes_in_the_server(guest, shares):
    """The guest mounted it read-write: only virtiofsd's read-only view refuses."""
    assert "ro /mnt/ro virtiofs rw" in guest.ok("cat /proc/mounts")
    assert guest.ok("cat /mnt/ro/readme") == "read me\n"
    for cmd in ("echo x > /mnt/ro/new", "touch /mnt/ro/readme", "echo x >> /mnt/ro/readme",
                "mkdir /mnt/ro/d", "rm /mnt/ro/readme", "chmod 777 /mnt/ro/readme",
                "mv /mnt/ro/readme /mnt/ro/renamed", "ln -s x /mnt/ro/link"):
        r = guest.sh(cmd)
        assert r.exit_code != 0, cmd
        assert b"Read-only file system" in r.stderr or b"Permission denied" in r.stderr, (cmd, r.stderr)
    assert sorted(os.listdir(shares["ro"])) == ["readme"]
    assert (shares["ro"] / "readme").read_text() == "read me\n"
    assert (shares["ro"] / "readme").stat().st_mode & 0o777 == 0o644


def test_a_read_only_guest_mount_refuses_too(guest, shares):
    guest.ok("mkdir -p /mnt/ro2 && mount -t virtiofs -o ro ro /mnt/ro2")
    r = guest.sh("touch /mnt/ro2/x")
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    guest.ok("umount /mnt/ro2")


def test_symlinks_in_the_share_do_not_reach_host_files(guest, shares):
    """A link in the share is resolved by the guest, in the guest: /etc is the guest's
    own, and a path to a host directory outside the share names nothing."""
    secret = shares["secret"]
    host_release = Path("/etc/debian_version").read_text() if Path("/etc/debian_version").exists() else None
    listing = guest.ok("ls /mnt/work/etc-link/")
    assert "image-marker" in listing   # the guest image's own /etc
    if host_release is not None:
        r = guest.sh("cat /mnt/work/etc-link/debian_version")
        assert host_release.encode() not in r.stdout
    for cmd in ("cat /mnt/work/out-abs/secret.txt", "cat /mnt/work/out-rel/secret.txt",
                "cat /mnt/work/../outside/secret.txt",
                "find / -xdev -name secret.txt 2>/dev/null; find /mnt -name secret.txt"):
        r = guest.sh(cmd)
        assert secret.encode() not in r.stdout + r.stderr, cmd
    # readlink shows the link's text; it is just text to the guest.
    assert guest.ok("readlink /mnt/work/out-abs").strip() == str(shares["outside"])


def test_inspect_names_each_virtiofsd_and_its_log(guest, shares):
    info = guest.fs_info()
    assert [(t["name"], t["tag"], t["read_only"]) for t in info] == \
        [("fs0", "work", False), ("fs1", "ro", True)]
    for t in info:
        assert processes_alive([t["pid"]]) == [t["pid"]]
        assert "Received vhost-user socket connection" in Path(t["log"]).read_text()
    assert info[0]["source"] == os.path.realpath(shares["work"])


def test_virtiofsd_ends_with_stop(kernel_path, image, tmp_path):
    (tmp_path / "s").mkdir()
    g = boot(kernel_path, image, [SharedDir(tmp_path / "s", "s", read_only=True)], str(tmp_path))
    g.ok("mkdir -p /m && mount -t virtiofs s /m && ls /m")
    info = g.fs_info()
    pids = virtiofsd_pids(info)
    assert len(pids) == 2, pids   # the main process and its sandboxed worker
    run_dir = os.path.dirname(info[0]["log"])
    status = g.stop()
    assert status.kind == "host-stop", status
    assert wait_gone(pids, 0) == [], "virtiofsd outlived stop()"
    assert not os.path.exists(run_dir)


def test_a_source_removed_before_start_is_a_clear_error(kernel_path, image, tmp_path):
    from vmm.errors import ConfigError
    from vmm.guest.agent import agent_initramfs
    (tmp_path / "s").mkdir()
    m = vmm.Machine(kernel_path, initrd=agent_initramfs(), engine="qemu", memory_mib=256,
                    shared_dirs=[SharedDir(tmp_path / "s", "s")])
    (tmp_path / "s").rmdir()
    with pytest.raises(ConfigError, match="shared dir 's': the host directory .* does not exist"):
        m.start()
    assert m.status.kind == "error"
    m.stop()


OWNER = """
import os, sys, time
sys.path[:0] = [{tests!r}, {repo!r}]
from support.shared_dir_guest import boot
from vmm.devices import SharedDir
g = boot({kernel!r}, {image!r}, [SharedDir({share!r}, "s")], {run!r}, initrd={initrd!r})
g.ok("mkdir -p /m && mount -t virtiofs s /m && echo owner > /m/alive")
info = g.fs_info()
pids = [info[0]["pid"]] + [int(c) for c in open("/proc/%d/task/%d/children" % (info[0]["pid"], info[0]["pid"])).read().split()]
print(" ".join(map(str, pids + [g.machine.inspect().pid])), flush=True)
time.sleep(600)
"""


def owner_process(kernel, image, share, run, python=sys.executable, prefix=()):
    from vmm.guest.agent import agent_initramfs
    code = OWNER.format(tests=str(TESTS), repo=str(REPO), kernel=str(kernel), image=str(image),
                        share=str(share), run=str(run), initrd=str(agent_initramfs()))
    return subprocess.Popen([*prefix, python, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_nothing_outlives_an_owner_killed_with_sigkill(kernel_path, image, tmp_path):
    (tmp_path / "s").mkdir()
    owner = owner_process(kernel_path, image, tmp_path / "s", tmp_path)
    try:
        line = owner.stdout.readline()
        assert line, owner.stderr.read()[-3000:]
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3 and (tmp_path / "s" / "alive").read_text() == "owner\n"
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert wait_gone(pids) == [], "virtiofsd or QEMU outlived its owner"
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become an ordinary user")
def test_an_ordinary_user_shares_a_directory(kernel_path, image):
    """As uid 65534: virtiofsd in a user namespace whose root is the caller, so what the
    guest's root writes belongs to the caller on the host, and the caller's files are
    root's in the guest; a read-only share refuses writes there too."""
    from vmm.guest.agent import agent_initramfs
    base = Path(tempfile.mkdtemp(prefix="vmm-fs-user-"))   # pytest's tmp is root's alone
    try:
        os.chmod(base, 0o755)
        for name, src in (("vmlinux", kernel_path), ("initrd", agent_initramfs()), ("image", image)):
            shutil.copy(src, base / name)
        for d in ("rw", "ro", "run"):
            (base / d).mkdir()
            os.chown(base / d, 65534, 65534)
        (base / "ro" / "f").write_text("ro file\n")
        os.chown(base / "ro" / "f", 65534, 65534)
        code = f"""
import os, sys
sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]
from support.shared_dir_guest import boot
from vmm.devices import SharedDir
b = {str(base)!r}
g = boot(b + "/vmlinux", b + "/image", [SharedDir(b + "/rw", "rw"), SharedDir(b + "/ro", "ro", read_only=True)],
         b + "/run", initrd=b + "/initrd")
try:
    g.ok("mkdir -p /a /b && mount -t virtiofs rw /a && mount -t virtiofs ro /b")
    g.ok("echo hi > /a/made-by-guest-root")
    print("ls", g.ok("ls -ln /b/f").split()[2])
    r = g.sh("touch /b/new")
    print("ro", r.exit_code, r.stderr.decode().strip())
    g.ok("chmod 777 /a")
    r = g.client.exec(["touch", "/a/by-nobody"], user="nobody")
    print("nobody", r.exit_code, r.stderr.decode().strip())
finally:
    g.stop()
"""
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "/usr/bin/python3", "-c", code], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO), HOME=str(base)))
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        st = (base / "rw" / "made-by-guest-root").stat()
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        assert lines["ls"] == "0"          # the caller's file is root's in the guest
        assert lines["ro"].startswith("1 ") and ("Read-only" in lines["ro"] or "denied" in lines["ro"])
        assert not (base / "ro" / "new").exists()
        # Only the caller is mapped: virtiofsd cannot create a file as another guest user.
        assert lines["nobody"].startswith("1 "), lines["nobody"]
        assert not (base / "rw" / "by-nobody").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_virtiofsd_that_dies_ends_the_machine_with_the_reason(kernel_path, image, tmp_path):
    """QEMU 7.2 cannot reconnect a vhost-user-fs device: rather than leave the guest to
    hang in its next file access, the machine ends, naming the server."""
    (tmp_path / "s").mkdir()
    g = boot(kernel_path, image, [SharedDir(tmp_path / "s", "s")], str(tmp_path))
    try:
        g.ok("mkdir -p /m && mount -t virtiofs s /m && ls /m")
        pids = virtiofsd_pids(g.fs_info())
        os.kill(pids[0], signal.SIGKILL)
        status = g.machine.wait(30)
        assert status is not None and status.kind == "error", status
        assert "virtiofsd for 's' ended (signal SIGKILL)" in status.message
        assert wait_gone(pids) == []
    finally:
        g.stop()


def test_a_guest_that_powers_off_ends_cleanly_with_its_shares(kernel_path, image, tmp_path):
    (tmp_path / "s").mkdir()
    g = boot(kernel_path, image, [SharedDir(tmp_path / "s", "s")], str(tmp_path))
    g.ok("mkdir -p /m && mount -t virtiofs s /m && echo bye > /m/last")
    pids = virtiofsd_pids(g.fs_info())
    g.client.shutdown()
    status = g.machine.wait(60)
    assert status is not None and status.ok, status
    assert wait_gone(pids) == [] and (tmp_path / "s" / "last").read_text() == "bye\n"
    g.stop()


@pytest.mark.parametrize("user", ["auto", None])
def test_a_virtiofsd_run_by_the_caller_attaches_through_qemu_options(kernel_path, image, tmp_path, user):
    """QemuOptions(vhost_user=[("fs", socket, tag)]): a server the caller runs (here our
    own Virtiofsd, engine-neutral), reached by QEMU's own uid (auto) or by path (None)."""
    from vmm import QemuOptions
    from vmm.engines.virtiofsd import Virtiofsd
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "theirs").write_text("served by the caller\n")
    fsd = Virtiofsd.start(SharedDir(tmp_path / "ext", "ext"), str(tmp_path / "ext.sock"))
    try:
        g = boot(kernel_path, image, [], str(tmp_path),
                 options=QemuOptions(vhost_user=[("fs", str(tmp_path / "ext.sock"), "ext")], user=user))
        try:
            assert g.ok("mkdir -p /e && mount -t virtiofs ext /e && cat /e/theirs") == "served by the caller\n"
        finally:
            g.stop()
    finally:
        fsd.stop()


def test_a_guest_cannot_make_device_nodes_in_a_host_directory(guest, shares):
    """virtiofsd runs without CAP_MKNOD (modcaps=-mknod): a guest root's block device
    node would be a real one on the host. FIFOs need no capability and still work."""
    r = guest.sh("mknod /mnt/work/disk b 8 0")
    assert r.exit_code != 0 and b"Operation not permitted" in r.stderr, r
    assert not os.path.lexists(shares["work"] / "disk")
    guest.ok("mkfifo /mnt/work/fifo")
    import stat
    assert stat.S_ISFIFO(os.lstat(shares["work"] / "fifo").st_mode)
