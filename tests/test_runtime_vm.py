"""vmm-runtime with real guests, driven as containerd's runc shim drives runc: create with
the container's stdio, read the pid file, wait for that pid as a subreaper
(support/runtime_shim.py), start, kill, delete. The process runs in our guest kernel, not
the host's; its exit status is the monitor's; nothing is left running after delete."""
import array
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from support.proctable import vm_engine
from support.rootfs_dir import unpack_busybox_rootfs
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
T = 120


def env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return unpack_busybox_rootfs(tmp_path_factory.mktemp("runtime-rootfs"))


def make_bundle(path, rootfs, args, terminal=False, **extra):
    path.mkdir()
    os.symlink(rootfs, path / "rootfs")
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
           "hostname": "ctr",
           "process": {"args": args, "cwd": "/", "terminal": terminal,
                       "env": ["PATH=/bin:/usr/bin:/sbin", "GREETING=hi"]},
           "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
           "annotations": {"vmm.engine": ENGINE}}
    cfg.update(extra)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def rt(root, *args, check=True):
    glob = []
    if args and args[0] == "--log":   # a global option: before the command
        glob, args = list(args[:2]), args[2:]
    r = subprocess.run([sys.executable, "-m", "vmm.runtime", "--root", str(root), *glob, *args],
                       capture_output=True, text=True, timeout=T, env=env())
    if check:
        assert r.returncode == 0, (args, r.stderr)
    return r


class Shim:
    def __init__(self, tmp_path, root, bundle, cid, *extra):
        self.out, self.err = tmp_path / f"{cid}.out", tmp_path / f"{cid}.err"
        self.p = subprocess.Popen([sys.executable, "-m", "support.runtime_shim", str(root), str(bundle),
                                   cid, str(self.out), str(self.err), *extra],
                                  stdout=subprocess.PIPE, text=True, env=env(), cwd=TESTS)
        line = self.p.stdout.readline().strip()
        assert line.startswith("pid="), (line, self.err.read_text() if self.err.exists() else "")
        self.pid = int(line[4:])

    def exit_code(self) -> int:
        line = self.p.stdout.readline().strip()
        self.p.wait(T)
        assert line.startswith("exit="), line
        return int(line[5:])


def state(root, cid):
    return json.loads(rt(root, "state", cid).stdout)


def test_run_to_exit_in_our_kernel(tmp_path, rootfs):
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "b", rootfs,
                         ["sh", "-c", "uname -r; hostname; echo $GREETING; echo oops >&2; exit 7"])
    shim = Shim(tmp_path, root, bundle, "c1")
    st = state(root, "c1")
    assert (st["status"], st["pid"], st["rootfs"]) == ("created", shim.pid, str(bundle / "rootfs"))
    assert vm_engine(shim.pid) == ENGINE   # the VM is up, on our engine, and the monitor owns it
    rt(root, "start", "c1")
    assert shim.exit_code() == 7
    out = shim.out.read_text().split()
    assert out[0].endswith("-vmm") and out[0] != os.uname().release   # our guest kernel
    assert out[1:] == ["ctr", "hi"]
    assert shim.err.read_text() == "oops\n"
    assert state(root, "c1")["status"] == "stopped"
    r = rt(root, "start", "c1", check=False)
    assert r.returncode == 1 and "cannot start a container that has stopped" in r.stderr
    rt(root, "delete", "c1")
    assert rt(root, "list", "-q").stdout == ""


def test_start_that_cannot_exec_stops_the_container(tmp_path, rootfs):
    """As runc's init exits when its exec fails: start reports why, the container is
    stopped and its VM gone (Docker then removes it; before, the VM stayed up for good)."""
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "b", rootfs, ["/etc/passwd"])   # there, not executable
    shim = Shim(tmp_path, root, bundle, "c9")
    r = rt(root, "start", "c9", check=False)
    assert r.returncode == 1 and "Permission denied" in r.stderr, r.stderr
    assert shim.exit_code() == 255
    assert state(root, "c9")["status"] == "stopped"
    assert not os.path.exists(f"/proc/{shim.pid}")
    rt(root, "delete", "c9")


