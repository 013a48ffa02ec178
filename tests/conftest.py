"""Fixtures the real-guest test modules share: the guest kernel, the busybox image, and a
private base for the sandboxes' runtime dirs."""
import shutil
import tempfile

import pytest

from support.guest_kernel import built_guest_kernel
from support.sandbox_image import build_busybox_image


@pytest.fixture(scope="session")
def kernel_path():
    """The built guest kernel. Only a kernel never built here is a skip (scripts/test.sh
    builds it first); any other failure of the lookup is the test's failure
    (support/guest_kernel.py)."""
    return built_guest_kernel()


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """A busybox root disk (EROFS), built once per run."""
    return build_busybox_image(tmp_path_factory.getbasetemp() / "sandbox-image")


@pytest.fixture(scope="module")
def private_runtime_base():
    """The runtime dirs of a module's sandboxes in a short base of its own (a module takes
    it with pytest.mark.usefixtures): its checks see only its own sandboxes' files, not
    another run's in /tmp, and the agent's and vhost-user sockets' paths fit a
    sockaddr_un (runtime_base() ignores a base too long for them)."""
    from vmm.sandbox.runtime_dir import runtime_base
    base = tempfile.mkdtemp(prefix="vmm-rt-")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", base)
        assert runtime_base() == base
        yield base
    shutil.rmtree(base, ignore_errors=True)
