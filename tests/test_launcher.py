"""The compiled launcher vmm-boot (csrc/launcher/vmm_boot.c): built by setup.py next to
the C core, it boots freestanding guests on the kvm engine without Python, prints the
same timeline phases as `python -m vmm boot --timeline` in a parseable table, and exits
with the guest's status (0 shutdown, 1 anything else, 2 bad arguments)."""
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

import vmm
from support.kvm_guests import KVM_MARKS, guest_build
from vmm.timeline import PHASES

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCHER = pathlib.Path(vmm.__file__).resolve().parent / "bin" / "vmm-boot"
WAIT_S = 30


@pytest.fixture(scope="module")
def launcher():
    assert os.access(LAUNCHER, os.X_OK), (
        f"{LAUNCHER} is missing: setup.py builds it with the C core "
        "(python3 setup.py build_ext --inplace)")
    return str(LAUNCHER)


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    if guest_build.toolchain_missing():
        pytest.skip(guest_build.toolchain_missing())
    out = tmp_path_factory.mktemp("guests")
    return {name: str(guest_build.build_guest(name, out))
            for name in ("hello", "port_exit", "triple", "spin")}


def run(launcher, *args, timeout=WAIT_S):
    return subprocess.run([launcher, *args], capture_output=True, text=True, timeout=timeout)


