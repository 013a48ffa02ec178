"""A pod VM through vmm-runtime's command line, as containerd's shim drives it for a
Kubernetes pod (CRI's annotations on the bundles), without containerd: the sandbox
bundle boots the VM, member bundles run in it each in its own root, `exec` lands in the
member's root, pausing a member is refused, and a forced delete of a running member, or
of the sandbox while a member still runs, leaves a bound host directory whole and
nothing mounted (tests/test_runtime_cri.py runs the same model under containerd)."""
import json
import os
import shutil
import time

import pytest

from support.proctable import alive
from support.test_engine import ENGINE
from support.rootfs_dir import unpack_busybox_rootfs
from test_runtime_vm import Shim, make_bundle, pytestmark, rt, state

pytestmark = pytestmark + [pytest.mark.skipif(os.geteuid() != 0,
                                              reason="a pod VM's binds need root")]

@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return unpack_busybox_rootfs(tmp_path_factory.mktemp("pod-rootfs"))


SANDBOX = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "sb"}


def member_annotations(engine_annotations):
    return dict(engine_annotations, **{"io.kubernetes.cri.container-type": "container",
                                       "io.kubernetes.cri.sandbox-id": "sb"})


def bundle_for(tmp_path, rootfs, name, args, annotations, **extra):
    # A member's root must be its own directory (a member writes there); the sandbox's
    # is the shared read-only busybox tree.
    b = make_bundle(tmp_path / name, rootfs, args, **extra)
    cfg = json.loads((b / "config.json").read_text())
    cfg["annotations"].update(annotations)
    (b / "config.json").write_text(json.dumps(cfg))
    return b


def own_rootfs(tmp_path, rootfs, name):
    """A copy of the busybox tree for one member (its root is written through)."""
    d = tmp_path / f"{name}-rootfs"
    shutil.copytree(rootfs, d, symlinks=True)
    return d


def mounted_under(path):
    return [line for line in open("/proc/self/mountinfo").read().splitlines()
            if str(path) in line]


def user_files(d):
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None
            for p in sorted(d.rglob("*"))}


def test_members_share_the_pod_vm_and_leave_a_users_files(tmp_path, rootfs):
    root = tmp_path / "root"
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "keep.txt").write_text("keep\n")
    (data / "sub" / "deep.bin").write_bytes(os.urandom(1000))
    sandbox = bundle_for(tmp_path, rootfs, "sb-bundle", ["sleep", "100000"], SANDBOX)
    sb = Shim(tmp_path, root, sandbox, "sb")
    rt(root, "start", "sb")
    assert state(root, "sb")["status"] == "running"

    engine = {"vmm.engine": ENGINE}
    mounts = [{"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "rw"]},
              {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}]
    members = {}
    for name in ("m1", "m2"):
        b = bundle_for(tmp_path, own_rootfs(tmp_path, rootfs, name), f"{name}-bundle",
                       ["sh", "-c", f"echo {name} > /own; exec sleep 100000"],
                       member_annotations(engine), mounts=mounts if name == "m1" else [])
        cfg = json.loads((b / "config.json").read_text())
        cfg["root"]["readonly"] = False
        (b / "config.json").write_text(json.dumps(cfg))
        members[name] = Shim(tmp_path, root, b, name)
        rt(root, "start", name)
    try:
        # One VM: the members' processes see one boot id; each its own root, exec in it.
        boot = {n: rt(root, "exec", n, "cat", "/proc/sys/kernel/random/boot_id").stdout
                for n in ("m1", "m2")}
        assert boot["m1"] == boot["m2"] and boot["m1"].strip()
        deadline = time.monotonic() + 30
        while rt(root, "exec", "m2", "cat", "/own", check=False).stdout != "m2\n":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert rt(root, "exec", "m1", "cat", "/own").stdout == "m1\n"
        assert rt(root, "exec", "m1", "cat", "/data/keep.txt").stdout == "keep\n"
        assert rt(root, "exec", "m2", "test", "-e", "/data/keep.txt", check=False).returncode == 1
        assert rt(root, "exec", "m1", "sh", "-c", "grep -c ' /scratch tmpfs' /proc/mounts").stdout == "1\n"
        assert "the pod sandbox's" in (root / "m1" / "not-applied.txt").read_text()
        st = json.loads((root / "m1" / "state.json").read_text())
        assert st["pod_sandbox"] == "sb" and st["guest_pid"] > 1
        # Pausing one member would freeze the pod: refused, saying so.
        r = rt(root, "pause", "m1", check=False)
        assert r.returncode == 1 and "every container of the pod" in r.stderr, r.stderr
        assert state(root, "m1")["status"] == "running"

        # A member whose monitor is killed outright: its process goes from the pod VM too.
        m3 = Shim(tmp_path, root, bundle_for(tmp_path, rootfs, "m3-bundle", ["sleep", "4242"],
                                             member_annotations(engine)), "m3")
        rt(root, "start", "m3")
        assert "sleep 4242" in rt(root, "exec", "m2", "ps").stdout   # one pid namespace
        os.kill(m3.pid, 9)
        assert m3.exit_code() == 128 + 9
        deadline = time.monotonic() + 30
        while "sleep 4242" in rt(root, "exec", "m2", "ps").stdout:
            assert time.monotonic() < deadline, "the killed member's process lives on"
            time.sleep(0.2)
        rt(root, "delete", "m3")
        assert not (root / "sb" / "pod" / "m3").exists()

        # A forced delete of the running member with the user's directory bound in.
        rt(root, "delete", "--force", "m1")
        assert members["m1"].exit_code() == 128 + 9
        assert not (root / "sb" / "pod" / "m1").exists()
        assert mounted_under(root / "sb" / "pod" / "m1") == []
        assert user_files(data) == {"keep.txt": b"keep\n", "sub": None,
                                    "sub/deep.bin": (data / "sub" / "deep.bin").read_bytes()}
        # The sandbox deleted by force while m2 still runs in its VM: the whole share goes.
        rt(root, "delete", "--force", "sb")
        assert sb.exit_code() in (137, 255)
        assert members["m2"].exit_code() == 255      # its VM went away under it
        rt(root, "delete", "m2")
    finally:
        for name in ("m1", "m2", "m3", "sb"):
            rt(root, "delete", "--force", name, check=False)
    assert mounted_under(root) == [] and rt(root, "list", "-q").stdout == ""
    assert not any(alive(s.pid) for s in [sb, *members.values()])
    assert (data / "keep.txt").read_text() == "keep\n" and (data / "sub" / "deep.bin").exists()


def test_a_member_of_a_sandbox_not_running_is_refused(tmp_path, rootfs):
    root = tmp_path / "root"
    engine = {"vmm.engine": ENGINE}
    sandbox = bundle_for(tmp_path, rootfs, "sb-bundle", ["true"], SANDBOX)
    sb = Shim(tmp_path, root, sandbox, "sb")
    rt(root, "start", "sb")
    assert sb.exit_code() == 0
    member = bundle_for(tmp_path, rootfs, "m-bundle", ["true"], member_annotations(engine))
    r = rt(root, "create", "--bundle", str(member), "m", check=False)
    assert r.returncode == 1 and "sandbox container sb is not running" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and rt(root, "list", "-q").stdout == "sb\n"
    rt(root, "delete", "sb")
    assert mounted_under(root) == []
