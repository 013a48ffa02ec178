"""Scenarios of a pod's host mounts (vmm/runtime/pod.py), run as root in a private mount
namespace of their own, so nothing they mount is seen outside and all of it goes with
the namespace whatever happens:

    run_private("member_binds_and_unbinds", tmp_dir)   # from a test: raises on failure

Each scenario builds a sandbox's pod share and a member's bundle (its rootfs, a user's
host directory bind-mounted, a host file, a tmpfs) under its directory and asserts: the
binds appear, also in a mount namespace copied before they were made (as virtiofsd's
is), and after an unbind, a sandbox's release or a forced state removal the user's files
are all still there and nothing under the directory is mounted.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_private(name: str, directory: Path, timeout: float = 60) -> None:
    """Runs scenario `name` in `unshare --mount --propagation private`; AssertionError
    with its output if it fails."""
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                        str(Path(__file__)), name, str(directory)],
                       capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                           [str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")])))
    assert r.returncode == 0, f"scenario {name} failed:\n{r.stdout}\n{r.stderr}"


def _user_tree(d: Path) -> dict:
    """A user's directory with files, a subdirectory and a symbolic link; its digest."""
    (d / "sub").mkdir(parents=True)
    (d / "keep.txt").write_text("the user's data\n")
    (d / "sub" / "deep.bin").write_bytes(os.urandom(4096))
    (d / "link").symlink_to("keep.txt")
    return _digest(d)


def _digest(d: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, d)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                out[rel] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _bundle(d: Path, user: Path, hosts: Path):
    from vmm.runtime.bundle import parse_config
    (d / "rootfs" / "etc").mkdir(parents=True)
    (d / "rootfs" / "etc" / "only-in-member").write_text("member\n")
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
           "process": {"args": ["true"], "cwd": "/"},
           "annotations": {"io.kubernetes.cri.container-type": "container",
                           "io.kubernetes.cri.sandbox-id": "sb"},
           "mounts": [{"destination": "/data", "type": "bind", "source": str(user),
                       "options": ["rbind", "rw"]},
                      {"destination": "/etc/hosts", "type": "bind", "source": str(hosts),
                       "options": ["rbind", "ro"]},
                      {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "size=65536k", "mode=1777"]}]}
    return parse_config(json.dumps(cfg).encode(), str(d))


def _mounted_under(path: Path):
    from vmm.runtime.host_mounts import mounts_under
    return mounts_under(str(path))


