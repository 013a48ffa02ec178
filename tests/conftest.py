"""Fixtures the real-guest test modules share: the guest kernel and the busybox image."""
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
