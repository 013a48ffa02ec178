"""A process with its own root (EXEC's ROOT, MOUNT, ROOT_READONLY and JOIN fields, as a pod
member container's): the agent runs as a host process (root here), the new root is a temp
directory holding a static busybox, and what the child sees is read from inside it; the
host side is checked for what must not have happened (mounts left behind, a mount that
escaped the root)."""
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from support.agent_harness import agent, client, first_frame, needs_musl  # noqa: F401
from vmm.agent import ContainerRoot, ExecFailed, RootMount
from vmm.agent import protocol as P
from vmm.agent.client import exec_request
from vmm.agent.container_root import MAX_MOUNTS
from vmm.agent.protocol import G, T

BUSYBOX = shutil.which("busybox")
pytestmark = [
    needs_musl,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root"),
    pytest.mark.skipif(BUSYBOX is None or "statically linked" not in subprocess.run(
        ["file", "-L", BUSYBOX or "/nonexistent"], capture_output=True, text=True).stdout,
        reason="needs a static busybox (apt-get install busybox-static)"),
]
MARK = "in the new root"


def make_rootfs(path: Path) -> Path:
    """A minimal root: /bin/busybox and its applets, /etc/marker, /etc/passwd."""
    (path / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, path / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", path / "bin" / name)
    (path / "etc").mkdir()
    (path / "etc" / "marker").write_text(MARK + "\n")
    (path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                         "app:x:4321:4321::/home/app:/bin/sh\n")
    (path / "etc" / "group").write_text("root:x:0:\napp:x:4321:\n")
    return path


@pytest.fixture
def rootfs(tmp_path):
    return make_rootfs(tmp_path / "rootfs")


def host_mounts_under(path: Path):
    """Mount points on the host (the test's own namespace) at or under path."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == str(path) or point.startswith(str(path) + "/"):
            found.append(point)
    return found


@pytest.fixture(autouse=True)
def no_mounts_left(tmp_path):
    """tmp_path (the rootfs and the bind sources are in it) is made a shared mount, as the
    runtime's pod directory is: a child that let its mounts propagate back would show them
    here."""
    subprocess.run(["mount", "--bind", str(tmp_path), str(tmp_path)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(tmp_path)], check=True)
        yield
        assert host_mounts_under(tmp_path) == [str(tmp_path)], \
            "a child's mount is visible on the host"
    finally:
        subprocess.run(["umount", "-R", "-l", str(tmp_path)], check=True)


def sh(client, script, **kw):
    return client.exec(["sh", "-c", script], timeout=30, **kw)


# ---- the host's encoding ---------------------------------------------------------------

def test_the_fields_encode_and_none_sends_todays_bytes():
    base = exec_request(["true"], None, None, None, False, 24, 80, None)
    assert exec_request(["true"], None, None, None, False, 24, 80, None, None, None, None) == base
    root = ContainerRoot("/r", mounts=(RootMount("/etc/hosts", "/src/hosts", read_only=True),
                                       RootMount("/tmp", "size=1m", tmpfs=True)), read_only=True)
    got = list(P.iter_fields(exec_request(["true"], None, None, None, False, 24, 80, None,
                                          None, root)))
    assert got[1:] == [(G.ROOT, b"/r"), (G.MOUNT, b"\x01\x00\x00\x00/src/hosts\x00/etc/hosts"),
                       (G.MOUNT, b"\x02\x00\x00\x00size=1m\x00/tmp"), (G.ROOT_READONLY, 1)]
    got = list(P.iter_fields(exec_request(["true"], None, None, None, False, 24, 80, None,
                                          None, None, 77)))
    assert got[1:] == [(G.JOIN, 77)]


@pytest.mark.parametrize("kw, msg", [
    ({"root": ContainerRoot("relative")}, "root path must be an absolute path"),
    ({"root": ContainerRoot("/r\0x")}, "root path holds a NUL"),
    ({"root": ContainerRoot("/" + "a" * 4096)}, "at most 4096"),
    ({"root": ContainerRoot("/r", mounts=(RootMount("/a", "/b"),) * (MAX_MOUNTS + 1))},
     "at most 64"),
    ({"root": ContainerRoot("/r", mounts=(RootMount("a", "/b"),))}, "destination must be an absolute"),
    ({"root": ContainerRoot("/r", mounts=(RootMount("/a", "b"),))}, "source must be an absolute"),
    ({"root": ContainerRoot("/r", mounts=(RootMount("/a\0", "/b"),))}, "destination holds a NUL"),
    ({"root": ContainerRoot("/r", mounts=(RootMount("/a", "x\0y", tmpfs=True),))}, "tmpfs data holds a NUL"),
    ({"root": ContainerRoot("/r", mounts=("/a",))}, "must be a RootMount"),
    ({"root": "/r"}, "must be a vmm.agent.ContainerRoot"),
    ({"root": ContainerRoot("/r"), "join_pid": 5}, "exclude each other"),
    ({"join_pid": 1}, "in 2..4194304"),
    ({"join_pid": 4194305}, "in 2..4194304"),
    ({"join_pid": True}, "in 2..4194304"),
])
def test_the_host_refuses_bad_roots(kw, msg):
    with pytest.raises(ValueError, match=msg):
        exec_request(["true"], None, None, None, False, 24, 80, None, None,
                     kw.get("root"), kw.get("join_pid"))


# ---- the agent sets it up ----------------------------------------------------------------

def test_a_process_sees_the_new_root_and_its_own_proc(client, rootfs):
    r = sh(client, "cat /etc/marker; ls /; cat /proc/self/stat >/dev/null && echo proc-ok;"
           " test -e /dev/null && echo dev-ok; test -d /sys/kernel && echo sys-ok;"
           " test -e /etc/os-release || echo no-host-files; pwd",
           root=ContainerRoot(str(rootfs)))
    assert r.code == 0, r
    lines = r.stdout.decode().split("\n")
    assert lines[0] == MARK
    assert set(lines[1:6]) == {"bin", "dev", "etc", "proc", "sys"}
    assert lines[6:] == ["proc-ok", "dev-ok", "sys-ok", "no-host-files", "/", ""]
    # the agent itself stayed where it was
    assert client.exec(["sh", "-c", "test -e /etc/os-release && echo host"]).stdout == b"host\n"


def test_argv0_is_found_in_the_new_roots_path_and_a_user_in_its_passwd(client, rootfs):
    r = client.exec(["id"], user="app", root=ContainerRoot(str(rootfs)), env={"X": "1"})
    assert (r.code, r.stdout) == (0, b"uid=4321(app) gid=4321(app) groups=4321(app)\n")
    r = sh(client, "echo $HOME $USER", user="app", root=ContainerRoot(str(rootfs)))
    assert r.stdout == b"/home/app app\n"
    with pytest.raises(ExecFailed) as e:
        client.exec(["id"], user="nobody-here", root=ContainerRoot(str(rootfs)))
    assert e.value.kind == "bad_user" and "nobody-here" in str(e.value)
    with pytest.raises(ExecFailed) as e:
        client.exec(["python3"], root=ContainerRoot(str(rootfs)))
    assert e.value.kind == "not_found"


def test_bind_and_tmpfs_mounts_and_read_only_ones(client, rootfs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in").write_text("from the host\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "f").write_text("read only\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 pod\n")
    root = ContainerRoot(str(rootfs), mounts=(
        RootMount("/data", str(data)),
        RootMount("/srv/deep/ro", str(ro), read_only=True),      # parents created
        RootMount("/etc/hosts", str(hosts), read_only=True),     # a file onto a new file
        RootMount("/scratch", "size=1m,mode=1777", tmpfs=True),
        RootMount("/scratch/ro", "", tmpfs=True, read_only=True),   # on an earlier mount
        RootMount("/data/sub", tmpfs=True),
    ))
    r = sh(client, "cat /data/in /srv/deep/ro/f /etc/hosts; echo out > /data/out;"
           " echo x > /scratch/x && cat /scratch/x; touch /data/sub/y && echo sub-ok;"
           " touch /srv/deep/ro/g 2>&1; { echo z >> /etc/hosts; } 2>&1; touch /scratch/ro/z 2>&1;"
           " grep ' /scratch ' /proc/self/mountinfo | grep -c tmpfs", root=root)
    out = r.stdout.decode()
    assert out.startswith("from the host\nread only\n127.0.0.1 pod\nx\nsub-ok\n"), out
    assert out.count("Read-only file system") == 3, out
    assert out.endswith("1\n"), out
    assert (data / "out").read_text() == "out\n"
    assert not (ro / "g").exists() and hosts.read_text() == "127.0.0.1 pod\n"
    # the mount points were made in the rootfs, the tmpfs contents went with the namespace
    assert (rootfs / "srv/deep/ro").is_dir() and (rootfs / "etc/hosts").is_file()
    assert list((rootfs / "scratch").iterdir()) == [] and not (data / "sub" / "y").exists()


def test_a_read_only_root_keeps_its_mounts_writable(client, rootfs):
    root = ContainerRoot(str(rootfs), mounts=(RootMount("/scratch", tmpfs=True),),
                         read_only=True)
    r = sh(client, "touch /new 2>&1; touch /etc/marker 2>&1; touch /scratch/f && echo tmp-ok;"
           " echo 1 > /dev/null && echo dev-ok; cat /proc/self/stat > /dev/null && echo proc-ok",
           root=root)
    out = r.stdout.decode()
    assert out.count("Read-only file system") == 2, out
    assert out.endswith("tmp-ok\ndev-ok\nproc-ok\n"), out
    assert not (rootfs / "new").exists()
    # the agent's own root is untouched
    assert client.exec(["sh", "-c", f"touch {rootfs}/new && echo ok"]).stdout == b"ok\n"


def test_a_hostile_rootfs_cannot_place_a_mount_outside_it(client, rootfs, tmp_path):
    token = uuid.uuid4().hex[:12]
    outside = tmp_path / "outside"            # rootfs/../outside on the host
    outside.mkdir()
    shutil.rmtree(rootfs / "etc")
    os.symlink("/", rootfs / "etc")                       # absolute: /etc -> /
    os.symlink("../../../../../../..", rootfs / "up")     # relative, far above the root
    os.symlink("../outside", rootfs / "side")             # next to the root on the host
    (rootfs / "dir").mkdir()
    (rootfs / "outside").mkdir()          # where those links lead inside the root
    os.symlink("/../../outside", rootfs / "dir" / "abs-up")
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("bound\n")
    root = ContainerRoot(str(rootfs), mounts=(
        RootMount(f"/etc/{token}-a", tmpfs=True),
        RootMount(f"/up/{token}-b", tmpfs=True),
        RootMount(f"/side/{token}-c", str(src)),
        RootMount(f"/dir/abs-up/{token}-d", tmpfs=True),
        RootMount(f"/../../{token}-e", tmpfs=True),
        RootMount(f"/dir/../../outside/{token}-f", tmpfs=True),
    ))
    r = sh(client, "ls / /outside; cat /outside/*-c/file", root=root)
    out = r.stdout.decode()
    for name in "abe":
        assert f"{token}-{name}" in out.split("/outside:")[0], out   # all at the new root
    for name in "cdf":
        assert f"{token}-{name}" in out.split("/outside:")[1], out
    assert out.endswith("bound\n"), out
    # nothing on the host outside the root: not at /, not next to the root, not above it
    leaked = [p for p in (Path("/"), tmp_path, outside, tmp_path.parent, tmp_path.parents[1])
              for q in p.iterdir() if token in q.name]
    assert leaked == []
    assert sorted(q.name for q in rootfs.iterdir() if token in q.name) == \
        [f"{token}-{n}" for n in "abe"]
    assert sorted(q.name for q in (rootfs / "outside").iterdir()) == \
        [f"{token}-{n}" for n in "cdf"]
    # a destination that is the root itself is refused
    for dest in ("/", "/etc", "/up/.."):
        with pytest.raises(ExecFailed) as e:
            client.exec(["true"], root=ContainerRoot(str(rootfs), mounts=(
                RootMount(dest, tmpfs=True),)))
        assert e.value.kind == "bad_root" and "new root itself" in str(e.value), dest


def test_join_sees_the_members_root_and_mounts(client, rootfs):
    root = ContainerRoot(str(rootfs), mounts=(RootMount("/shared", tmpfs=True),))
    member = client.exec_stream(["sh", "-c", "echo hello > /shared/f; echo up; exec sleep 60"],
                                root=root)
    try:
        assert next(iter(member)) == ("stdout", b"up\n")
        r = sh(client, "cat /shared/f /etc/marker; pwd", join_pid=member.pid)
        assert r.stdout == f"hello\n{MARK}\n/\n".encode(), r
        r = sh(client, "pwd", join_pid=member.pid, cwd="/etc")
        assert r.stdout == b"/etc\n"
    finally:
        member.kill()
        member.wait(10)
    with pytest.raises(ExecFailed) as e:
        client.exec(["true"], join_pid=member.pid)     # gone now
    assert e.value.kind == "bad_root" and f"/proc/{member.pid}/ns/mnt" in str(e.value)


def test_a_missing_root_fails_naming_the_step_and_path(client, tmp_path):
    with pytest.raises(ExecFailed) as e:
        client.exec(["true"], root=ContainerRoot(str(tmp_path / "nope")))
    assert e.value.kind == "bad_root"
    assert str(tmp_path / "nope") in str(e.value) and "No such file" in str(e.value)


def test_a_missing_bind_source_fails_naming_it(client, rootfs, tmp_path):
    with pytest.raises(ExecFailed) as e:
        client.exec(["true"], root=ContainerRoot(str(rootfs), mounts=(
            RootMount("/x", str(tmp_path / "gone")),)))
    assert e.value.kind == "bad_root" and f"mount source {tmp_path / 'gone'}" in str(e.value)


# ---- hostile requests: bad_request naming the field, nothing started ----------------------

def _mount(flags, src, dest):
    return (G.MOUNT, flags.to_bytes(4, "little") + src + b"\0" + dest)


@pytest.mark.parametrize("fields, msg", [
    ([(G.ROOT, b"relative")], "bad ROOT field"),
    ([(G.ROOT, b"")], "bad ROOT field"),
    ([(G.ROOT, b"/a\0b")], "bad ROOT field"),
    ([(G.ROOT, b"/" + b"a" * 4096)], "bad ROOT field"),
    ([(G.ROOT, b"/r")] + [_mount(0, b"/s", b"/d")] * 65, "too many MOUNT fields"),
    ([(G.ROOT, b"/r"), (G.MOUNT, b"\x00\x00\x00")], "bad MOUNT field (shorter"),
    ([(G.ROOT, b"/r"), (G.MOUNT, b"\x00\x00\x00\x00/s/d")], "bad MOUNT field (no NUL"),
    ([(G.ROOT, b"/r"), _mount(4, b"/s", b"/d")], "bad MOUNT field (unknown flags"),
    ([(G.ROOT, b"/r"), _mount(0, b"s", b"/d")], "bad MOUNT field (a bind's source"),
    ([(G.ROOT, b"/r"), _mount(0, b"", b"/d")], "bad MOUNT field (a bind's source"),
    ([(G.ROOT, b"/r"), _mount(2, b"", b"d")], "bad MOUNT field (destination"),
    ([(G.ROOT, b"/r"), _mount(2, b"", b"/d\0e")], "bad MOUNT field (destination"),
    ([(G.ROOT, b"/r"), _mount(2, b"", b"")], "bad MOUNT field (destination"),
    ([(G.ROOT, b"/r"), _mount(2, b"x" * 4097, b"/d")], "bad MOUNT field (source"),
    ([_mount(2, b"", b"/d")], "MOUNT without ROOT"),
    ([(G.ROOT_READONLY, 1)], "ROOT_READONLY without ROOT"),
    ([(G.ROOT, b"/r"), (G.ROOT_READONLY, 2)], "bad ROOT_READONLY field"),
    ([(G.ROOT, b"/r"), (G.ROOT_READONLY, b"\x01")], "bad ROOT_READONLY field"),
    ([(G.JOIN, 0)], "bad JOIN field"),
    ([(G.JOIN, 1)], "bad JOIN field"),
    ([(G.JOIN, 2**40)], "bad JOIN field"),
    ([(G.JOIN, b"\x05\x00")], "bad JOIN field"),
    ([(G.JOIN, os.getpid()), (G.ROOT, b"/r")], "JOIN and ROOT exclude"),
], ids=["root-relative", "root-empty", "root-nul", "root-4097", "mounts-65", "mount-3-bytes",
        "mount-no-nul", "mount-flag-4", "bind-relative", "bind-empty", "dest-relative",
        "dest-nul", "dest-empty", "tmpfs-data-4097", "mount-no-root", "ro-no-root", "ro-2",
        "ro-1-byte", "join-0", "join-1", "join-huge", "join-2-bytes", "join-and-root"])
def test_the_agent_refuses_hostile_fields(agent, fields, msg):
    sock = agent.raw()
    try:
        sock.sendall(P.frame(3, T.EXEC, P.encode([(G.ARGV, "true")] + fields)))
        t, got = first_frame(sock, 3)
        assert t == T.ERROR and P.text(got[G.KIND]) == "bad_request", (t, got)
        assert msg in P.text(got[G.MESSAGE]), got
        sock.sendall(P.frame(4, T.EXEC, P.encode([(G.ARGV, "true")])))
        assert first_frame(sock, 4)[0] == T.STARTED     # the agent goes on
    finally:
        sock.close()
    assert agent.alive()
