"""SharedDir and virtiofsd without a guest (fast): the config's validation, the qemu
engine's arguments, and real virtiofsd processes started, sandboxed and ended.

A plain Unix connection to virtiofsd's socket is enough to make it fork its sandboxed
worker (it does so as soon as a front end connects), so the worker's namespaces, its
read-only view and its ending are checked here without booting anything.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import vmm
from vmm import QemuOptions
from vmm.devices import SharedDir, check_tag
from vmm.engines import virtiofsd as vfs
from vmm.engines.qemu import qemu_argv, vhost_user_args
from vmm.engines.virtiofsd import SharedDirServers, Virtiofsd, VirtiofsdError, virtiofsd_argv
from vmm.errors import ConfigError, EngineUnavailable
from vmm.machine import MachineSpec

from support.proctable import alive, children, wait_gone

HAVE_VIRTIOFSD = os.access(vfs.DEFAULT_BINARY, os.X_OK)
needs_virtiofsd = pytest.mark.skipif(not HAVE_VIRTIOFSD, reason="no /usr/lib/qemu/virtiofsd")
REPO = Path(__file__).resolve().parent.parent


# --- the config ------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["a", "x" * 36, "vmm-fs-0", "src.d", "ü" * 18])
def test_good_tags(tag):
    check_tag(tag)
    assert SharedDir("/tmp", tag).tag == tag


@pytest.mark.parametrize("tag, message", [
    ("", "1 to 36 bytes"), ("x" * 37, "1 to 36 bytes"), ("ü" * 19, "not 38"),
    ("a,b", "','"), ("a:b", "':'"), ("a\0b", "NUL"), ("a b", "' '"), (7, "must be a str"),
])
def test_bad_tags_are_config_errors(tag, message):
    with pytest.raises(ConfigError, match=message):
        SharedDir("/tmp", tag)


def test_shared_dir_values():
    s = SharedDir(Path("/srv/x"), "x")
    assert s.host_path == "/srv/x" and s.read_only is False and s.log_path is None
    assert s == SharedDir("/srv/x", "x") and hash(s) == hash(SharedDir("/srv/x", "x"))
    with pytest.raises(ConfigError, match="read_only"):
        SharedDir("/srv/x", "x", read_only="yes")
    with pytest.raises(ConfigError, match="empty"):
        SharedDir("", "x")
    with pytest.raises(ConfigError, match="must be a path"):
        SharedDir(None, "x")


def _machine(kernel_path, **kw):
    return vmm.Machine(kernel_path, engine="qemu", **kw)


@pytest.fixture
def fake_kernel(tmp_path):
    """Machine() checks the kernel before the shared dirs: use the real one if built."""
    from support.guest_kernel import built_guest_kernel
    return built_guest_kernel()


def test_machine_refuses_a_missing_source(fake_kernel, tmp_path):
    with pytest.raises(ConfigError, match=r"shared dir 'src': the host directory .*/nope does not exist"):
        _machine(fake_kernel, shared_dirs=[SharedDir(tmp_path / "nope", "src")])


def test_machine_refuses_a_file_as_source(fake_kernel, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        _machine(fake_kernel, shared_dirs=[SharedDir(tmp_path / "f", "src")])


def test_machine_refuses_duplicate_tags(fake_kernel, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="two shared dirs have the tag 'src'"):
        _machine(fake_kernel, shared_dirs=[SharedDir(tmp_path / "a", "src"),
                                           SharedDir(tmp_path / "b", "src")])


def test_machine_refuses_what_is_not_a_shared_dir(fake_kernel, tmp_path):
    with pytest.raises(ConfigError, match="SharedDir"):
        _machine(fake_kernel, shared_dirs=[str(tmp_path)])


def test_an_engine_without_shared_dirs_refuses_them(fake_kernel, tmp_path, monkeypatch):
    from vmm.engines.qemu import QemuEngine
    monkeypatch.setattr(QemuEngine, "supports_shared_dirs", False)
    with pytest.raises(ConfigError, match="cannot attach shared directories"):
        _machine(fake_kernel, shared_dirs=[SharedDir(tmp_path, "src")])


# --- the qemu engine's arguments --------------------------------------------------------------
def test_fs_devices_become_vhost_user_fs_devices():
    assert vhost_user_args([{"kind": "fs", "socket": "/run/fs0.sock", "options": {"tag": "src"}}]) == [
        "-chardev", "socket,id=vu0,path=/run/fs0.sock",
        "-device", "vhost-user-fs-device,chardev=vu0,tag=src"]


def test_an_fs_device_needs_a_tag_and_no_comma_in_options():
    with pytest.raises(ConfigError, match="no tag"):
        vhost_user_args([{"kind": "fs", "socket": "/s"}])
    with pytest.raises(ConfigError, match="contains a comma"):
        vhost_user_args([{"kind": "fs", "socket": "/s", "options": {"tag": "a,b"}}])


def test_qemu_options_take_the_short_fs_form():
    opts = QemuOptions(vhost_user=[("fs", "/run/fsd.sock", "ext")])
    assert opts.vhost_user == ({"kind": "fs", "socket": "/run/fsd.sock", "options": {"tag": "ext"}},)
    with pytest.raises(ConfigError, match="tag"):
        QemuOptions(vhost_user=[("fs", "/run/fsd.sock", "a:b")])
    with pytest.raises(ConfigError, match="neither a dict"):
        QemuOptions(vhost_user=[("blk", "/run/b.sock")])


def test_shared_dirs_come_after_own_devices_and_before_the_options():
    spec = MachineSpec(kernel="/k", options=QemuOptions(vhost_user=[("fs", "/run/ext.sock", "ext")],
                                                        user=None))
    argv = qemu_argv(spec, "qemu", debugcon_fd=3,
                     devices=[{"kind": "vsock", "socket": "/r/vsock.sock"}],
                     shared=[{"kind": "fs", "socket": "/r/fs0.sock", "options": {"tag": "src"}}])
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[-3:] == ["vhost-user-vsock-device,chardev=vu0",
                            "vhost-user-fs-device,chardev=vu1,tag=src",
                            "vhost-user-fs-device,chardev=vu2,tag=ext"]
    assert "socket,id=vu1,path=/r/fs0.sock" in argv


# --- virtiofsd's command line -----------------------------------------------------------------
def test_virtiofsd_argv_as_root_and_as_a_user():
    argv = virtiofsd_argv("/v", "/srv/a,b\\c", 5, as_user=False)
    assert argv[:2] == ["/v", "--fd=5"]
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    # libfuse splits -o at commas: the source's comma and backslash are escaped
    assert "source=/srv/a\\,b\\\\c" in opts
    assert {"sandbox=namespace", "cache=auto", "timeout=0", "modcaps=-mknod"} <= set(opts)
    assert not any(a.startswith("--rlimit-nofile") for a in argv)
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert f"--rlimit-nofile={hard}" in virtiofsd_argv("/v", "/s", 5, as_user=True)


def test_a_missing_virtiofsd_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(vfs.BINARY_ENV, str(tmp_path / "no-virtiofsd"))
    with pytest.raises(EngineUnavailable, match="shared directories need virtiofsd.*qemu-system-common"):
        Virtiofsd.start(SharedDir(tmp_path, "t"), str(tmp_path / "s.sock"))
    assert not (tmp_path / "s.sock").exists()


# --- real virtiofsd processes -----------------------------------------------------------------
def _worker_of(pid: int, timeout=10.0) -> int:
    """virtiofsd's sandboxed worker, forked once a front end connected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(pid)
        if kids:
            return kids[0]
        time.sleep(0.01)
    raise AssertionError("virtiofsd forked no worker")


