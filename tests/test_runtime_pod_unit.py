"""A Kubernetes pod as one microVM (vmm/runtime/pod.py), without a VM: which containers are
members of a pod and of which sandbox, when a member may join its pod VM, the state a
member keeps, and the host mounts a member is made of: bound where the pod VM's file
server sees them, and taken away without ever losing a file of a user's directory bound
in (scenarios in tests/support/pod_mounts.py, as root in a private mount namespace)."""
import os
import shutil
import subprocess
import sys

import pytest

from support.pod_mounts import run_private
from vmm.runtime.errors import RuntimeFailure
from vmm.runtime.pod import (GUEST_POD_DIR, JoinedClient, MemberVm, is_pod_sandbox,
                             member_sandbox, pod_vm_of)
from vmm.runtime.state import CREATED, RUNNING, STOPPED, ContainerState, StateStore
from vmm.sandbox.state import process_start_time

as_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                             reason="bind mounts need root and unshare (util-linux)")

CONTAINERD = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb1"}
CRIO = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "sb2"}


def test_members_are_told_by_the_cri_annotations():
    assert member_sandbox(CONTAINERD, "c1") == "sb1"
    assert member_sandbox(CRIO, "c1") == "sb2"
    # The sandbox itself, a container without the annotations, or without its sandbox's id:
    # not a member (a VM of its own, exactly as before).
    assert member_sandbox({"io.kubernetes.cri.container-type": "sandbox",
                           "io.kubernetes.cri.sandbox-id": "sb1"}, "sb1") is None
    assert member_sandbox({}, "c1") is None
    assert member_sandbox({"io.kubernetes.cri.container-type": "container"}, "c1") is None
    assert member_sandbox(CONTAINERD, "sb1") is None   # names itself: not a member
    assert is_pod_sandbox({"io.kubernetes.cri.container-type": "sandbox"})
    assert is_pod_sandbox({"io.kubernetes.cri-o.ContainerType": "sandbox"})
    assert not is_pod_sandbox(CONTAINERD) and not is_pod_sandbox({})


def _sandbox_state(store, sid, **kw):
    st = ContainerState(id=sid, bundle="/b", rootfs="/b/rootfs", created="now", **kw)
    store.create(st)
    return st


def test_a_member_joins_only_a_live_pod_vm_of_ours(tmp_path):
    store = StateStore(str(tmp_path))
    # Not in this --root: another runtime's sandbox; the member is a VM of its own.
    assert pod_vm_of(store, "elsewhere") is None
    me = dict(pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    _sandbox_state(store, "gone", status=STOPPED, agent_socket="/x.sock", pod_dir="/p")
    with pytest.raises(RuntimeFailure, match="sandbox container gone is not running"):
        pod_vm_of(store, "gone")
    # Its monitor died without saying so: stopped too.
    _sandbox_state(store, "dead", status=RUNNING, pid=2**22 + 1, pid_start=1,
                   agent_socket="/x.sock", pod_dir="/p")
    with pytest.raises(RuntimeFailure, match="is not running"):
        pod_vm_of(store, "dead")
    _sandbox_state(store, "noshare", status=RUNNING, agent_socket="/x.sock", **me)
    with pytest.raises(RuntimeFailure, match="has no pod share"):
        pod_vm_of(store, "noshare")
    _sandbox_state(store, "ok", status=CREATED, agent_socket="/x.sock", pod_dir="/p", **me)
    assert pod_vm_of(store, "ok").pod_dir == "/p"


def test_a_members_state_keeps_its_pod_and_guest_pid(tmp_path):
    store = StateStore(str(tmp_path))
    spec = {"path": f"{GUEST_POD_DIR}/c1/rootfs", "read_only": False, "mounts": []}
    store.create(ContainerState(id="c1", bundle="/b", rootfs="/r", created="now",
                                pod_sandbox="sb1", pod_dir="/state/sb1/pod"))
    store.update("c1", pod_root=spec, guest_pid=42)
    st = store.load("c1")
    assert (st.pod_sandbox, st.pod_dir, st.pod_root, st.guest_pid) == \
        ("sb1", "/state/sb1/pod", spec, 42)
    # runc's state JSON is unchanged by them
    assert set(st.oci()) == {"ociVersion", "id", "pid", "status", "bundle", "rootfs",
                             "created", "owner"}


class _Recorder:
    def __init__(self):
        self.calls = []

    def exec_stream(self, argv, **kw):
        self.calls.append((argv, kw))
        return "proc"


def test_exec_into_a_member_joins_its_process_else_makes_its_root():
    c = _Recorder()
    assert JoinedClient(c, 42, None).exec_stream(["ls"], env={}) == "proc"
    assert JoinedClient(c, None, "ROOT").exec_stream(["ls"]) == "proc"
    assert c.calls == [(["ls"], {"join_pid": 42, "env": {}}), (["ls"], {"root": "ROOT"})]


def test_pausing_a_member_is_refused_naming_why():
    vm = MemberVm.__new__(MemberVm)
    vm.sid = "sb1"
    for op in (vm.pause, vm.resume):
        with pytest.raises(RuntimeFailure, match="every container of the pod"):
            op()


def test_the_pause_command_refuses_a_member(tmp_path):
    store = StateStore(str(tmp_path))
    _sandbox_state(store, "c1", status=RUNNING, pid=os.getpid(),
                   pid_start=process_start_time(os.getpid()), pod_sandbox="sb1")
    r = subprocess.run([sys.executable, "-m", "vmm.runtime", "--root", str(tmp_path), "pause", "c1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "every container of the pod" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@as_root
@pytest.mark.parametrize("scenario", ["member_binds_and_unbinds", "sandbox_release_first",
                                      "forced_state_removal", "remove_tree_refuses_a_mount_point",
                                      "failed_bind_leaves_nothing"])
def test_pod_mounts_never_lose_a_users_file(tmp_path, scenario):
    run_private(scenario, tmp_path)
