"""16 sandboxes share one host directory read-only at once: each has its own virtiofsd
(and no more), all read the same file at the same time and get the host's bytes, and a
write from any of them is refused, even from a guest that remounted its mount
read-write (read-only is the server's, not only the guest mount's). When the sandboxes
stop, their virtiofsd processes are gone.
"""
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.hostdir_sandbox import hostdir_sandbox, mounts_of
from support.proctable import children, named, processes
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

VIRTIOFSD = os.environ.get("VMM_VIRTIOFSD") or "/usr/lib/qemu/virtiofsd"

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not os.path.exists(VIRTIOFSD), reason=f"no {VIRTIOFSD}")]

N = 16
T = 120
MEMORY_MIB = 256      # 16 guests' RAM is touched lazily; this keeps the worst case at 4 GiB
BOOTERS = 4           # boots in parallel: two cores, and the rest of the suite on them


def virtiofsd_children():
    """pids of the virtiofsd processes whose parent is this process."""
    return named(children(os.getpid()), "virtiofsd")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("ro-share")
    (d / "data.bin").write_bytes(os.urandom(512 * 1024))
    (d / "sub").mkdir()
    (d / "sub" / "note.txt").write_text("read me\n")
    return d


def snapshot(d):
    """Every path under d with its size, mode and mtime, and data.bin's digest."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            st = os.lstat(os.path.join(root, n))
            out[os.path.relpath(os.path.join(root, n), d)] = (st.st_size, st.st_mode,
                                                               st.st_mtime_ns)
    out["sha256"] = hashlib.sha256((d / "data.bin").read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def boxes(image, kernel_path, shared):
    before = set(virtiofsd_children())
    started = []

    def boot(_):
        sb = hostdir_sandbox(image, [(shared, "/ro", True)], engine=ENGINE, kernel=kernel_path,
                             network=None, memory_mib=MEMORY_MIB, boot_timeout=240)
        started.append(sb)
        return sb
    try:
        with ThreadPoolExecutor(BOOTERS) as pool:
            out = list(pool.map(boot, range(N)))
        yield out, before
    finally:
        for sb in started:
            sb.stop()


def test_sixteen_sandboxes_read_one_read_only_directory(boxes, shared):
    sbs, before = boxes
    want = snapshot(shared)
    # one virtiofsd each, all up at once
    assert len(set(virtiofsd_children()) - before) == N
    for sb in sbs:
        src, fstype, opts = mounts_of(sb)["/ro"]
        assert fstype == "virtiofs" and "ro" in opts, (src, fstype, opts)

    def read(sb):
        r = sb.exec(["sh", "-c", "sha256sum /ro/data.bin && cat /ro/sub/note.txt"], timeout=T)
        assert r.code == 0, r
        return r.stdout.decode()
    with ThreadPoolExecutor(N) as pool:      # all at the same time
        outs = list(pool.map(read, sbs))
    assert outs == [f"{want['sha256']}  /ro/data.bin\nread me\n"] * N

    def write(sb):
        return [sb.exec(["sh", "-c", script], timeout=T) for script in (
            "echo x > /ro/new", "echo x >> /ro/data.bin", "rm /ro/sub/note.txt",
            "mkdir /ro/dir", "touch /ro/data.bin", "mv /ro/sub/note.txt /ro/moved")]
    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(write, sbs))
    for rs in results:
        for r in rs:
            assert r.code != 0 and b"Read-only file system" in r.stderr, r
    assert snapshot(shared) == want


def test_read_only_is_the_servers_not_only_the_guest_mount(boxes, shared):
    """A guest's root may remount its side read-write; virtiofsd still refuses (EROFS)."""
    sbs, _ = boxes
    want = snapshot(shared)
    sb = sbs[0]
    r = sb.exec(["sh", "-c", "mount -o remount,rw /ro && echo REMOUNTED"], timeout=T)
    assert r.code == 0 and r.stdout == b"REMOUNTED\n", r
    assert "rw" in mounts_of(sb)["/ro"][2]
    for script in ("echo x > /ro/new", "echo x >> /ro/data.bin", "rm /ro/sub/note.txt",
                   "mkdir /ro/dir", "chmod 777 /ro/data.bin", "ln /ro/data.bin /ro/hard"):
        r = sb.exec(["sh", "-c", script], timeout=T)
        assert r.code != 0 and b"Read-only file system" in r.stderr, (script, r)
    assert snapshot(shared) == want
    # the others still read it
    r = sbs[1].exec(["cat", "/ro/sub/note.txt"], timeout=T)
    assert r.stdout == b"read me\n"


def test_virtiofsd_ends_with_its_sandbox(boxes):
    sbs, before = boxes
    mine = set(virtiofsd_children()) - before
    assert len(mine) == N
    # and their sandboxed workers (children of each virtiofsd, in a pid namespace)
    mine |= {worker for pid in mine for worker in children(pid)}
    for sb in sbs[:4]:
        sb.stop()
    assert len(set(virtiofsd_children()) - before) == N - 4
    for sb in sbs[4:]:
        sb.stop()
    assert not set(virtiofsd_children()) & mine
    # nothing of them left running at all, their sandboxed workers included
    left = set(processes()) & mine
    assert not left, left