def _connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def _worker_ready(fsd, timeout=10.0):
    """The worker has entered its sandbox and serves (its loop logs 'Entry')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "virtio_loop: Entry" not in fsd.tail(50):
        assert fsd.alive(), fsd.tail()
        time.sleep(0.01)
    assert "virtio_loop: Entry" in fsd.tail(50), fsd.tail()


@needs_virtiofsd
def test_virtiofsd_listens_when_start_returns_and_stop_ends_it_and_its_worker(tmp_path):
    (tmp_path / "share").mkdir()
    sock = tmp_path / "fs.sock"
    fsd = Virtiofsd.start(SharedDir(tmp_path / "share", "t"), str(sock), log_path=str(tmp_path / "fsd.log"))
    try:
        assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o600
        conn = _connect(sock)   # no retry: it listens already
        worker = _worker_of(fsd.pid)
        _worker_ready(fsd)
        assert fsd.alive() and alive(worker)
    finally:
        fsd.stop()
    assert wait_gone([fsd.pid, worker], 0) == []
    assert not sock.exists()
    assert "Waiting for vhost-user socket connection" in (tmp_path / "fsd.log").read_text()
    fsd.stop()   # idempotent
    conn.close()


@needs_virtiofsd
def test_a_read_only_share_is_read_only_in_virtiofsds_own_view(tmp_path):
    """The worker's root (the shared dir after its pivot_root) is a read-only mount: the
    server itself cannot write there, whatever the guest mounts. The host's own view of
    the directory stays writable."""
    (tmp_path / "share").mkdir()
    views = {}
    for ro in (True, False):
        fsd = Virtiofsd.start(SharedDir(tmp_path / "share", f"t{ro}", read_only=ro),
                              str(tmp_path / f"fs{ro}.sock"))
        try:
            conn = _connect(tmp_path / f"fs{ro}.sock")
            worker = _worker_of(fsd.pid)
            _worker_ready(fsd)
            root = [line.split() for line in Path(f"/proc/{worker}/mountinfo").read_text().splitlines()
                    if line.split()[4] == "/"]
            assert root, "the worker has no root mount"
            views[ro] = root[0][5].split(",")
        finally:
            fsd.stop()
            conn.close()
    assert "ro" in views[True] and "rw" in views[False], views
    (tmp_path / "share" / "still-writable").write_text("host")


@needs_virtiofsd
def test_a_source_removed_before_start_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Virtiofsd.start(SharedDir(tmp_path / "gone", "t"), str(tmp_path / "s.sock"))
    assert not (tmp_path / "s.sock").exists()


@needs_virtiofsd
def test_a_virtiofsd_that_fails_to_start_raises_with_its_last_lines(tmp_path, monkeypatch):
    (tmp_path / "share").mkdir()
    # An option virtiofsd refuses at start: its own message must reach the caller.
    monkeypatch.setattr(vfs, "CACHE_OPTIONS", ("cache=sometimes",))
    with pytest.raises(VirtiofsdError, match=r"failed to start \(exit status \d+\).*cache") as e:
        Virtiofsd.start(SharedDir(tmp_path / "share", "t"), str(tmp_path / "s.sock"),
                        log_path=str(tmp_path / "l.log"))
    assert "l.log" in str(e.value)
    assert not (tmp_path / "s.sock").exists()


@needs_virtiofsd
def test_servers_start_all_or_none_and_remove_their_directory(tmp_path):
    (tmp_path / "a").mkdir()
    good = SharedDir(tmp_path / "a", "a")
    bad = SharedDir(tmp_path / "missing", "b")
    servers = SharedDirServers([good, bad])
    with pytest.raises(ConfigError):
        servers.start()
    assert servers.servers and not servers.servers[0].alive()
    servers = SharedDirServers([good, SharedDir(tmp_path / "a", "c", read_only=True)])
    servers.start()
    run_dir = os.path.dirname(servers.servers[0].socket_path)
    assert oct(os.stat(run_dir).st_mode & 0o777) == "0o700"
    assert [d["options"]["tag"] for d in servers.devices()] == ["a", "c"]
    assert [i["log"] for i in servers.info()] == [os.path.join(run_dir, "virtiofsd-fs0.log"),
                                                   os.path.join(run_dir, "virtiofsd-fs1.log")]
    pids = [s.pid for s in servers.servers]
    servers.stop()
    assert wait_gone(pids, 0) == [] and not os.path.exists(run_dir)


OWNER = """
import sys, socket, time
sys.path.insert(0, {repo!r})
from vmm.devices import SharedDir
from vmm.engines.virtiofsd import Virtiofsd
fsd = Virtiofsd.start(SharedDir({share!r}, "t", read_only={ro}), {sock!r})
if {connect}:
    c = socket.socket(socket.AF_UNIX); c.connect({sock!r})