def parse_timeline(stdout):
    """{phase: (ms since start, monotonic ns)} and {exit reason: count} from the tables
    --timeline prints after the console (the last of each, should a guest print one)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.split()[:1] == ["phase"])
    phases, i = {}, start + 1
    while i < len(lines) and lines[i].strip():
        name, ms, delta, ns = lines[i].split()
        phases[name] = (float(ms), int(ns))
        i += 1
    stats_at = max(i for i, line in enumerate(lines) if line.startswith("exit reason"))
    stats = {}
    for line in lines[stats_at + 1:]:
        if not line.strip():
            break
        reason, count = line.split()
        stats[reason] = int(count)
    return phases, stats


# --- the build -----------------------------------------------------------------------------

@pytest.mark.slow
def test_builds_from_the_core_sources(tmp_path):
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        import build_launcher
        import build_core
    finally:
        sys.path.remove(str(ROOT / "csrc"))
    # the same C core as the extension, plus only the launcher's own file
    extra = set(build_launcher.sources()) - {str(ROOT / p) for p in build_core.sources()}
    assert extra == {str(ROOT / "csrc" / "launcher" / "vmm_boot.c")}
    out = build_launcher.build(str(tmp_path / "vmm-boot"))
    assert os.access(out, os.X_OK)
    r = run(out, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: vmm-boot --kernel K")


def test_cmdline_prefix_matches_the_kvm_engine():
    from vmm.engines.kvm import CMDLINE_PREFIX

    src = (ROOT / "csrc" / "launcher" / "vmm_boot.c").read_text()
    m = re.search(r'#define CMDLINE_PREFIX "([^"]*)"', src)
    assert m and m.group(1) == CMDLINE_PREFIX


def test_help(launcher):
    r = run(launcher, "--help")
    assert r.returncode == 0
    assert "--kernel K" in r.stdout and "--timeline" in r.stdout and r.stderr == ""


def _kvm(f):
    """Skip, saying why, where /dev/kvm or the guest toolchain is missing."""
    for mark in KVM_MARKS:
        f = mark(f)
    return f


# --- bad arguments: one error line, exit 2 -------------------------------------------------

@pytest.mark.parametrize("args, message", [
    ((), "--kernel is required"),
    (("--kernel",), "--kernel needs a value"),
    (("--kernel", "/nonexistent/vmlinux"), "kernel not found: /nonexistent/vmlinux"),
    (("--bogus", "1"), "unknown option '--bogus'"),
    (("stray",), "unexpected argument 'stray'"),
    (("--kernel", "{hello}", "--mem", "lots"), "--mem takes a whole number"),
    (("--kernel", "{hello}", "--mem", "-5"), "--mem takes a whole number"),
    (("--kernel", "{hello}", "--mem=1"), "--mem must be at least"),
    (("--kernel", "{hello}", "--cpus", "0"), "--cpus takes a whole number"),
    (("--kernel", "{hello}", "--cpus", "65"), "--cpus must be between 1 and 64"),
    (("--kernel", "{hello}", "--timeout", "0"), "--timeout takes seconds above 0"),
    (("--kernel", "{hello}", "--initrd", "/nonexistent/initrd"), "initrd not found"),
])
def test_bad_arguments(launcher, guests, args, message):
    r = run(launcher, *(a.format(**guests) for a in args))
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("vmm-boot: error: ") and message in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (("--kernel", "{not_a_kernel}"), "is not a kernel"),
    (("--kernel", "{hello}", "--mem", "2", "--initrd", "{big_initrd}"),
     "does not fit in guest memory"),
], ids=["not-a-kernel", "initrd-too-big"])
@_kvm
def test_bad_input_files_are_usage_errors(launcher, guests, tmp_path, args, message):
    not_a_kernel = tmp_path / "not-a-kernel"
    not_a_kernel.write_bytes(b"hello\n" * 100)
    big_initrd = tmp_path / "big-initrd"
    big_initrd.write_bytes(bytes(3 << 20))  # more than a 2 MiB guest holds
    files = dict(not_a_kernel=not_a_kernel, big_initrd=big_initrd, **guests)
    r = run(launcher, *(a.format(**files) for a in args))
    assert r.returncode == 2, r
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("vmm-boot: error: ") and message in r.stderr, r.stderr


# --- boots ----------------------------------------------------------------------------------

@_kvm
def test_boots_a_guest_and_reports_its_timeline(launcher, guests):
    t0 = time.monotonic_ns()
    r = run(launcher, "--kernel", guests["hello"], "--mem", "16", "--timeline")
    t1 = time.monotonic_ns()
    assert r.returncode == 0, r
    assert r.stdout.startswith("hello from the test guest\n")
    assert r.stderr == "exit: shutdown: guest reset (i8042 0xFE)\n"
    phases, stats = parse_timeline(r.stdout)
    expected = ["process_start", "machine_created", "vm_created", "kernel_loaded",
                "first_vcpu_entry", "boot_timer", "exit"]
    assert list(phases) == expected
    assert set(expected) <= set(PHASES)  # the names `python -m vmm boot` uses
    ns = [phases[p][1] for p in expected]
    assert ns == sorted(ns)
    # process_start is /proc's start tick (up to one tick early); the rest are exact and
    # on the system-wide monotonic clock this test reads too
    assert t0 <= phases["machine_created"][1] and phases["exit"][1] <= t1
    assert phases["process_start"][0] == 0.0
    # the guest's 26 console bytes, its boot-timer write and its i8042 reset: port exits
    assert stats.get("io", 0) >= 28


@_kvm
def test_without_timeline_stdout_is_the_console_alone(launcher, guests):
    r = run(launcher, "--kernel", guests["hello"], "--mem", "16")
    assert r.returncode == 0, r
    assert r.stdout == "hello from the test guest\n"


@_kvm
def test_the_same_status_as_python_m_vmm_boot(launcher, guests):
    ours = run(launcher, "--kernel", guests["port_exit"], "--mem", "16")
    py = subprocess.run([sys.executable, "-m", "vmm", "boot", "--kernel", guests["port_exit"],
                         "--engine", "kvm", "--memory", "16"],
                        capture_output=True, text=True, timeout=WAIT_S)
    assert (ours.returncode, ours.stdout) == (py.returncode, py.stdout) == (0, "")
    exit_line = [line for line in py.stderr.splitlines() if line.startswith("exit:")]
    assert ours.stderr.splitlines() == exit_line


@_kvm
def test_a_crashing_guest_exits_1_with_the_error(launcher, guests):
    r = run(launcher, "--kernel", guests["triple"], "--mem", "16", "--timeline")
    assert r.returncode == 1, r
    # The registers where KVM still has them; on AMD SVM (the nested tier's L1) KVM resets
    # the vCPU first and the message says so (as test_kvm_engine's triple-fault test).
    assert re.match(r"exit: error: triple fault \(KVM_EXIT_SHUTDOWN\) on vCPU 0: "
                    r"(rip=|registers unavailable)", r.stderr), r.stderr
    phases, stats = parse_timeline(r.stdout)
    assert "boot_timer" not in phases and "exit" in phases  # not reached: absent, not zero
    assert stats["shutdown"] == 1


@_kvm
def test_timeout_stops_the_guest_and_exits_1(launcher, guests):
    t0 = time.monotonic()
    r = run(launcher, "--kernel", guests["spin"], "--mem", "16", "--timeout", "0.5")
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r
    assert r.stderr == "exit: host-stop: timed out after 0.5 s\n"
    assert 0.5 <= elapsed < WAIT_S


@_kvm
def test_the_kvm_engine_prefix_goes_before_the_cmdline(launcher, guests):
    """The loader counts the whole line: the longest --cmdline that boots is the kernel's
    limit less the prefix, so the prefix is there, once, in front."""
    from vmm.engines.kvm import CMDLINE_PREFIX
    from vmm.kernel_image import core_limits

    room = core_limits().cmdline_size - 1 - len(CMDLINE_PREFIX)
    ok = run(launcher, "--kernel", guests["hello"], "--mem", "16", "--cmdline", "x" * room)
    assert ok.returncode == 0, ok
    over = run(launcher, "--kernel", guests["hello"], "--mem", "16", "--cmdline", "x" * (room + 1))
    assert over.returncode == 2
    assert over.stderr == (f"vmm-boot: error: kernel command line is {room + 1 + len(CMDLINE_PREFIX)}"
                           f" bytes; {guests['hello']} takes at most {room + len(CMDLINE_PREFIX)}\n")


@_kvm
def test_an_initrd_that_fits_boots(launcher, guests, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(os.urandom(100_000))
    r = run(launcher, "--kernel", guests["hello"], "--mem", "16", "--initrd", str(initrd))
    assert r.returncode == 0, r
    assert r.stdout == "hello from the test guest\n"
