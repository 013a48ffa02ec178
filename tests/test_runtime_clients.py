"""vmm-runtime under the real clients: containerd (`ctr run --runc-binary`, through its
stock runc shim) and podman (`--runtime`), each run as a user would, against an image
imported from a local file (no registry, no internet). From inside: the guest kernel is
ours, not the host's. Afterwards nothing is left running.

containerd runs as a private daemon of the test (its own root, state and socket under the
test's directory); podman with its own --root/--runroot and `--network none` (the
container's network namespace is not joined yet)."""
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from support.proctable import vm_engine
from support.runtime_clients import (Containerd, busybox_archive, monitors_of, our_kernel,
                                     run_in_pty, runtime_executable)
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="containerd and rootful podman need root")]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/vmm-test/busybox:1"
T = 180


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("clients")
    busybox_archive(d, IMAGE)
    runtime_executable(d, ENGINE)
    return d


# --- containerd ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def containerd(work):
    if not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("no containerd (apt-get install containerd)")
    daemon = Containerd(work / "containerd", work / "vmm-runtime")
    ctr = daemon.ctr(f"vmm-test-{uuid.uuid4().hex[:8]}")
    subprocess.run(ctr + ["image", "import", str(work / "busybox.tar")], check=True, capture_output=True)
    yield ctr
    daemon.stop()


def ctr_run(ctr, work, *args, check=True):
    r = subprocess.run(ctr + ["run", "--runc-binary", str(work / "vmm-runtime"), *args],
                       capture_output=True, text=True, timeout=T)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_ctr_run_in_our_kernel(containerd, work):
    r = ctr_run(containerd, work, "--rm", IMAGE, "c-run", "sh", "-c", "uname -r; echo out; exit 3",
                check=False)
    assert r.returncode == 3, r.stderr
    release, word = r.stdout.split()
    assert our_kernel(release) and word == "out"
    assert not monitors_of("c-run")


def test_ctr_run_interactive_shell(containerd, work):
    argv = containerd + ["run", "--rm", "-t", "--runc-binary", str(work / "vmm-runtime"), IMAGE,
                         "c-tty", "sh"]
    out, status = run_in_pty(argv, b"echo in-$((6*7)); uname -r; exit 5\n", b"in-42")
    assert status == 5
    assert b"-vmm" in out
    assert not monitors_of("c-tty")


def test_ctr_detached_exec_kill_delete(containerd, work):
    ctr_run(containerd, work, "-d", IMAGE, "c-bg", "sleep", "1000")
    try:
        # the container's monitor runs its VM on the engine this run tests
        assert ENGINE in [vm_engine(p) for p in monitors_of("c-bg")]
        r = subprocess.run(containerd + ["task", "exec", "--exec-id", "e1", "c-bg", "sh", "-c",
                                         "uname -r; exit 4"], capture_output=True, text=True, timeout=T)
        assert r.returncode == 4 and our_kernel(r.stdout), (r.stdout, r.stderr)
        ps = subprocess.run(containerd + ["task", "ls"], capture_output=True, text=True, timeout=T)
        assert "c-bg" in ps.stdout and "RUNNING" in ps.stdout
        subprocess.run(containerd + ["task", "kill", "-s", "SIGKILL", "c-bg"], check=True, timeout=T)
        deadline = time.monotonic() + 60
        while "STOPPED" not in subprocess.run(containerd + ["task", "ls"], capture_output=True,
                                              text=True).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        subprocess.run(containerd + ["task", "delete", "--force", "c-bg"], capture_output=True, timeout=T)
        subprocess.run(containerd + ["container", "rm", "c-bg"], capture_output=True, timeout=T)
    deadline = time.monotonic() + 30
    while monitors_of("c-bg") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not monitors_of("c-bg")


# --- podman -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def podman(work):
    if not shutil.which("podman"):
        pytest.skip("no podman (apt-get install podman)")
    import tempfile
    d = work / "podman"
    # podman refuses a --runroot longer than 50 characters: a short one of our own
    run = tempfile.mkdtemp(prefix="vmm-podman-", dir="/tmp")
    cmd = ["podman", "--root", str(d / "root"), "--runroot", run, "--cgroup-manager",
           "cgroupfs", "--events-backend", "file", "--runtime", str(work / "vmm-runtime")]
    subprocess.run(cmd + ["load", "-i", str(work / "busybox.tar")], check=True, capture_output=True,
                   timeout=T)
    yield cmd
    subprocess.run(cmd + ["rm", "-af", "-t", "0"], capture_output=True, timeout=T)
    shutil.rmtree(run, ignore_errors=True)


def test_podman_run_in_our_kernel(podman):
    r = subprocess.run(podman + ["run", "--rm", "--network", "none", "--name", "p-run", IMAGE, "sh",
                                 "-c", "uname -r; cat /etc/hostname; exit 3"],
                       capture_output=True, text=True, timeout=T)
    assert r.returncode == 3, r.stderr
    release, hostname = r.stdout.split()
    assert our_kernel(release) and hostname   # podman's /etc/hostname, copied in
    assert r.stderr == ""                       # what the VM does not apply is not shouted


def test_podman_interactive_shell(podman):
    out, status = run_in_pty(podman + ["run", "--rm", "-it", "--network", "none", IMAGE, "sh"],
                             b"echo in-$((6*7)); tty; exit 5\n", b"in-42")
    assert status == 5 and b"/dev/pts/" in out


def test_podman_exec_stop_rm(podman):
    subprocess.run(podman + ["run", "-d", "--network", "none", "--name", "p-bg", IMAGE, "sleep", "1000"],
                   check=True, capture_output=True, timeout=T)
    try:
        [cid] = _podman_ids(podman, "p-bg")
        assert ENGINE in [vm_engine(p) for p in monitors_of(cid)]
        r = subprocess.run(podman + ["exec", "p-bg", "sh", "-c", "uname -r; exit 6"],
                           capture_output=True, text=True, timeout=T)
        assert r.returncode == 6 and our_kernel(r.stdout), r.stderr
        subprocess.run(podman + ["stop", "-t", "2", "p-bg"], check=True, capture_output=True, timeout=T)
        st = subprocess.run(podman + ["inspect", "p-bg", "--format", "{{.State.Status}}"],
                            capture_output=True, text=True, timeout=T)
        assert st.stdout.strip() == "exited"
    finally:
        subprocess.run(podman + ["rm", "-f", "p-bg"], capture_output=True, timeout=T)
    assert not any(monitors_of(cid) for cid in _podman_ids(podman, "p-bg"))


def _podman_ids(podman, name):
    r = subprocess.run(podman + ["ps", "-a", "--filter", f"name={name}", "--format", "{{.ID}}",
                                 "--no-trunc"], capture_output=True, text=True)
    return r.stdout.split()


def test_containerd_loads_the_shipped_handler_config(containerd):
    """docs/containerd-vmm.toml is the config this module's containerd runs with: its CRI
    plugin, which holds the "vmm" handler, must have loaded it."""
    r = subprocess.run(containerd + ["plugins", "ls"], capture_output=True, text=True, timeout=T)
    cri = [line.split() for line in r.stdout.splitlines() if " cri " in f" {line} "]
    assert cri and cri[0][-1] == "ok", r.stdout