def test_kill_running_then_delete_leaves_nothing(tmp_path, rootfs):
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "b", rootfs, ["sleep", "1000"])
    shim = Shim(tmp_path, root, bundle, "c2")
    rt(root, "start", "c2")
    assert state(root, "c2")["status"] == "running"
    r = rt(root, "delete", "c2", check=False)
    assert r.returncode == 1 and "cannot delete container c2 that is not stopped: running" in r.stderr
    rt(root, "kill", "c2", "TERM")
    assert shim.exit_code() == 128 + 15
    assert state(root, "c2")["status"] == "stopped"
    rt(root, "delete", "c2")
    assert not os.path.exists(f"/proc/{shim.pid}")
    assert not (root / "c2").exists()


def test_delete_force_and_delete_created(tmp_path, rootfs):
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "b", rootfs, ["sleep", "1000"])
    running = Shim(tmp_path, root, bundle, "c3")
    rt(root, "start", "c3")
    created = Shim(tmp_path, root, bundle, "c4")
    rt(root, "delete", "--force", "c3")
    rt(root, "delete", "c4")           # as runc: a created container can be deleted
    assert running.exit_code() == 128 + 9
    assert created.exit_code() == 128 + 9
    for pid in (running.pid, created.pid):
        assert not os.path.exists(f"/proc/{pid}")
    assert rt(root, "list", "-q").stdout == ""


def test_terminal_through_console_socket(tmp_path, rootfs):
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "b", rootfs, ["sh"], terminal=True)
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    srv.settimeout(T)
    shim = None
    try:
        import threading
        got = {}

        def accept():
            conn, _ = srv.accept()
            fds = array.array("i")
            msg, anc, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(4))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:4])
            got["fd"] = fds[0]
            conn.close()
        t = threading.Thread(target=accept)
        t.start()
        shim = Shim(tmp_path, root, bundle, "c5", "--console-socket", sock_path)
        t.join(T)
        master = got["fd"]
        rt(root, "start", "c5")
        os.write(master, b"tty; echo in-$((6*7))-guest; exit 3\n")
        data, deadline = b"", time.monotonic() + 60
        while b"in-42-guest" not in data and time.monotonic() < deadline:
            data += os.read(master, 4096)
        assert b"in-42-guest" in data and b"/dev/pts/" in data
        assert shim.exit_code() == 3
        os.close(master)
    finally:
        srv.close()
        if shim and shim.p.poll() is None:
            rt(root, "delete", "--force", "c5", check=False)


def test_exec_attached_detached_and_failing(tmp_path, rootfs):
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "b", rootfs, ["sleep", "1000"])
    shim = Shim(tmp_path, root, bundle, "c6")
    try:
        # as runc: exec works in a created container too
        r = rt(root, "exec", "-e", "X=42", "--cwd", "/tmp", "c6", "sh", "-c", "echo $X $(pwd); exit 4",
               check=False)
        assert (r.returncode, r.stdout) == (4, "42 /tmp\n")
        rt(root, "start", "c6")
        proc = tmp_path / "process.json"
        proc.write_text(json.dumps({"args": ["sh", "-c", "echo detached >&2; exit 9"], "cwd": "/",
                                    "env": ["PATH=/bin"], "user": {"uid": 65534, "gid": 65534}}))
        shim_exec = subprocess.Popen(
            [sys.executable, "-c", EXEC_SHIM, str(root), str(proc), str(tmp_path / "exec.pid"),
             str(tmp_path / "exec.err")], stdout=subprocess.PIPE, text=True, env=env())
        out = shim_exec.communicate(timeout=T)[0].split()
        assert out[0] == "exec=0" and out[1] == "exit=9", out
        assert (tmp_path / "exec.err").read_text() == "detached\n"
        r = rt(root, "exec", "c6", "nosuch", check=False)
        assert r.returncode == 255
        assert 'exec failed: unable to start container process: exec: \\"nosuch\\"' in r.stderr
        r = rt(root, "exec", "c6", check=False)
        assert r.returncode == 255 and "process args cannot be empty" in r.stderr
        r = rt(root, "exec", "-u", "65534:65534", "c6", "id", "-u", check=False)
        assert (r.returncode, r.stdout) == (0, "65534\n")
        assert state(root, "c6")["status"] == "running"   # execs do not end the container
    finally:
        rt(root, "delete", "--force", "c6", check=False)
    assert shim.exit_code() == 128 + 9
    r = rt(root, "exec", "c6", "true", check=False)
    assert r.returncode == 1 and "container does not exist" in r.stderr


