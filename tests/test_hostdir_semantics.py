"""Host directories (virtio-fs) behave as users rely on: one sandbox for the module, a
host directory shared read-write at /share, the busybox image plus fs_probe
(support/hostdir_image.py), the project's kernel; the host side runs as root here.

Consistency the engine's virtiofsd gives (vmm/engines/virtiofsd.py: cache=auto,
timeout=0), which the tests hold it to, with no waiting:
- guest -> host: no writeback cache, so a guest write() reaches the host file before the
  call returns; the host sees it as soon as the guest command is done.
- host -> guest: close-to-open for file data (every open drops the guest's cached pages of
  that file), and names and attributes (size, mode, owner, links) revalidated on every
  use (timeout=0, not auto's 1 s): a file the host creates, rewrites, grows, renames or
  removes is seen by the guest's next stat or open.

Each test uses its own subdirectory of the share, so the order does not matter.
"""
import os
import shutil
import stat
import time

import pytest

from support.hostdir_image import build_hostdir_image
from support.hostdir_sandbox import hostdir_sandbox, mounts_of
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)")]

T = 60
TREE_T = 600   # 10,000 files, a few FUSE round trips each under TCG: minutes on a busy host
GiB = 1 << 30


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    d = tmp_path_factory.mktemp("share")
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="module")
def sb(tmp_path_factory, share, kernel_path):
    image = build_hostdir_image(tmp_path_factory.getbasetemp() / "hostdir-image")
    box = hostdir_sandbox(image, [(share, "/share", False)], engine=ENGINE, kernel=kernel_path,
                          network=None, boot_timeout=90)
    yield box
    box.stop()


def sh(sb, script, code=0, user=None, timeout=T):
    r = sb.exec(["sh", "-c", script], timeout=timeout, user=user)
    assert r.code == code, (script, r)
    return r.stdout.decode()


def guest_sees(sb, script, want, what):
    """The guest's very next look (no retry, no wait) shows the host's change."""
    got = sh(sb, script)
    assert got == want, f"{what}: the guest says {got!r}"


def subdir(share, name):
    d = share / name
    d.mkdir()
    os.chmod(d, 0o777)
    return d


def test_mounted_as_virtiofs(sb):
    src, fstype, opts = mounts_of(sb)["/share"]
    assert fstype == "virtiofs" and "rw" in opts, (src, fstype, opts)


def test_files_written_on_either_side_are_seen_on_the_other(sb, share):
    d = subdir(share, "rw")
    # host -> guest: a new file
    (d / "from-host").write_text("one\n")
    guest_sees(sb, "cat /share/rw/from-host 2>&1", "one\n", "a new host file")
    # the same length rewritten on the host: close-to-open, the next open sees it
    (d / "from-host").write_text("two\n")
    assert sh(sb, "cat /share/rw/from-host") == "two\n"
    # a new length: the size is an attribute, revalidated on use
    (d / "from-host").write_text("three, longer\n")
    guest_sees(sb, "cat /share/rw/from-host", "three, longer\n", "a host file grown")
    # guest -> host: written through, there when the command returns
    sh(sb, "echo guest > /share/rw/from-guest && echo more >> /share/rw/from-guest")
    assert (d / "from-guest").read_text() == "guest\nmore\n"
    sh(sb, "printf new > /share/rw/from-host")
    assert (d / "from-host").read_text() == "new"
    sh(sb, "rm /share/rw/from-guest")
    assert not (d / "from-guest").exists()
    (d / "from-host").unlink()
    guest_sees(sb, "test -e /share/rw/from-host && echo there || echo gone", "gone\n",
                "a file the host removed")