def _observer() -> subprocess.Popen:
    """A process in a mount namespace copied from ours now, its mounts slaves of ours, as
    virtiofsd's (sandbox=namespace) is."""
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sleep", "60"])
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{p.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        assert time.monotonic() < deadline, "unshare did not make its namespace"
        time.sleep(0.01)
    return p


def _setup(d: Path):
    from vmm.runtime.pod import POD_DIR_NAME, bind_member, prepare_pod_dir
    user, hosts = d / "user-data", d / "hosts"
    before = _user_tree(user)
    hosts.write_text("127.0.0.1 localhost\n")
    (d / "state" / "sb").mkdir(parents=True)
    pod = prepare_pod_dir(str(d / "state" / "sb" / POD_DIR_NAME))
    observer = _observer()
    spec = bind_member(pod, "c1", _bundle(d / "bundle", user, hosts))
    return Path(pod), user, hosts, before, spec, observer


def _check_bound(pod: Path, user: Path, spec: dict, observer) -> None:
    from vmm.runtime.pod import GUEST_POD_DIR, container_root
    assert spec["path"] == f"{GUEST_POD_DIR}/c1/rootfs" and spec["read_only"] is True
    assert [(m["destination"], m["source"], m["tmpfs"], m["read_only"]) for m in spec["mounts"]] == [
        ("/data", f"{GUEST_POD_DIR}/c1/mounts/0", False, False),
        ("/etc/hosts", f"{GUEST_POD_DIR}/c1/mounts/1", False, True),
        ("/scratch", "size=65536k,mode=1777", True, False)], spec
    root = container_root(spec)
    assert root.path == spec["path"] and len(root.mounts) == 3 and root.read_only
    assert (pod / "c1" / "rootfs" / "etc" / "only-in-member").read_text() == "member\n"
    assert (pod / "c1" / "mounts" / "0" / "keep.txt").read_text() == "the user's data\n"
    assert (pod / "c1" / "mounts" / "1").read_text() == "127.0.0.1 localhost\n"
    # The copy made before the binds sees them (how the pod VM's virtiofsd gets them).
    seen = Path(f"/proc/{observer.pid}/root") / str(pod).lstrip("/") / "c1" / "mounts" / "0" / "keep.txt"
    assert seen.read_text() == "the user's data\n"
    assert len(_mounted_under(pod / "c1")) == 3
    # A read-only bind is read-only on the host, in the copy too: the guest (root in its
    # VM) reaches the share's files, so only the host's file server can keep it so.
    import errno
    for view in (pod / "c1" / "mounts" / "1",
                 Path(f"/proc/{observer.pid}/root") / str(pod).lstrip("/") / "c1" / "mounts" / "1"):
        try:
            with open(view, "a") as f:
                f.write("written through a read-only bind\n")
        except OSError as e:
            assert e.errno == errno.EROFS, (view, e)
        else:
            raise AssertionError(f"{view}: a read-only bind is writable")


def _check_safe(d: Path, pod: Path, user: Path, before: dict, observer) -> None:
    assert _digest(user) == before, "a file of the user's directory is gone or changed"
    assert (d / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert (d / "bundle" / "rootfs" / "etc" / "only-in-member").exists()
    assert _mounted_under(d / "state") == [], _mounted_under(d / "state")
    observed = Path(f"/proc/{observer.pid}/root") / str(pod).lstrip("/") / "c1" / "mounts" / "0"
    assert not (observed / "keep.txt").exists(), "the unmount did not reach the copy"


def member_binds_and_unbinds(d: Path) -> None:
    from vmm.runtime.pod import unbind_member
    pod, user, hosts, before, spec, observer = _setup(d)
    try:
        _check_bound(pod, user, spec, observer)
        (pod / "c1" / "mounts" / "0" / "from-guest").write_text("new\n")   # the guest writes
        before["from-guest"] = hashlib.sha256(b"new\n").hexdigest()
        unbind_member(str(pod), "c1")
        assert not (pod / "c1").exists() and pod.is_dir()
        assert _mounted_under(pod) == [str(pod)]      # the share itself stays: the VM has it
        unbind_member(str(pod), "c1")                 # twice: nothing left to do
    finally:
        observer.kill()
    assert _digest(user) == before
    assert _mounted_under(pod / "c1") == []


def sandbox_release_first(d: Path) -> None:
    """The sandbox deleted while a member is still bound (RemovePodSandbox after a failed
    stop): the whole share goes, the user's files stay."""
    from vmm.runtime.pod import release_pod_dir, unbind_member
    pod, user, hosts, before, spec, observer = _setup(d)
    try:
        release_pod_dir(str(pod))
        assert not pod.exists()
        unbind_member(str(pod), "c1")   # the member's delete afterwards: nothing to do
        _check_safe(d, pod, user, before, observer)
    finally:
        observer.kill()


def forced_state_removal(d: Path) -> None:
    """`delete --force` of a running sandbox: StateStore.remove on its directory, binds and
    all, unmounts before it removes."""
    from vmm.runtime.state import StateStore
    pod, user, hosts, before, spec, observer = _setup(d)
    try:
        StateStore(str(d / "state")).remove("sb")
        assert not (d / "state" / "sb").exists()
        _check_safe(d, pod, user, before, observer)
    finally:
        observer.kill()


def remove_tree_refuses_a_mount_point(d: Path) -> None:
    import errno
    from vmm.runtime.host_mounts import bind, remove_tree
    user = d / "user-data"
    before = _user_tree(user)
    (d / "tree" / "a" / "m").mkdir(parents=True)
    (d / "tree" / "a" / "file").write_text("x")
    bind(str(user), str(d / "tree" / "a" / "m"))
    try:
        remove_tree(str(d / "tree"))
    except OSError as e:
        assert e.errno == errno.EBUSY and e.filename == str(d / "tree" / "a" / "m"), e
    else:
        raise AssertionError("remove_tree went into a mount point")
    assert (d / "tree" / "a" / "file").exists(), "removed something before refusing"
    assert _digest(user) == before


def failed_bind_leaves_nothing(d: Path) -> None:
    from vmm.errors import ConfigError
    from vmm.runtime.bundle import parse_config
    from vmm.runtime.pod import bind_member, prepare_pod_dir
    user = d / "user-data"
    before = _user_tree(user)
    (d / "state" / "sb").mkdir(parents=True)
    pod = prepare_pod_dir(str(d / "state" / "sb" / "pod"))
    (d / "bundle" / "rootfs").mkdir(parents=True)
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/"},
           "mounts": [{"destination": "/data", "type": "bind", "source": str(user), "options": ["rbind"]},
                      {"destination": "/gone", "type": "bind", "source": str(d / "missing"),
                       "options": ["rbind"]}]}
    try:
        bind_member(pod, "c1", parse_config(json.dumps(cfg).encode(), str(d / "bundle")))
    except ConfigError as e:
        assert "/gone" in str(e) and "missing" in str(e), e
    else:
        raise AssertionError("a missing bind source was accepted")
    assert not (Path(pod) / "c1").exists()
    assert _mounted_under(Path(pod)) == [pod]
    assert _digest(user) == before


if __name__ == "__main__":
    globals()[sys.argv[1]](Path(sys.argv[2]))
