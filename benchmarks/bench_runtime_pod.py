"""A container that joins its pod's VM against one that boots a VM of its own, through
vmm-runtime's command line as containerd's shim drives it (create with the container's
stdio, start, wait for the pid's exit, delete), alternated round by round:

    PYTHONPATH=$PWD:$PWD/tests python3 -m pytest benchmarks/bench_runtime_pod.py --benchmark-only -p no:cacheprovider -s

- ours: a pod member (CRI's annotations naming a running sandbox) running `true`: no boot,
  a process in the pod VM with its own root (the rootfs bound into the pod share);
- baseline: the same bundle without the annotations: a VM of its own.
The ratio is what a Kubernetes pod's second container costs to start under the pod-VM
model against one VM per container; lower is better, and there is no target (the pod VM
model was chosen for the shared network and localhost, not for speed).
"""
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from support.rootfs_dir import unpack_busybox_rootfs
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE
from test_runtime_pod import SANDBOX, bundle_for, member_annotations
from test_runtime_vm import Shim, rt

ROUNDS = 5

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="a pod VM's binds need root"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd")]


@pytest.fixture(scope="module")
def pod():
    d = Path(tempfile.mkdtemp(prefix="vmm-bench-pod-"))
    rootfs = unpack_busybox_rootfs(d / "rootfs")
    root = d / "root"
    sandbox = Shim(d, root, bundle_for(d, rootfs, "sb-bundle", ["sleep", "100000"], SANDBOX), "sb")
    rt(root, "start", "sb")
    yield {"dir": d, "root": root, "rootfs": rootfs}
    rt(root, "delete", "--force", "sb", check=False)
    sandbox.exit_code()
    shutil.rmtree(d, ignore_errors=True)


def _run(pod, name: str, annotations: dict) -> float:
    """create .. exit of `true`; the delete after it is not timed."""
    b = bundle_for(pod["dir"], pod["rootfs"], f"{name}-bundle", ["true"], annotations)
    t0 = time.perf_counter()
    shim = Shim(pod["dir"], pod["root"], b, name)
    rt(pod["root"], "start", name)
    assert shim.exit_code() == 0
    took = time.perf_counter() - t0
    rt(pod["root"], "delete", name)
    return took


def test_member_start_vs_a_vm_of_its_own(benchmark, alternate, pod):
    n = iter(range(10**6))
    engine = {"vmm.engine": ENGINE}
    alternate(benchmark, "pod member vs own VM (create..exit of true)",
              ours=("a member of the running pod VM",
                    lambda: _run(pod, f"m{next(n)}", member_annotations(engine))),
              baseline=("the same bundle as a container of its own (boots a VM)",
                        lambda: _run(pod, f"c{next(n)}", engine)),
              rounds=ROUNDS, target="no target: lower is better")