# The shim's exec: `exec --detach --pid-file`, then wait for that pid as a subreaper.
EXEC_SHIM = """
import ctypes, os, subprocess, sys
root, proc, pid_file, err = sys.argv[1:]
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
with open(err, "wb") as e:
    r = subprocess.run([sys.executable, "-m", "vmm.runtime", "--root", root, "exec", "--detach",
                        "--process", proc, "--pid-file", pid_file, "c6"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=e)
print(f"exec={r.returncode}", flush=True)
pid = int(open(pid_file).read())
while True:
    got, status = os.waitpid(-1, 0)
    if got == pid:
        break
print(f"exit={os.waitstatus_to_exitcode(status)}", flush=True)
"""


def test_bind_mounts_directory_shared_file_copied_tmpfs_made(tmp_path, rootfs):
    root = tmp_path / "root"
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_text("from-host-dir\n")
    rw = tmp_path / "rw"
    rw.mkdir()
    greeting = tmp_path / "greeting"
    greeting.write_text("from-host-file\n")
    bundle = make_bundle(tmp_path / "b", rootfs, [
        "sh", "-c", "cat /data/x /etc/greeting; touch /data/y 2>/dev/null && echo ro-broken; "
        "echo written > /rw/out; mount | grep -c ' /scratch type tmpfs'"],
        mounts=[{"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "ro"]},
                {"destination": "/rw", "type": "bind", "source": str(rw), "options": ["rbind"]},
                {"destination": "/etc/greeting", "type": "bind", "source": str(greeting),
                 "options": ["bind", "ro"]},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                 "options": ["size=1m"]}])
    shim = Shim(tmp_path, root, bundle, "c7")
    rt(root, "start", "c7")
    assert shim.exit_code() == 0, shim.err.read_text()
    assert shim.out.read_text().split() == ["from-host-dir", "from-host-file", "1"]
    assert (rw / "out").read_text() == "written\n"      # a rw directory bind is live both ways
    assert not (data / "y").exists()
    rt(root, "delete", "c7")


# What the process reads about itself in the guest: its ids, groups, capability sets,
# no_new_privs, umask, and the mode a file it creates gets.
SELF_STATUS = ("grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' "
               "/proc/self/status; echo umask=$(umask); touch /tmp/u; echo mode=$(stat -c %a /tmp/u)")
ONE_CAP = ["CAP_NET_BIND_SERVICE"]


