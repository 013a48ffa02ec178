"""The nested tier: the kvm engine on real (emulated-SVM) KVM inside an L1 Linux under QEMU
TCG. One L1 boot runs every selection below; each inner test is one test here, passing,
failing (with the inner traceback) or skipping (with the inner reason) as it did inside.

`scripts/test.sh -m nested` runs only this tier. Where L1 cannot start (no QEMU, no SVM in
TCG, no kernel package) every test here skips and says why.
"""
import os

import pytest

from support.nested.l1_kernel import L1Unavailable
from support.nested.runner import collect, prepare_host_caches, run_in_l1

pytestmark = [pytest.mark.nested, pytest.mark.slow,
              # One L1 boot runs them all; the first test waits for it.
              pytest.mark.timeout(int(os.environ.get("VMM_NESTED_TIMEOUT", "2400")) + 300)]

# What runs inside L1, on the kvm engine: every kvm-marked test, and the real-Linux device
# and Sandbox VM, network and volume tests with their engine switched to kvm.
RUNS = [
    (["tests", "-m", "kvm and not nested"], {}),
    (["tests/test_machine_devices.py", "tests/test_sandbox_vm.py", "tests/test_sandbox_net.py",
      "tests/test_sandbox_volumes.py", "tests/test_sandbox_net_domains.py",
      "tests/test_sandbox_net_ns.py", "tests/test_msb_lifecycle.py",
      "tests/test_vhost_user_front_linux.py", "tests/test_sandbox_privileges.py",
      # vmm-runtime on the kvm engine: driven as a shim drives it, in a container's network
      # namespace, and once through containerd's runc shim (run, exec, kill, delete; its
      # monitor's VM checked to be KVM's). The other client tests (ctr's --rm and
      # terminal, podman's) would add ~80 s of nested TCG for the same engine path.
      "tests/test_runtime_vm.py", "tests/test_runtime_net.py",
      "tests/test_runtime_clients.py::test_ctr_detached_exec_kill_delete",
      # A Kubernetes pod as one VM: members in the pod VM with their own roots, bound in
      # through the kvm engine's virtio-fs front end after the VM booted (~45 s in L1; the
      # same pod through containerd's CRI is another ~95 s, run by hand: see the note).
      "tests/test_runtime_pod.py::test_members_share_the_pod_vm_and_leave_a_users_files"],
     {"VMM_TEST_ENGINE": "kvm"}),
    # Host directories and root directories through the kvm engine's vhost-user front end
    # (the 10,000-file trees stay on the qemu engine: minutes under nested TCG).
    (["tests/test_sandbox_hostdir_vm.py", "tests/test_sandbox_rootdir.py",
      "tests/test_hostdir_semantics.py", "-k", "not ten_thousand"],
     {"VMM_TEST_ENGINE": "kvm"}),
]


def _selected(config) -> bool:
    """Whether -m leaves this tier in: collecting the inner tests costs a few seconds, not
    worth paying when `-m "not slow"` or `-m "not nested"` drops them anyway."""
    expr = config.getoption("markexpr")
    if not expr:
        return True
    try:
        from _pytest.mark.expression import Expression   # pytest's own -m parser
    except ImportError:
        return True
    return Expression.compile(expr).evaluate(lambda name: name in ("nested", "slow"))


def pytest_generate_tests(metafunc):
    if "inner" not in metafunc.fixturenames:
        return
    ids = collect(RUNS) if _selected(metafunc.config) else ["(not selected)"]
    metafunc.parametrize("inner", ids, ids=ids)


@pytest.fixture(scope="session")
def l1_run(tmp_path_factory):
    try:
        prepare_host_caches()
        run = run_in_l1(RUNS, tmp_path_factory.mktemp("nested"),
                        timeout=float(os.environ.get("VMM_NESTED_TIMEOUT", "2400")))
    except L1Unavailable as e:
        pytest.skip(f"no L1 here: {e}")
    print(f"\nnested: L1 ran {len(run.results)} tests in {run.seconds:.0f} s; "
          f"inner exit codes {run.returncodes}")
    return run


def test_in_l1(inner, l1_run):
    result = l1_run.results.get(inner)
    if result is None:
        pytest.fail(f"{inner} never reported inside L1 (L1 or the inner pytest ended first; "
                    f"exit codes {l1_run.returncodes}). Last output:\n{l1_run.tail()}",
                    pytrace=False)
    if result.outcome == "skipped":
        pytest.skip(f"inside L1: {result.text}")
    if result.outcome == "xfailed":
        pytest.xfail(f"inside L1: {result.text}")
    if result.outcome == "failed":
        pytest.fail(f"inside L1:\n{result.text}", pytrace=False)
    assert result.outcome == "passed", result