def test_ownership_and_modes_pass_through(sb, share):
    """virtiofsd runs as root here: ids and modes are the host's, unmapped, both ways."""
    d = subdir(share, "owners")
    f = d / "host-owned"
    f.write_text("x")
    os.chown(f, 1234, 5678)
    os.chmod(f, 0o640)
    os.mkdir(d / "host-dir", 0o750)
    os.chown(d / "host-dir", 4321, 8765)
    guest_sees(sb, "stat -c '%u %g %a' /share/owners/host-owned /share/owners/host-dir",
                "1234 5678 640\n4321 8765 750\n", "host owners and modes")
    # guest root creates: host root's file; the guest's umask (022) applies
    sh(sb, "echo r > /share/owners/by-root && mkdir /share/owners/root-dir")
    st = os.stat(d / "by-root")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    assert stat.S_IMODE(os.stat(d / "root-dir").st_mode) == 0o755
    # chown/chmod/setgid from the guest land on the host
    sh(sb, "chown 1000:2000 /share/owners/by-root && chmod 0751 /share/owners/by-root "
           "&& chmod 2775 /share/owners/root-dir")
    st = os.stat(d / "by-root")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 2000, 0o751)
    assert stat.S_IMODE(os.stat(d / "root-dir").st_mode) == 0o2775
    # an ordinary guest user (nobody, 65534) creates files as itself...
    sh(sb, "echo n > /share/owners/by-nobody", user="nobody")
    st = os.stat(d / "by-nobody")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    # ...and is refused what its id does not allow: the host file's 0640 owned by 1234
    r = sb.exec(["sh", "-c", "cat /share/owners/host-owned"], timeout=T, user="nobody")
    assert r.code != 0 and b"Permission denied" in r.stderr, r
    r = sb.exec(["sh", "-c", "echo no > /share/owners/host-owned"], timeout=T, user="nobody")
    assert r.code != 0, r
    assert f.read_text() == "x"
    # chmod of another user's file is refused to nobody
    r = sb.exec(["chmod", "777", "/share/owners/by-root"], timeout=T, user="nobody")
    assert r.code != 0 and stat.S_IMODE(os.stat(d / "by-root").st_mode) == 0o751


def test_hard_links(sb, share):
    d = subdir(share, "links")
    (d / "a").write_text("shared\n")
    os.link(d / "a", d / "b")
    guest_sees(sb, "stat -c '%h' /share/links/a /share/links/b", "2\n2\n", "host hard link")
    ino = sh(sb, "stat -c %i /share/links/a /share/links/b").split()
    assert ino[0] == ino[1], ino
    sh(sb, "ln /share/links/a /share/links/c && echo via-c >> /share/links/c")
    assert os.stat(d / "c").st_ino == os.stat(d / "a").st_ino
    assert os.stat(d / "a").st_nlink == 3
    assert (d / "a").read_text() == "shared\nvia-c\n"
    sh(sb, "rm /share/links/a")
    assert os.stat(d / "b").st_nlink == 2 and (d / "b").read_text() == "shared\nvia-c\n"


def test_sparse_file_beyond_4_gib(sb, share):
    """A 3-byte write at 5 GiB from the guest: 64-bit offsets all the way, and the hole
    stays a hole on the host (a few blocks allocated, not 5 GiB)."""
    d = subdir(share, "sparse")
    sh(sb, "printf END | dd of=/share/sparse/big bs=1M seek=5120 conv=notrunc 2>/dev/null")
    st = os.stat(d / "big")
    assert st.st_size == 5 * GiB + 3
    assert st.st_blocks * 512 <= 1 << 20, f"{st.st_blocks} blocks: the hole was filled"
    with open(d / "big", "rb") as f:
        f.seek(5 * GiB)
        assert f.read() == b"END"
        f.seek(4 * GiB + 12345)
        assert f.read(4096) == bytes(4096)
    assert sh(sb, "stat -c %s /share/sparse/big") == f"{5 * GiB + 3}\n"
    assert sh(sb, "dd if=/share/sparse/big bs=1M skip=5120 2>/dev/null") == "END"
    assert int(sh(sb, "du -k /share/sparse/big").split()[0]) <= 1024
    # a sparse file made on the host: its size and a read beyond 4 GiB in the guest
    with open(d / "host-big", "wb") as f:
        f.truncate(6 * GiB)
        f.seek(4 * GiB + 7)
        f.write(b"HOST")
    guest_sees(sb, "stat -c %s /share/sparse/host-big", f"{6 * GiB}\n", "host sparse size")
    out = sh(sb, "dd if=/share/sparse/host-big bs=1 skip=$((4 * 1024 * 1024 * 1024 + 7)) "
                 "count=4 2>/dev/null")
    assert out == "HOST"


def _pattern(size, seed):
    return bytes((i * 131 + seed) & 0xff for i in range(size))


def _fnv(data):
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def test_mmap_shared_writes_reach_the_host(sb, share):
    """The guest writes a file through a MAP_SHARED mapping (msync, munmap, close); the
    host reads every byte. And the host's file, mapped read-only in the guest."""
    d = subdir(share, "mmap")
    size = (1 << 20) + 17   # a partial last page too
    out = sh(sb, f"fs_probe mmap-write /share/mmap/m.bin {size} 7")
    assert out.startswith("MMAP_WRITE ok"), out
    assert (d / "m.bin").read_bytes() == _pattern(size, 7)
    data = os.urandom(300000)
    (d / "h.bin").write_bytes(data)
    want = f"MMAP_READ size={len(data)} fnv={_fnv(data)}\n"
    guest_sees(sb, "fs_probe mmap-read /share/mmap/h.bin", want, "the host file mapped")


