"""Fixtures the real-guest test modules share: the guest kernel and the busybox image."""
import pytest

from support.sandbox_image import build_busybox_image


@pytest.fixture(scope="session")
def kernel_path():
    """The built guest kernel. Only a kernel that is not built yet is a skip (scripts/test.sh
    builds it first); any other failure of the lookup is the test's failure."""
    from vmm.guest import kernel
    try:
        return kernel.guest_kernel(build=False)
    except kernel.KernelError as e:
        if "not built yet" not in str(e):
            raise
        pytest.skip(f"guest kernel not built: {e}")


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """A busybox root disk (EROFS), built once per run."""
    return build_busybox_image(tmp_path_factory.getbasetemp() / "sandbox-image")
