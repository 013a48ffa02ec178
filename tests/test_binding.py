"""vmm._binding: the one loader of the C core and the one way a C error becomes an exception."""
import subprocess
import sys

import pytest

from vmm import _binding
from vmm.errors import ConfigError, GuestError


def test_import_vmm_does_not_load_the_core():
    out = subprocess.run([sys.executable, "-c", "import sys, vmm; print('vmm._core' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_failing_call_raises_with_the_core_message():
    with pytest.raises(ConfigError) as e:
        _binding.check(_binding.lib.vmm_vsock_new, 3, b"/nonexistent-dir/" + b"x" * 200)
    assert e.value.core_message and e.value.core_message in str(e.value)


def test_the_caller_picks_the_type_and_a_context():
    with pytest.raises(GuestError) as e:
        _binding.check(_binding.lib.vmm_net_open_tap, b"x" * 64, error=GuestError, context="tap")
    assert str(e.value) == f"tap: {e.value.core_message}"


def test_success_returns_the_result():
    info = _binding.ffi.new("struct vmm_virtio_mmio_info *")
    assert _binding.lib.vmm_virtio_mmio_slot(0, info) == 0
    ptr = _binding.check(_binding.lib.vmm_blk_new, __file__.encode(), 1, _binding.ffi.NULL)
    try:
        assert ptr != _binding.ffi.NULL
    finally:
        _binding.lib.vmm_vdev_free(ptr)
