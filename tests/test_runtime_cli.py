"""vmm-runtime's command line without a VM: the state store, runc's error messages and
exit codes, the log formats, features. The runc column of the conformance table is
checked against runc itself where it is installed."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from vmm.runtime.state import (CREATED, STOPPED, ContainerExists, ContainerNotFound,
                               ContainerState, StateStore, check_id, now_rfc3339)
from vmm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runtime(*args, root, log=None):
    cmd = [sys.executable, "-m", "vmm.runtime", "--root", str(root)]
    if log:
        cmd += ["--log", str(log), "--log-format", "json"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60, env=env)


def test_ids_are_checked():
    for good in ("a", "abc-1.2_x", "x" * 1024, "a+b"):
        assert check_id(good) == good
    for bad in ("", ".", "..", "a/b", "a b", "x" * 1025, "a\0", "é"):
        with pytest.raises(ConfigError):
            check_id(bad)


def test_store_round_trip_and_dead_monitor_is_stopped(tmp_path):
    store = StateStore(str(tmp_path))
    st = ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", created=now_rfc3339())
    store.create(st)
    with pytest.raises(ContainerExists):
        store.create(st)
    # a live process with a recorded start time: created
    child = subprocess.Popen(["sleep", "30"])
    try:
        from vmm.sandbox.state import process_start_time
        store.update("c1", status=CREATED, pid=child.pid, pid_start=process_start_time(child.pid))
        assert store.load("c1").oci()["status"] == "created"
        assert store.load("c1").oci()["pid"] == child.pid
        # the same pid with another start time is not our monitor (pid reuse)
        store.update("c1", pid_start=process_start_time(child.pid) + 1)
        assert store.load("c1").oci() == dict(store.load("c1").oci(), status="stopped", pid=0)
    finally:
        child.kill()
        child.wait()
    store.update("c1", pid_start=None)
    assert store.load("c1").current_status() == STOPPED
    assert store.ids() == ["c1"]
    store.remove("c1")
    with pytest.raises(ContainerNotFound):
        store.load("c1")


def test_damaged_state_is_a_clear_error(tmp_path):
    store = StateStore(str(tmp_path))
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/r", created=now_rfc3339()))
    (tmp_path / "c1" / "state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        store.load("c1")


@pytest.mark.parametrize("args, message", [
    (["state", "nope"], "container does not exist"),
    (["start", "nope"], "container does not exist"),
    (["kill", "nope"], "container does not exist"),
    (["delete", "nope"], "container does not exist"),
    (["kill", "nope", "BOGUS"], "container does not exist"),  # as runc: the id first
    (["state", "../x"], "invalid container ID format"),
])
def test_errors_as_runc_prints_them(tmp_path, args, message):
    log = tmp_path / "log.json"
    r = runtime(*args, root=tmp_path / "root", log=log)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error" and message in last["msg"]


def test_stopped_container_state_kill_start_delete(tmp_path):
    store = StateStore(str(tmp_path))
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", created=now_rfc3339(),
                                status=STOPPED, exit_code=0))
    r = runtime("state", "c1", root=tmp_path)
    state = json.loads(r.stdout)
    assert r.returncode == 0
    assert set(state) == {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"}
    assert (state["status"], state["pid"]) == ("stopped", 0)
    r = runtime("kill", "c1", "KILL", root=tmp_path)
    assert r.returncode == 1 and "container not running" in r.stderr
    # runc: --all signals whatever is left, and on a stopped container that is nothing
    r = runtime("kill", "--all", "c1", "KILL", root=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    r = runtime("start", "c1", root=tmp_path)
    assert r.returncode == 1 and "cannot start a container that has stopped" in r.stderr
    r = runtime("list", "--format", "json", root=tmp_path)
    assert [s["id"] for s in json.loads(r.stdout)] == ["c1"]
    assert runtime("delete", "c1", root=tmp_path).returncode == 0
    assert not (tmp_path / "c1").exists()


def test_delete_force_of_a_missing_container_succeeds_as_runcs(tmp_path):
    # containerd's shim deletes --force again when it cleans up after a deleted container
    r = runtime("delete", "--force", "nope", root=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    r = runtime("delete", "nope", root=tmp_path)
    assert r.returncode == 1 and "container does not exist" in r.stderr
    if shutil.which("runc"):
        ref = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "delete", "--force", "nope"],
                             capture_output=True, text=True, timeout=30)
        assert ref.returncode == 0


def test_create_refuses_bad_bundles_and_leaves_nothing(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    r = runtime("create", "--bundle", str(bundle), "c1", root=tmp_path / "root")
    assert r.returncode == 1 and "config.json: no such file" in r.stderr
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
           "process": {"args": ["true"], "cwd": "/", "terminal": True}}
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runtime("create", "--bundle", str(bundle), "c1", root=tmp_path / "root")
    assert r.returncode == 1 and "rootfs" in r.stderr and "does not exist" in r.stderr
    (bundle / "rootfs").mkdir()
    r = runtime("create", "--bundle", str(bundle), "c1", root=tmp_path / "root")
    assert r.returncode == 1 and "console socket" in r.stderr
    assert not (tmp_path / "root" / "c1").exists()


def test_features_is_json_naming_what_a_vm_does_not_apply(tmp_path):
    r = runtime("features", root=tmp_path)
    f = json.loads(r.stdout)
    assert f["ociVersionMin"] == "1.0.0" and "namespaces" in f["linux"]
    assert "devices" in f["annotations"]["io.github.vmm.not-applied"]
    assert f["hooks"] == ["prestart", "createRuntime", "poststart", "poststop"]


@pytest.mark.skipif(not shutil.which("runc"), reason="runc not installed (the reference)")
@pytest.mark.parametrize("args", [["state", "nope"], ["kill", "nope", "BOGUS"], ["delete", "nope"]])
def test_same_exit_code_and_message_as_runc(tmp_path, args):
    ours = runtime(*args, root=tmp_path / "ours")
    ref = subprocess.run(["runc", "--root", str(tmp_path / "runc")] + args,
                         capture_output=True, text=True, timeout=30)
    assert ours.returncode == ref.returncode
    ref_msg = ref.stderr.split('msg="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"')
    assert ref_msg in ours.stderr


def _exec_args(*argv):
    """What `exec [--cap C] [-g G] [--no-new-privs] ID CMD...` parses into."""
    from types import SimpleNamespace
    a = SimpleNamespace(process=None, env=[], user=None, cwd=None, tty=False, cap=[],
                        additional_gids=[], no_new_privs=False)
    argv = list(argv)
    while argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag == "--no-new-privs":
            a.no_new_privs = True
        else:
            (a.cap if flag == "--cap" else a.additional_gids).append(argv.pop(0))
    a.id, a.argv = argv[0], argv[1:]
    return a


def test_exec_takes_the_container_process_privileges_and_its_flags(tmp_path):
    """As runc exec: without --process the new process has the container process's
    capabilities, noNewPrivileges, umask and additionalGids; --cap adds one (bounding,
    effective, permitted, ambient), --additional-gids appends, --no-new-privs sets."""
    from vmm.runtime.exec_process import exec_spec
    from vmm.runtime.errors import RuntimeFailure
    (tmp_path / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/",
                    "user": {"uid": 0, "gid": 0, "additionalGids": [5], "umask": 0o27},
                    "capabilities": {"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"]}}}))
    p = exec_spec(_exec_args("c", "id"), str(tmp_path))
    assert p.capabilities.masks() == (1 << 5, 0, 1 << 5, 0, 0)
    assert (p.additional_gids, p.umask, p.no_new_privileges) == ((5,), 0o27, False)
    p = exec_spec(_exec_args("--cap", "CAP_CHOWN", "-g", "7", "--no-new-privs", "c", "id"), str(tmp_path))
    assert p.capabilities.masks() == (1 << 5 | 1, 1, 1 << 5 | 1, 0, 1)
    assert (p.additional_gids, p.no_new_privileges) == ((5, 7), True)
    for bad, msg in ((["--cap", "CAP_FLY"], "--cap: unknown capability 'CAP_FLY'"),
                     (["-g", "x"], "--additional-gids 'x' is not a gid"),
                     (["-g", "4294967295"], "is not a gid")):
        with pytest.raises(RuntimeFailure, match=msg):
            exec_spec(_exec_args(*bad, "c", "id"), str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(RuntimeFailure, match="cannot read the container's process privileges"):
        exec_spec(_exec_args("c", "id"), str(tmp_path))


def test_features_lists_the_capabilities_we_apply():
    from vmm.runtime.features import features
    caps = features()["linux"]["capabilities"]
    assert caps[0] == "CAP_CHOWN" and caps[-1] == "CAP_CHECKPOINT_RESTORE" and len(caps) == 41

def test_monitor_socket_in_a_state_directory_deeper_than_sun_path(tmp_path):
    """Docker's runtime root is /var/run/docker/runtime-NAME/moby and its ids are 64 hex
    digits: the monitor's socket path there is longer than a Unix socket address holds,
    and create failed with "AF_UNIX path too long"."""
    from types import SimpleNamespace
    from vmm.runtime.monitor import Monitor, request
    root = tmp_path / ("runtime-vmm-" + "r" * 40) / "moby"
    cid = "0123456789abcdef" * 4
    store = StateStore(str(root))
    store.create(ContainerState(id=cid, bundle="/b", rootfs="/b/rootfs", created=now_rfc3339()))
    assert len(store.socket_path(cid)) > 107
    mon = Monitor(store, cid, None, None, None, boot=lambda: SimpleNamespace(socket_path="agent.sock"))
    mon.create()
    assert os.path.exists(store.socket_path(cid))           # bound in the real directory
    assert request(store, cid, {"op": "ps"}) == {"pids": [os.getpid()]}
    assert store.load(cid).oci()["status"] == "created"


# --- hooks (Docker's bridge network is set up by a prestart hook) -------------------------
def _bundle_with_hooks(hooks):
    from vmm.runtime.bundle import parse_config
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
           "process": {"args": ["true"], "cwd": "/"}, "hooks": hooks}
    return parse_config(json.dumps(cfg).encode(), "/b")


def test_hooks_are_read_and_container_side_stages_are_named_not_run():
    b = _bundle_with_hooks({
        "prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey", "-exec-root=/x", "id"]}],
        "createRuntime": [{"path": "/bin/true", "env": ["A=1"], "timeout": 5}],
        "createContainer": [{"path": "/bin/true"}], "poststop": None})
    assert [(stage, h.path, h.args) for stage, h in b.hooks] == [
        ("prestart", "/proc/1/exe", ("libnetwork-setkey", "-exec-root=/x", "id")),
        ("createRuntime", "/bin/true", ())]
    assert b.hooks[1][1].env == ("A=1",) and b.hooks[1][1].timeout == 5
    assert any("hooks.createContainer: not run" in n for n in b.unhonoured)
    assert not any("prestart" in n for n in b.unhonoured)


@pytest.mark.parametrize("hooks, message", [
    ([], "hooks: not an object"),
    ({"preStart": []}, "unknown hook stage"),
    ({"prestart": {}}, "not a list"),
    ({"prestart": [{"path": "rel"}]}, r"hooks.prestart\[0\].path: not an absolute path"),
    ({"prestart": [{"path": "/x", "args": [1]}]}, "args: not a list of strings"),
    ({"poststart": [{"path": "/x", "timeout": 0}]}, "timeout"),
    ({"poststart": [{"path": "/x", "timeout": True}]}, "timeout"),
])
def test_bad_hooks_are_bundle_errors_naming_the_field(hooks, message):
    from vmm.runtime.bundle import BundleError
    with pytest.raises(BundleError, match=message):
        _bundle_with_hooks(hooks)


def test_hooks_get_the_state_on_stdin_their_args_and_env_only(tmp_path):
    from vmm.runtime.hooks import HookError, hook_state, run_hooks
    from vmm.runtime.log import RuntimeLog
    out = tmp_path / "seen"
    # the shell's own /proc cmdline shows the argv it was given (a script's $0 would not)
    script = f"{{ tr '\\0' ' ' < /proc/$$/cmdline | cut -d' ' -f1; env | sort; cat; }} > {out}"
    b = _bundle_with_hooks({"prestart": [{"path": "/bin/sh", "args": ["setkey", "-c", script],
                                          "env": ["ONLY=this"]}],
                            "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no >&2; exit 3"]}]})
    state = hook_state("c1", "creating", 4242, "/b", {"k": "v"})
    log = RuntimeLog(str(tmp_path / "log.json"), "json")
    run_hooks(b.hooks, "prestart", state, log, must_succeed=True)
    argv, *env, stdin = out.read_text().splitlines()
    assert argv == "setkey"                             # args[0] is argv[0], as execv
    assert "ONLY=this" in env and not any(e.startswith("HOME=") for e in env)
    assert json.loads(stdin) == {"ociVersion": "1.0.2", "id": "c1", "status": "creating",
                                 "pid": 4242, "bundle": "/b", "annotations": {"k": "v"}}
    with pytest.raises(HookError, match=r"poststart hook #0: exit status 3, stdout: , stderr: no"):
        run_hooks(b.hooks, "poststart", state, log, must_succeed=True)
    run_hooks(b.hooks, "poststart", state, log, must_succeed=False)   # logged, not raised
    last = json.loads((tmp_path / "log.json").read_text().splitlines()[-1])
    assert last["level"] == "warning" and "exit status 3" in last["msg"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")
def test_new_namespace_is_ours_for_the_hooks_and_named_after_we_leave():
    code = ("import os\nfrom vmm.runtime.netns import is_own_namespace, leave, new_namespace\n"
            "before = os.readlink('/proc/self/ns/net')\nheld, back = new_namespace()\n"
            "during = os.readlink(f'/proc/{os.getpid()}/ns/net')\nleave(back)\n"
            "print(before, during, os.readlink(held), os.readlink('/proc/self/ns/net'),"
            " is_own_namespace(held))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    before, during, held, after, own = r.stdout.split()
    assert before == os.readlink("/proc/self/ns/net") and during != before   # the hooks' pid
    assert held == during and after == before and own == "False"            # then joined as any


# --- pause, resume, update (docker pause / unpause / update call them) ---------------------
class _FakeVm:
    socket_path = "agent.sock"

    def __init__(self):
        self.calls = []

    def pause(self):
        self.calls.append("pause")

    def resume(self):
        self.calls.append("resume")


class _FakeProc:
    ended = False

    def __init__(self):
        self.signals = []

    def signal(self, signo):
        self.signals.append(signo)


def test_pause_resume_freeze_the_vm_and_a_signal_thaws_it(tmp_path):
    import signal as signal_mod
    from vmm.runtime.monitor import Monitor, request
    store = StateStore(str(tmp_path))
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", created=now_rfc3339()))
    vm = _FakeVm()
    mon = Monitor(store, "c1", None, None, None, boot=lambda: vm)
    mon.create()
    assert request(store, "c1", {"op": "pause"}) == {"error": "container not running"}  # not started
    mon.proc = _FakeProc()
    assert request(store, "c1", {"op": "pause"}) == {"ok": True}
    assert store.load("c1").oci()["status"] == "paused" and store.load("c1").oci()["pid"] == os.getpid()
    assert "error" in request(store, "c1", {"op": "pause"})
    assert request(store, "c1", {"op": "resume"}) == {"ok": True}
    assert request(store, "c1", {"op": "resume"}) == {"error": "container not paused"}
    assert store.load("c1").oci()["status"] == "running"
    request(store, "c1", {"op": "pause"})
    assert request(store, "c1", {"op": "kill", "signal": 15}) == {"ok": True}
    assert vm.calls == ["pause", "resume", "pause", "resume"]        # thawed to deliver it
    assert mon.proc.signals == [signal_mod.SIGTERM] and store.load("c1").status == "running"


def test_paused_container_refuses_exec_and_delete_without_force(tmp_path):
    from vmm.runtime.state import PAUSED
    store = StateStore(str(tmp_path))
    child = subprocess.Popen(["sleep", "30"])
    try:
        from vmm.sandbox.state import process_start_time
        store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", created=now_rfc3339(),
                                    status=PAUSED, pid=child.pid,
                                    pid_start=process_start_time(child.pid), agent_socket="/x"))
        assert json.loads(runtime("state", "c1", root=tmp_path).stdout)["status"] == "paused"
        r = runtime("exec", "c1", "true", root=tmp_path)
        assert r.returncode == 255 and "cannot exec in a paused container" in r.stderr
        r = runtime("delete", "c1", root=tmp_path)
        assert r.returncode == 1 and "cannot delete container c1 that is not stopped: paused" in r.stderr
    finally:
        child.kill()
        child.wait()
    assert json.loads(runtime("state", "c1", root=tmp_path).stdout)["status"] == "stopped"
    r = runtime("pause", "c1", root=tmp_path)
    assert r.returncode == 1 and "container not running" in r.stderr
    r = runtime("resume", "c1", root=tmp_path)
    assert r.returncode == 1 and "container not paused" in r.stderr


def test_update_is_refused_naming_why(tmp_path):
    store = StateStore(str(tmp_path))
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/b/rootfs", created=now_rfc3339()))
    for args in (["update", "--resources", "-", "c1"], ["update", "--memory", "256M", "c1"]):
        r = runtime(*args, root=tmp_path)
        assert r.returncode == 1 and "CPUs and memory are fixed when it boots" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "usage:" not in r.stderr
    r = runtime("update", "--resources", "-", "nope", root=tmp_path)
    assert r.returncode == 1 and "container does not exist" in r.stderr