print(fsd.pid, flush=True)
time.sleep(600)
"""


def _run_owner(tmp_path, ro=False, connect=True, prefix=()):
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    os.chmod(tmp_path, 0o777)
    os.chmod(share, 0o777)
    code = OWNER.format(repo=str(REPO), share=str(share), sock=str(tmp_path / "o.sock"), ro=ro,
                        connect=connect)
    return subprocess.Popen([*prefix, sys.executable if not prefix else "/usr/bin/python3", "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_owner_and_check(owner: subprocess.Popen, connect: bool) -> None:
    """SIGKILL the owner once its virtiofsd (and, connected, its worker) runs: none of
    them may outlive it."""
    try:
        pid = int(owner.stdout.readline() or 0)
        assert pid, owner.stderr.read()
        pids = [pid, _worker_of(pid)] if connect else [pid]
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert wait_gone(pids) == [], "virtiofsd outlived its owner"
    finally:
        owner.kill()
        owner.wait()


@needs_virtiofsd
@pytest.mark.parametrize("ro, connect", [(False, False), (True, False), (False, True), (True, True)])
def test_nothing_outlives_an_owner_killed_with_sigkill(tmp_path, ro, connect):
    """Unconnected, virtiofsd waits in accept() on a socket it holds itself: only its
    death signal ends it. Connected (the owner holds the front end's end), its worker
    runs too: a user namespace (ro=True as root takes none) must not lose the signal."""
    _kill_owner_and_check(_run_owner(tmp_path, ro, connect), connect)


def _setpriv_works() -> bool:
    try:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "/usr/bin/python3", "-c", "import os"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


AS_USER = """
import os, sys, socket, time
sys.path.insert(0, {repo!r})
from vmm.devices import SharedDir
from vmm.engines.virtiofsd import Virtiofsd, VirtiofsdError
try:
    fsd = Virtiofsd.start(SharedDir({share!r}, "t", read_only={ro}), {sock!r})
except VirtiofsdError as e:
    print("ERROR", e)
    sys.exit(3)
c = socket.socket(socket.AF_UNIX); c.connect({sock!r})
deadline = time.monotonic() + 10
while "virtio_loop: Entry" not in fsd.tail(50) and fsd.alive() and time.monotonic() < deadline:
    time.sleep(0.01)
kids = open(f"/proc/{{fsd.pid}}/task/{{fsd.pid}}/children").read().split()
print(os.getuid(), fsd.alive(), kids, repr(fsd.tail(50)), flush=True)
fsd.stop()
def running(pid):  # a zombie has ended (its new parent reaps it)
    try:
        return open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
print("gone", [k for k in kids if running(k)])
"""


@needs_virtiofsd
@pytest.mark.skipif(os.geteuid() != 0 or not _setpriv_works(), reason="needs root to become nobody")
@pytest.mark.parametrize("ro", [False, True])
def test_an_ordinary_user_runs_virtiofsd_in_a_user_namespace(tmp_path, ro):
    """As uid 65534: virtiofsd's namespace sandbox inside a user namespace of its own
    (uid 0 there is the caller), the read-only bind in it too."""
    base = Path(tempfile.mkdtemp(prefix="vmm-fs-user-"))   # pytest's tmp is root's alone
    try:
        share = base / "share"
        share.mkdir()
        os.chmod(base, 0o777)
        os.chown(share, 65534, 65534)
        code = AS_USER.format(repo=str(REPO), share=str(share), sock=str(base / "u.sock"), ro=ro)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "/usr/bin/python3", "-c", code], capture_output=True, text=True,
                           timeout=60)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    first, second = r.stdout.splitlines()[:2]
    assert first.startswith("65534 True ['"), first   # alive, with its sandboxed worker
    assert "virtio_loop: Entry" in first
    assert second == "gone []"


@needs_virtiofsd
@pytest.mark.skipif(os.geteuid() != 0 or not _setpriv_works(), reason="needs root to become nobody")
@pytest.mark.parametrize("connect", [False, True])
def test_an_ordinary_users_virtiofsd_ends_with_its_owner(connect):
    """As uid 65534 (virtiofsd in a user namespace of its own) too."""
    base = Path(tempfile.mkdtemp(prefix="vmm-fs-user-"))
    try:
        os.chmod(base, 0o777)
        _kill_owner_and_check(_run_owner(base, False, connect, prefix=(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")), connect)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fake_virtiofsd(tmp_path, monkeypatch, body: str) -> None:
    """A stand-in virtiofsd (VMM_VIRTIOFSD): a shell script with the given body."""
    fake = tmp_path / "fake-virtiofsd"
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    monkeypatch.setenv(vfs.BINARY_ENV, str(fake))


def test_the_log_is_capped_like_a_console_file(tmp_path, monkeypatch):
    """However much virtiofsd writes, its log holds at most 2 x LOG_FILE_BYTES (the
    older half in <log>.1), and the last lines stay in memory for error messages."""
    monkeypatch.setattr(vfs, "LOG_FILE_BYTES", 64 << 10)
    _fake_virtiofsd(tmp_path, monkeypatch,
                    "echo 'virtio_session_mount: Waiting for vhost-user socket connection...' >&2\n"
                    "i=0; while [ $i -lt 3000 ]; do echo \"line $i: some message from virtiofsd\" >&2;"
                    " i=$((i+1)); done\necho 'the last line' >&2\nexec sleep 60\n")
    (tmp_path / "share").mkdir()
    log = tmp_path / "fsd.log"
    fsd = Virtiofsd.start(SharedDir(tmp_path / "share", "t"), str(tmp_path / "s.sock"), log_path=str(log))
    try:
        deadline = time.monotonic() + 20
        while "the last line" not in fsd.tail() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fsd.tail().endswith("the last line")
    finally:
        fsd.stop()
    rotated = Path(str(log) + ".1")
    assert rotated.exists() and log.stat().st_size <= 64 << 10 and rotated.stat().st_size <= 64 << 10
    assert log.read_text().endswith("the last line\n")
    assert not alive(fsd.pid)


def test_a_virtiofsd_that_never_gets_ready_is_ended_with_an_error(tmp_path, monkeypatch):
    _fake_virtiofsd(tmp_path, monkeypatch, "echo 'starting up' >&2\nexec sleep 60\n")
    (tmp_path / "share").mkdir()
    t0 = time.monotonic()
    with pytest.raises(VirtiofsdError, match=r"did not start within 0.5s: starting up"):
        Virtiofsd.start(SharedDir(tmp_path / "share", "t"), str(tmp_path / "s.sock"), timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "s.sock").exists()
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "fake-virtiofsd")]).returncode == 1


@needs_virtiofsd
def test_a_source_with_commas_and_backslashes_reaches_virtiofsd_whole(tmp_path):
    """virtiofsd's -o list splits at commas: the escaped path must still be the share
    (a wrong split would name a missing directory and fail the start)."""
    share = tmp_path / "a,b\\c,source=x"
    share.mkdir()
    fsd = Virtiofsd.start(SharedDir(share, "t"), str(tmp_path / "s.sock"))
    try:
        assert fsd.alive() and fsd.source == str(share)
    finally:
        fsd.stop()


@needs_virtiofsd
def test_a_shared_dirs_own_log_path_is_used(tmp_path):
    (tmp_path / "a").mkdir()
    servers = SharedDirServers([SharedDir(tmp_path / "a", "a", log_path=tmp_path / "mine.log")])
    servers.start()
    try:
        assert servers.info()[0]["log"] == str(tmp_path / "mine.log")
    finally:
        servers.stop()
    assert "Waiting for vhost-user" in (tmp_path / "mine.log").read_text()


def test_a_run_dir_too_long_for_a_socket_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    servers = SharedDirServers([SharedDir(tmp_path / "a", "a")], run_dir=str(deep))
    with pytest.raises(ConfigError, match="longer than a Unix socket allows"):
        servers.start()


@needs_virtiofsd
def test_an_unwritable_log_path_is_a_clear_error_and_leaves_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="cannot open virtiofsd's log .*/no/such/dir/l.log"):
        Virtiofsd.start(SharedDir(tmp_path / "a", "a"), str(tmp_path / "s.sock"),
                        log_path=str(tmp_path / "no" / "such" / "dir" / "l.log"))
    assert not (tmp_path / "s.sock").exists()
    assert subprocess.run(["pgrep", "-f", f"source={tmp_path}/a"]).returncode == 1


@needs_virtiofsd
def test_a_source_reached_through_a_symlink_is_served(tmp_path):
    """virtiofsd refuses a symlink as its source: it is given the resolved directory."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fsd = Virtiofsd.start(SharedDir(tmp_path / "link", "t"), str(tmp_path / "s.sock"))
    try:
        assert fsd.alive() and fsd.source == str(tmp_path / "real")
    finally:
        fsd.stop()


class _RefusingLibc:
    """libc whose unshare() fails as on a host that refuses user namespaces."""

    def __init__(self, real):
        self._real = real

    def unshare(self, flags):
        import ctypes
        import errno
        ctypes.set_errno(errno.EPERM)
        return -1

    def __getattr__(self, name):
        return getattr(self._real, name)


@needs_virtiofsd
def test_refused_user_namespaces_are_a_clear_error_for_an_ordinary_user(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.setattr(vfs, "_libc", _RefusingLibc(vfs._libc))   # the forked child's copy too
    monkeypatch.setattr(vfs, "unprivileged", lambda: True)
    with pytest.raises(VirtiofsdError, match=r"failed to start \(exit status 126\).*unshare: "
                       r"Operation not permitted \(not running as root, virtiofsd needs an "
                       r"unprivileged user namespace, which this host refuses"):
        Virtiofsd.start(SharedDir(tmp_path / "a", "a"), str(tmp_path / "s.sock"))
    assert not (tmp_path / "s.sock").exists()


@needs_virtiofsd
@pytest.mark.qemu
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64")
def test_a_qemu_that_fails_at_start_is_reported_and_its_virtiofsd_ended(fake_kernel, tmp_path):
    """QEMU (connecting by path: user=None) never connects, so virtiofsd still waits in
    accept(): the machine's ending must not wait for it, and close() ends it."""
    (tmp_path / "a").mkdir()
    m = _machine(fake_kernel, shared_dirs=[SharedDir(tmp_path / "a", "a")],
                 options=QemuOptions(extra_args=["-no-such-option"], user=None))
    m.start()
    pid = m.inspect().transports[-1]["pid"]
    status = m.wait(30)
    assert status is not None and status.kind == "error" and "no-such-option" in status.message
    m.stop()
    assert wait_gone([pid], 0) == []
