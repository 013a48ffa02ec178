"""Which engine the real-Linux device and sandbox tests run on: qemu by default (the only
one that boots Linux on a PVM host), kvm with VMM_TEST_ENGINE=kvm, as the nested tier runs
them inside L1, where /dev/kvm is hardware-style KVM."""
import os
import shutil

import pytest

ENGINE = os.environ.get("VMM_TEST_ENGINE", "qemu")


def engine_marks():
    """Marks for a module whose tests boot Linux on ENGINE: skip, naming why, where it cannot."""
    if ENGINE == "kvm":
        from vmm.engines import kvm_backing
        backing = kvm_backing()
        return [pytest.mark.kvm,
                pytest.mark.skipif(backing != "hardware",
                                   reason=f"VMM_TEST_ENGINE=kvm, but /dev/kvm here is {backing!r}: "
                                          "a Linux guest cannot boot under it")]
    return [pytest.mark.qemu,
            pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                               reason="no qemu-system-x86_64")]