def test_fsync_puts_data_on_the_host_while_the_file_is_open(sb, share):
    d = subdir(share, "fsync")
    p = sb.exec_stream(["fs_probe", "fsync-hold", "/share/fsync/f", "durable"])
    out = b""
    deadline = time.monotonic() + T
    while b"FSYNCED" not in out and b"FAIL" not in out:
        ev = p.next_event(deadline)
        assert ev is not None, f"fs_probe ended: {out!r}"
        out += ev[1]
    assert b"FSYNCED" in out, out
    # fsync returned, the guest still holds the file open: the bytes are in the host file
    assert (d / "f").read_bytes() == b"durable"
    p.close_stdin()
    r = p.wait(T)
    assert r.code == 0 and b"CLOSED" in out + r.stdout, (out, r)
    r = sb.exec(["dd", "if=/dev/zero", "of=/share/fsync/g", "bs=64k", "count=16",
                 "conv=fsync"], timeout=T)
    assert r.code == 0 and (d / "g").stat().st_size == 1 << 20, r
    assert sb.exec(["sync"], timeout=T).code == 0


def test_rename_across_directories(sb, share):
    d = subdir(share, "mv")
    for n in ("a", "b", "a/sub"):
        (d / n).mkdir()
    (d / "a" / "f").write_text("file\n")
    (d / "a" / "sub" / "g").write_text("in a dir\n")
    (d / "b" / "old").write_text("replaced\n")
    guest_sees(sb, "cat /share/mv/a/f /share/mv/a/sub/g", "file\nin a dir\n", "host tree")
    sh(sb, "mv /share/mv/a/f /share/mv/b/f2 && mv /share/mv/a/sub /share/mv/b/sub")
    assert not (d / "a" / "f").exists() and (d / "b" / "f2").read_text() == "file\n"
    assert (d / "b" / "sub" / "g").read_text() == "in a dir\n"
    # rename over an existing file replaces it in one step
    sh(sb, "echo new > /share/mv/a/tmp && mv /share/mv/a/tmp /share/mv/b/old")
    assert (d / "b" / "old").read_text() == "new\n" and not (d / "a" / "tmp").exists()
    # the host moves it back: the guest sees the new name and not the old
    os.rename(d / "b" / "f2", d / "a" / "back")
    guest_sees(sb, "cat /share/mv/a/back; test -e /share/mv/b/f2 || echo gone",
                "file\ngone\n", "a host rename")


@pytest.mark.timeout(3 * TREE_T)
def test_ten_thousand_file_trees_both_ways(sb, share):
    """10,000 files in 100 directories created on the host, counted in the guest, and
    the other way round (created with shell built-ins: no process per file), with the
    host's tree still there: 20,000 files looked up by one guest.

    virtiofsd keeps an O_PATH descriptor open for every inode the guest holds, under an
    RLIMIT_NOFILE that root cannot raise on the development machines (20,000). With the
    engine's timeout=0 the guest keeps no unused dentries (FUSE deletes expired ones as
    soon as they are unused), so only files in use count; with cache=auto's default 1 s
    a walk like this one held every inode and failed past ~20,000 with EMFILE."""
    d = subdir(share, "tree")
    for i in range(100):
        sub = d / "host" / f"d{i:02}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"f{j:02}").write_bytes(b"%d\n" % (i * 100 + j))
    assert sh(sb, "find /share/tree/host -type f | wc -l", timeout=TREE_T) == "10000\n"
    assert sh(sb, "cat /share/tree/host/d42/f17") == "4217\n"
    out = sh(sb, "cd /share/tree && mkdir guest && cd guest && i=0; while [ $i -lt 100 ]; do "
                 "mkdir d$i || exit 1; j=0; while [ $j -lt 100 ]; do "
                 "echo $((i * 100 + j)) > d$i/f$j || exit 1; j=$((j + 1)); done; "
                 "i=$((i + 1)); done; find /share/tree/guest -type f | wc -l", timeout=TREE_T)
    assert out == "10000\n"
    files = [os.path.join(r, f) for r, _, fs in os.walk(d / "guest") for f in fs]
    assert len(files) == 10000
    assert (d / "guest" / "d99" / "f99").read_text() == "9999\n"
    sh(sb, "rm -rf /share/tree/host", timeout=TREE_T)
    assert not (d / "host").exists()
    shutil.rmtree(d / "guest")
    guest_sees(sb, "ls /share/tree", "", "the host removing a tree")
