"""`auto` picks the engine the host can run a Linux guest on, and says why: qemu where
/dev/kvm is the PVM software hypervisor (this project's development and CI hosts), kvm
where /dev/kvm is hardware-backed (inside the nested tier's L1, emulated SVM counts)."""
import os

import pytest

from vmm import engines

# kvm-marked so the nested tier runs it inside L1 too, where the other decision is taken.
pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(engines.kvm_backing() in ("missing", "no-access"),
                                 reason=f"/dev/kvm is {engines.kvm_backing()}")]

IN_L1 = os.environ.get("VMM_IN_L1") == "1"   # set by the nested runner


def test_backing_is_what_this_host_is():
    backing = engines.kvm_backing()
    if IN_L1:
        assert backing == "hardware", "inside L1 /dev/kvm is KVM on (emulated) SVM"
    elif os.path.isdir("/sys/module/kvm_pvm"):
        assert backing == "pvm"
    else:
        assert backing == "hardware"


def test_auto_picks_by_backing_and_says_why():
    choice = engines.choose("auto")
    if engines.kvm_backing() == "hardware":
        assert choice.name == "kvm", choice
        assert "hardware-backed" in choice.reason
    else:
        assert choice.name == "qemu", choice
        assert "PVM" in choice.reason and "QEMU" in choice.reason


def test_explicit_kvm_on_pvm_warns_that_linux_will_not_boot():
    choice = engines.choose("kvm")
    assert choice.name == "kvm"
    if engines.kvm_backing() == "pvm":
        assert "will not reach userspace" in choice.reason
    else:
        assert choice.reason == "requested"
