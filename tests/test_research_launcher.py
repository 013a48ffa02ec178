"""`bench boot --process launcher` without KVM: the launcher's timeline parsed, what the
launcher cannot boot refused before anything runs, and a whole run against a stand-in
launcher (a script that prints what vmm-boot prints, with real CLOCK_MONOTONIC times).
The real vmm-boot with a freestanding guest is in test_research_kvm.py."""
import sys

import pytest

from vmm.errors import ConfigError
from vmm.research import launcher, runs
from vmm.research.settings import BenchSettings, BootConfig

from test_research_cli import assert_bad_input, vmm_cli

TIMELINE = """\
READY boottime_ns=1500000 cpus=1

phase                 ms since start   delta ms   monotonic ns
process_start                 0.000          -   1000000000
machine_created               0.900      0.900   1000900000
vm_created                    2.000      1.100   1002000000
kernel_loaded                 2.500      0.500   1002500000
first_vcpu_entry              3.000      0.500   1003000000
boot_timer                    4.000      1.000   1004000000
exit                          5.000      1.000   1005000000

exit reason           count
io                       60
hlt                       2
unclaimed_io             20

exits to boot_timer   count
io                        4
unclaimed_io              3
"""


def test_timeline_parsed():
    marks, exits, at_init = launcher.parse_timeline(TIMELINE)
    # process_start (truncated to a clock tick) and exit are no marks of the lab
    assert marks == {"machine_created": 1000900000, "vm_created": 1002000000,
                     "kernel_loaded": 1002500000, "first_vcpu_entry": 1003000000,
                     "boot_timer": 1004000000}
    assert exits == {"io": 60, "hlt": 2, "unclaimed_io": 20}
    assert at_init == {"io": 4, "unclaimed_io": 3}


def test_a_guest_printing_look_alike_tables_does_not_fool_it():
    fake = ("phase  ms  delta  ns\nboot_timer 0.0 - 1\n\nexit reason count\nio 999999\n"
            "exits to boot_timer   count\nio 999\n")
    marks, exits, at_init = launcher.parse_timeline(fake + TIMELINE)
    assert marks["boot_timer"] == 1004000000 and exits["io"] == 60 and at_init["io"] == 4


def test_no_boot_timer_write_no_split_table():
    cut = TIMELINE[:TIMELINE.index("\nexits to boot_timer")]
    marks, exits, at_init = launcher.parse_timeline(cut.replace(
        "boot_timer                    4.000      1.000   1004000000\n", ""))
    assert "boot_timer" not in marks and exits["io"] == 60 and at_init == {}
    assert launcher.parse_timeline("the guest crashed\n") == ({}, {}, {})


@pytest.mark.parametrize("kwargs, message", [
    ({"init": ["agent"]}, "process=launcher runs the compiled vmm-boot"),
    ({"root": ["disk"]}, "it takes init=test, root=initramfs and no hugepages"),
    ({"hugepages": [True]}, "no huge-page option"),
    ({"engine": ["kvm", "qemu"]}, "process=launcher boots on the kvm engine only"),
])
def test_what_the_launcher_cannot_boot_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BenchSettings(process=["in", "launcher"], **kwargs).check()


def test_a_missing_launcher_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(launcher, "LAUNCHER", tmp_path / "vmm-boot")
    with pytest.raises(ConfigError, match=r"missing: .*vmm-boot \(setup.py builds it"):
        BenchSettings(process=["launcher"], engine=["kvm"]).check()


def test_engine_auto_must_be_kvm_here(monkeypatch):
    class Choice:
        name, reason = "qemu", "/dev/kvm is missing; using QEMU with TCG"
    monkeypatch.setattr(runs, "choose_engine", lambda engine: Choice)
    with pytest.raises(ConfigError, match=r"engine auto chose qemu here \(/dev/kvm is missing; "
                                          r"using QEMU with TCG\): ask for engine kvm"):
        runs.run_bench(BenchSettings(process=["launcher"], baselines=[]))


@pytest.mark.parametrize("args, fragment", [
    (["--init", "agent"], "process=launcher runs the compiled vmm-boot"),
    (["--engine", "qemu"], "boots on the kvm engine only"),
])
def test_cli_refusals_are_one_line_and_exit_2(args, fragment):
    assert_bad_input(vmm_cli("bench", "boot", "--process", "launcher", *args), fragment)


STAND_IN = """\
#!{python}
# Prints what vmm-boot --timeline prints, with this process's real monotonic times.
import sys, time
open({argv_file!r}, "w").write("\\n".join(sys.argv[1:]))
t = {{}}
t["machine_created"] = time.monotonic_ns()
for name in ("vm_created", "kernel_loaded", "first_vcpu_entry", "boot_timer"):
    time.sleep(0.002)
    t[name] = time.monotonic_ns()
print("READY boottime_ns=2000000 cpus=1", flush=True)
time.sleep(0.002)
print()
print("phase                 ms since start   delta ms   monotonic ns")
for name, ns in t.items():
    print(f"{{name:<20}} {{0:15.3f}} {{'-':>10}} {{ns:14d}}")
print()
print("exit reason           count")
print("io                       40")
print("unclaimed_io             30")
print()
print("exits to boot_timer   count")
print("io                        6")
print("unclaimed_io              5")
sys.stderr.write("exit: shutdown: guest reset (i8042 0xFE)\\n")
"""


def test_a_run_against_a_stand_in_launcher(monkeypatch, tmp_path):
    """The sample: spawn as request, the launcher's own marks in order, READY timed here,
    exits split as the launcher reported them (every reason listed), the command line."""
    argv_file = tmp_path / "argv"
    stand_in = tmp_path / "vmm-boot"
    stand_in.write_text(STAND_IN.format(python=sys.executable, argv_file=str(argv_file)))
    stand_in.chmod(0o755)
    monkeypatch.setattr(launcher, "LAUNCHER", stand_in)
    kernel = tmp_path / "vmlinux"
    kernel.write_text("")
    cfg = BootConfig(engine="kvm", kernel=str(kernel), memory=64, cpus=2, process="launcher")
    s = launcher.boot_launcher(cfg, initrd="/i.cpio", cmdline="quiet", initcalls=3, timeout=30)
    assert s["ok"], s
    assert s["system"] == "vmm-kvm-launcher" and s["status"] == "exit 0"
    assert list(s["marks_ms"]) == ["request", "machine_created", "vm_created", "kernel_loaded",
                                   "first_vcpu_entry", "boot_timer", "ready_line"], s["marks_ms"]
    times = list(s["marks_ms"].values())
    assert times == sorted(times) and s["marks_ms"]["request"] == 0
    assert (s["marks_ms"]["boot_timer"] - s["marks_ms"]["vm_created"]) >= 6  # three 2 ms sleeps
    assert s["phases_ms"]["total"] == s["marks_ms"]["ready_line"]
    assert s["guest_ms"] == {"guest_kernel_to_init": 2.0}
    before_mark, after_mark = s["exits"]["to_boot_timer"], s["exits"]["after_boot_timer"]
    assert (before_mark["io"], before_mark["unclaimed_io"], before_mark["hlt"]) == (6, 5, 0)
    assert (after_mark["io"], after_mark["unclaimed_io"], after_mark["mmio"]) == (34, 25, 0)
    assert argv_file.read_text().split("\n") == [
        "--kernel", str(kernel), "--initrd", "/i.cpio", "--mem", "64", "--cpus", "2",
        "--timeout", "30", "--cmdline", "quiet initcall_debug ignore_loglevel", "--timeline"]
    assert s["initcalls"] == [] and s["initcalls_seen"] == 0
