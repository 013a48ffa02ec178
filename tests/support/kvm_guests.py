"""What every test of the kvm engine with freestanding guests shares: the guest builder
(guest/tests/build.py, loaded by path since guest/ is not a package) and the skip marks
that say plainly why a host cannot run them."""
import importlib.util
import pathlib

import pytest

from vmm.engines import kvm_backing

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("guest_build", ROOT / "guest" / "tests" / "build.py")
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)

KVM_MARKS = [
    pytest.mark.kvm,
    pytest.mark.skipif(kvm_backing() in ("missing", "no-access"),
                       reason=f"/dev/kvm is {kvm_backing()}"),
    pytest.mark.skipif(guest_build.toolchain_missing() is not None,
                       reason=str(guest_build.toolchain_missing())),
]