def self_status(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.replace("=", ":", 1).partition(":")
        if sep:
            out[key.strip()] = " ".join(value.split())
    return out


def test_process_privileges_applied_in_the_guest(tmp_path, rootfs):
    """additionalGids, umask, noNewPrivileges and the capability sets of a non-root uid,
    read back from /proc/self/status inside the guest; `exec --process` gets its own."""
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "b", rootfs, ["sh", "-c", SELF_STATUS + "; sleep 1000"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"].update({
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o27},
        "noNewPrivileges": True,
        "capabilities": {"bounding": ONE_CAP + ["CAP_CHOWN"], "effective": ONE_CAP,
                         "permitted": ONE_CAP, "inheritable": ONE_CAP, "ambient": ONE_CAP}})
    (bundle / "config.json").write_text(json.dumps(cfg))
    shim = Shim(tmp_path, root, bundle, "p1")
    try:
        rt(root, "start", "p1")
        deadline = time.monotonic() + T
        while "mode" not in shim.out.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        st = self_status(shim.out.read_text())
        assert st["Uid"] == "1000 1000 1000 1000" and st["Gid"] == "1000 1000 1000 1000", st
        assert st["Groups"] == "10 20"
        assert int(st["CapBnd"], 16) == 1 << 10 | 1
        for key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(st[key], 16) == 1 << 10, (key, st)
        assert (st["NoNewPrivs"], st["umask"], st["mode"]) == ("1", "0027", "640")
        # exec --process: that process's own privileges (root, one bounding cap, no groups)
        proc = tmp_path / "process.json"
        proc.write_text(json.dumps({"args": ["sh", "-c", SELF_STATUS], "cwd": "/", "env": ["PATH=/bin"],
                                    "user": {"uid": 0, "gid": 0, "umask": 0o77},
                                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                                     "permitted": ["CAP_KILL"]}}))
        r = rt(root, "exec", "--process", str(proc), "p1")
        st = self_status(r.stdout)
        assert st["Groups"] == "" and st["NoNewPrivs"] == "0" and st["umask"] == "0077", st
        for key in ("CapPrm", "CapEff", "CapBnd"):
            assert int(st[key], 16) == 1 << 5, (key, st)
        # exec without --process: the container process's privileges, as runc exec
        r = rt(root, "exec", "-u", "1000:1000", "p1", "sh", "-c", SELF_STATUS)
        st = self_status(r.stdout)
        assert (st["Groups"], st["NoNewPrivs"], st["umask"]) == ("10 20", "1", "0027"), st
        assert int(st["CapEff"], 16) == 1 << 10
        # an unknown capability is left out, with a warning in the log (runc 1.1 warns too)
        proc.write_text(json.dumps({"args": ["sh", "-c", SELF_STATUS], "cwd": "/",
                                    "capabilities": {"bounding": ["CAP_FLY", "CAP_KILL"]}}))
        log = tmp_path / "exec.log"
        r = rt(root, "--log", str(log), "exec", "--process", str(proc), "p1")
        assert int(self_status(r.stdout)["CapBnd"], 16) == 1 << 5
        assert "unknown capability 'CAP_FLY' ignored" in log.read_text()
    finally:
        rt(root, "delete", "--force", "p1", check=False)
    assert shim.exit_code() == 128 + 9


def test_read_only_root_with_writable_mounts(tmp_path, rootfs):
    """root.readonly: a write to / fails with EROFS as under runc, while a bundle's rw bind
    mount, its tmpfs, a copied-in file and the guest's /tmp and /dev/shm stay as they are."""
    root = tmp_path / "root"
    rw = tmp_path / "rw"
    rw.mkdir()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost from-host\n")
    script = ("touch /x; echo touch=$?; mkdir /etc/new 2>/dev/null; echo mkdir=$?; "
              "echo ok > /rw/out && echo rw=0; echo ok > /scratch/f && echo tmpfs=0; "
              "echo ok > /tmp/f && echo tmp=0; echo ok > /dev/shm/f && echo shm=0; "
              "grep -c from-host /etc/hosts")
    bundle = make_bundle(tmp_path / "b", rootfs, ["sh", "-c", script], mounts=[
        {"destination": "/rw", "type": "bind", "source": str(rw), "options": ["rbind"]},
        {"destination": "/etc/hosts", "type": "bind", "source": str(hosts), "options": ["bind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}])
    shim = Shim(tmp_path, root, bundle, "r1")
    rt(root, "start", "r1")
    assert shim.exit_code() == 0, shim.err.read_text()
    assert shim.out.read_text().split() == ["touch=1", "mkdir=1", "rw=0", "tmpfs=0", "tmp=0",
                                            "shm=0", "1"]
    assert "touch: /x: Read-only file system" in shim.err.read_text()
    assert (rw / "out").read_text() == "ok\n"
    assert not (rootfs / "x").exists()
    rt(root, "delete", "r1")
    # the same bundle with readonly false: the root is writable (into the scratch layer)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"]["readonly"] = False
    cfg["process"]["args"] = ["sh", "-c", "touch /x && echo touch=$?"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    shim = Shim(tmp_path, root, bundle, "r2")
    rt(root, "start", "r2")
    assert shim.exit_code() == 0 and shim.out.read_text() == "touch=0\n", shim.err.read_text()
    assert not (rootfs / "x").exists()
    rt(root, "delete", "r2")
