"""The conformance table: the same bundles and commands through runc (the reference) and
vmm-runtime, compared row by row: exit codes, the state JSON's keys and statuses, the
exit status a shim collects, and the error messages callers match on. Printed with -s;
docs/kubernetes.md quotes it. Rows where we differ on purpose say so in `differs`."""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from support.rootfs_dir import unpack_busybox_rootfs
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("runc"), reason="no runc (the reference)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root here"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 120
ROWS = []



def reap_orphan(pid: int):
    """The exit status of pid, reparented to us (the subreaper) when its parent ended; None
    if it has not ended within T seconds."""
    deadline = time.monotonic() + T
    while time.monotonic() < deadline:
        got, st = os.waitpid(-1, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.05)
    return None

def ours_cmd(root):
    return [sys.executable, "-m", "vmm.runtime", "--root", str(root)]


def runc_cmd(root):
    return ["runc", "--root", str(root)]


def bundle(path, rootfs, args):
    path.mkdir(parents=True)
    shutil.copytree(rootfs, path / "rootfs", symlinks=True)
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
           "process": {"args": args, "cwd": "/", "env": ["PATH=/bin:/sbin"], "terminal": False},
           # what `runc spec` gives (runc needs /proc); the guest makes its own
           "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                      {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                      {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["ro", "nosuid", "noexec", "nodev"]}],
           "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"},
                                    {"type": "ipc"}, {"type": "uts"}]},
           "annotations": {"vmm.engine": ENGINE}}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def run(cmd, *args, stdio=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    if stdio:   # create/exec whose process keeps its stdio: files, never pipes we wait on
        err_path = str(stdio) + ".err"
        with open(stdio, "ab") as f, open(err_path, "wb") as err:
            r = subprocess.run(cmd + list(args), stdin=subprocess.DEVNULL, stdout=f,
                               stderr=err, timeout=T, env=env)
        with open(err_path, errors="replace") as err:
            return r.returncode, err.read()
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=T, env=env,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


def message(text: str) -> str:
    """The last logged error's msg="..." (runc's text log format, which we share)."""
    for line in reversed(text.splitlines()):
        if 'msg="' in line:
            return line.split('msg="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"')
    return text.strip().splitlines()[-1] if text.strip() else ""


def row(name, ours, ref, same_message=True, differs=""):
    """same_message=False: the exit codes must match, the messages may differ (said why)."""
    same_code = ours[0] == ref[0]
    same_text = message(ours[1]) == message(ref[1])
    verdict = "same" if same_code and same_text else \
        f"same exit code; {differs or 'message differs'}" if same_code else "DIFFERS"
    ROWS.append((name, ref[0], ours[0], message(ref[1])[:60], verdict))
    assert same_code, (name, ours, ref)
    assert same_text or not same_message, (name, ours, ref)


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    print("\n| case | runc | ours | runc's message | |\n|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(str(x) for x in r) + " |")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return unpack_busybox_rootfs(tmp_path_factory.mktemp("conf-rootfs"))


def both(tmp_path):
    return ours_cmd(tmp_path / "ours-state"), runc_cmd(tmp_path / "runc-state")


def test_errors_on_missing_and_bad_bundles(tmp_path, rootfs):
    ours, ref = both(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    row("create: no config.json", run(ours, "create", "-b", str(empty), "x"),
        run(ref, "create", "-b", str(empty), "x"), same_message=False,
        differs="we name the file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    row("create: config.json not JSON", run(ours, "create", "-b", str(bad), "x"),
        run(ref, "create", "-b", str(bad), "x"), same_message=False,
        differs="our JSON error names the position")
    for name, args in (("state: no such container", ["state", "nope"]),
                       ("start: no such container", ["start", "nope"]),
                       ("kill: no such container", ["kill", "nope", "KILL"]),
                       ("delete: no such container", ["delete", "nope"]),
                       ("state: bad id", ["state", "a/b"])):
        row(name, run(ours, *args), run(ref, *args))


def lifecycle(cmd, bundle_dir, cid, out):
    """create, state, start, the exit status a subreaper collects, state: as the shim sees."""
    steps = {}
    steps["create"] = run(cmd, "create", "-b", str(bundle_dir), "--pid-file", str(out) + ".pid", cid,
                          stdio=out)
    pid = int(open(str(out) + ".pid").read())
    steps["state1"] = json.loads(run(cmd, "state", cid)[1])
    steps["create again"] = run(cmd, "create", "-b", str(bundle_dir), cid, stdio=out)
    steps["start"] = run(cmd, "start", cid)
    steps["start twice"] = run(cmd, "start", cid)
    steps["state2"] = json.loads(run(cmd, "state", cid)[1])
    steps["delete running"] = run(cmd, "delete", cid)
    steps["kill bad signal"] = run(cmd, "kill", cid, "NOPE")
    steps["kill TERM"] = run(cmd, "kill", cid, "TERM")
    # the monitor (ours) or init (runc) was reparented to us, the subreaper: collect it
    steps["exit status"] = reap_orphan(pid)
    steps["state3"] = json.loads(run(cmd, "state", cid)[1])
    steps["kill stopped"] = run(cmd, "kill", cid, "KILL")
    steps["start stopped"] = run(cmd, "start", cid)
    steps["exec stopped"] = run(cmd, "exec", cid, "true")
    steps["delete"] = run(cmd, "delete", cid)
    return steps


def test_lifecycle_matches_runc(tmp_path, rootfs):
    ours, ref = both(tmp_path)
    b = bundle(tmp_path / "b", rootfs, ["sh", "-c", "trap 'exit 3' TERM; while :; do sleep 1; done"])
    libc = ctypes.CDLL(None)
    libc.prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER, as the shim is
    try:
        r = lifecycle(ref, b, "conf", tmp_path / "runc-out")
        o = lifecycle(ours, b, "conf", tmp_path / "ours-out")
    finally:
        libc.prctl(36, 0, 0, 0, 0)
    for key in ("state1", "state2", "state3"):
        assert set(o[key]) == set(r[key]) - {"annotations"} | ({"annotations"} & set(o[key]))
        ROWS.append((f"{key}: status", r[key]["status"], o[key]["status"], "", 
                     "same" if o[key]["status"] == r[key]["status"] else "DIFFERS"))
        assert o[key]["status"] == r[key]["status"]
        assert (o[key]["pid"] > 0) == (r[key]["pid"] > 0)
    ROWS.append(("exit status after kill TERM (trap: exit 3)", r["exit status"], o["exit status"],
                 "", "same" if r["exit status"] == o["exit status"] else "DIFFERS"))
    assert o["exit status"] == r["exit status"] == 3
    for key in ("create", "create again", "start", "start twice", "delete running",
                "kill bad signal", "kill TERM", "kill stopped", "start stopped", "delete"):
        row(key, o[key], r[key], same_message=key != "create again",
            differs="runc prefixes 'runc create failed: '")
    row("exec in a stopped container", o["exec stopped"], r["exec stopped"])


# The process reads back its own privileges; both runtimes run the same bundle.
SELF_STATUS = ("grep -E '^(Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status; "
               "echo umask: $(umask); touch /tmp/u; echo mode: $(stat -c %a /tmp/u)")
ONE_CAP = ["CAP_NET_BIND_SERVICE"]


def run_to_exit(cmd, bundle_dir, cid, out):
    """create (stdio to files), start, collect the exit status as the shim's subreaper does,
    delete: (exit status, stdout, stderr)."""
    libc = ctypes.CDLL(None)
    libc.prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
    try:
        rc, err = run(cmd, "create", "-b", str(bundle_dir), "--pid-file", str(out) + ".pid", cid,
                      stdio=out)
        if rc != 0:
            return rc, "", err
        pid = int(open(str(out) + ".pid").read())
        run(cmd, "start", cid)
        status = reap_orphan(pid)
    finally:
        libc.prctl(36, 0, 0, 0, 0)
    run(cmd, "delete", "--force", cid)
    with open(out, errors="replace") as f, open(str(out) + ".err", errors="replace") as e:
        return status, f.read(), e.read()


def fields(text):
    return {k.strip(): " ".join(v.split()) for k, sep, v in (line.partition(":") for line in text.splitlines()) if sep}


PRIVILEGE_CASES = {
    "uid 1000, one capability": {
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o27},
        "noNewPrivileges": True,
        "capabilities": {"bounding": ONE_CAP + ["CAP_CHOWN"], "effective": ONE_CAP,
                         "permitted": ONE_CAP, "inheritable": ONE_CAP, "ambient": ONE_CAP}},
    "root, two bounding caps, noNewPrivileges": {
        "user": {"uid": 0, "gid": 0, "umask": 0o77},
        "noNewPrivileges": True,
        "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
                         "permitted": ["CAP_KILL"]}},
    "uid 1000, no capabilities object": {"user": {"uid": 1000, "gid": 1000}},
}


@pytest.mark.parametrize("case", list(PRIVILEGE_CASES))
def test_process_privileges_match_runc(tmp_path, rootfs, case):
    """additionalGids, umask, noNewPrivileges and the five capability sets: what the process
    sees in /proc/self/status under runc and under us, for the same bundle."""
    ours, ref = both(tmp_path)
    b = bundle(tmp_path / "b", rootfs, ["sh", "-c", SELF_STATUS])
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"].update(PRIVILEGE_CASES[case])
    cfg["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                          "options": ["mode=1777"]})
    (b / "config.json").write_text(json.dumps(cfg))
    r = run_to_exit(ref, b, "privs", tmp_path / "runc-out")
    o = run_to_exit(ours, b, "privs", tmp_path / "ours-out")
    assert r[0] == 0, r
    assert o[0] == 0, o
    rf, of = fields(r[1]), fields(o[1])
    for key in ("Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "umask", "mode"):
        ROWS.append((f"{case}: {key}", rf.get(key), of.get(key), "",
                     "same" if rf.get(key) == of.get(key) else "DIFFERS"))
    assert of == rf
    if case.startswith("uid 1000, one"):   # the bundle is honoured, not just equally ignored
        assert rf["CapAmb"] == "0000000000000400" and rf["Groups"] == "10 20"


def test_unknown_capability_is_ignored_as_by_runc(tmp_path, rootfs):
    """runc 1.1 leaves a capability it does not know out, with a warning, and runs the
    process; so do we (the warning goes to our log and not-applied.txt)."""
    ours, ref = both(tmp_path)
    b = bundle(tmp_path / "b", rootfs, ["sh", "-c", SELF_STATUS.split(";")[0]])
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"]["capabilities"] = {"bounding": ["CAP_FLY", "CAP_KILL"]}
    (b / "config.json").write_text(json.dumps(cfg))
    r = run_to_exit(ref, b, "caps", tmp_path / "runc-out")
    o = run_to_exit(ours, b, "caps", tmp_path / "ours-out")
    rf, of = fields(r[1]), fields(o[1])
    ROWS.append(("unknown capability CAP_FLY: exit status", r[0], o[0], "ignoring unknown or unavailable "
                 "capabilities", "same" if r[0] == o[0] else "DIFFERS"))
    ROWS.append(("unknown capability CAP_FLY (bounding + CAP_KILL): CapBnd", rf.get("CapBnd"),
                 of.get("CapBnd"), "", "same" if rf.get("CapBnd") == of.get("CapBnd") else "DIFFERS"))
    assert r[0] == o[0] == 0, (r, o)
    assert rf["CapBnd"] == of["CapBnd"] == "0000000000000020"


def test_read_only_root_matches_runc(tmp_path, rootfs):
    ours, ref = both(tmp_path)
    b = bundle(tmp_path / "b", rootfs, ["sh", "-c", "touch /x; echo touch: $?; "
                                        "echo ok > /scratch/f && echo tmpfs: 0"])
    cfg = json.loads((b / "config.json").read_text())
    cfg["root"]["readonly"] = True
    cfg["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                          "options": ["size=1m"]})
    (b / "config.json").write_text(json.dumps(cfg))
    r = run_to_exit(ref, b, "ro", tmp_path / "runc-out")
    o = run_to_exit(ours, b, "ro", tmp_path / "ours-out")
    rf, of = fields(r[1]), fields(o[1])
    for key, name in (("touch", "root.readonly: touch /x exit code"),
                      ("tmpfs", "root.readonly: a tmpfs mount stays writable")):
        ROWS.append((name, rf.get(key), of.get(key), "", "same" if rf.get(key) == of.get(key) else "DIFFERS"))
    ROWS.append(("root.readonly: touch's message", r[2].strip(), o[2].strip(), "",
                 "same" if r[2] == o[2] else "DIFFERS"))
    assert (r[0], rf) == (0, {"touch": "1", "tmpfs": "0"}), r
    assert (o[0], of) == (r[0], rf), o
    assert o[2] == r[2] == "touch: /x: Read-only file system\n"
