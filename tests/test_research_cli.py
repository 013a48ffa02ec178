"""`python -m vmm info` and `python -m vmm boot`, run as the user runs them: a fresh process.

Boots use the freestanding test guests (guest/tests/) on the kvm engine: milliseconds even
under PVM. Every bad input must be exactly one `error: ...` line on stderr, exit code 2,
and no traceback. One slow test boots the project's own kernel with no arguments at all.
"""
import importlib.util
import json
import os
import pathlib
import re
import struct
import subprocess
import sys
import time

import pytest

from vmm.cli import research
from vmm.engines import kvm_backing, qemu_binary

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("guest_build", ROOT / "guest" / "tests" / "build.py")
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)

_NEEDS_KVM = [
    pytest.mark.kvm,
    pytest.mark.skipif(kvm_backing() in ("missing", "no-access"), reason=f"/dev/kvm is {kvm_backing()}"),
    pytest.mark.skipif(guest_build.toolchain_missing() is not None,
                       reason=str(guest_build.toolchain_missing())),
]


def needs_kvm(fn):
    for mark in _NEEDS_KVM:
        fn = mark(fn)
    return fn

CLK_TCK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def vmm_cli(*args, env=None, timeout=60):
    """Run `python -m vmm ARGS` (sys.executable: no version-manager shim in between)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "vmm", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="session")
def guests(tmp_path_factory):
    if guest_build.toolchain_missing():
        pytest.skip(guest_build.toolchain_missing())
    out = tmp_path_factory.mktemp("cli-guests")
    return lambda name: guest_build.build_guest(name, out)


def elf_kernel(path, load_size):
    """A minimal x86-64 ELF executable: one PT_LOAD at 1 MiB of load_size bytes (mostly bss).
    Enough for the loader's checks; nothing here runs it."""
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                       2, 62, 1, 0x100000, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    code = b"\xf4"  # hlt
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, 0x100000, 0x100000, len(code), load_size, 0x1000)
    path.write_bytes(ehdr + phdr + code)
    return path


# --- info ----------------------------------------------------------------------------------

def test_info_text_names_kvm_engine_and_kernel(tmp_path):
    r = vmm_cli("info", env={"VMM_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert lines["auto engine"].strip().startswith(("kvm (", "qemu ("))
    assert "guest kernel" in lines
    # An empty cache: the kernel path is there, and says it is built on first boot.
    assert str(tmp_path) in lines["guest kernel"] and "built on first" in lines["guest kernel"]
    if os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert re.match(r" *API 12, (pvm|hardware)", lines["kvm"]), lines["kvm"]


def test_info_json(tmp_path, guests):
    kernel = guests("hello")
    r = vmm_cli("info", "--json", env={"VMM_KERNEL": str(kernel)})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    gk = info["guest_kernel"]
    assert gk["path"] == str(kernel) and gk["built"] and gk["from_env"], gk

    kvm = info["kvm"]
    if not os.path.exists("/dev/kvm"):
        assert kvm == {"present": False, "backing": "missing"}
        return
    assert kvm["present"] and kvm["api_version"] == 12, kvm
    assert kvm["capabilities"]["IRQCHIP"] > 0 and "IRQCHIP" in kvm["required"]
    # Decided here from the host, not from the code under test.
    expect_pvm = os.path.isdir("/sys/module/kvm_pvm")
    assert (kvm["backing"] == "pvm") == expect_pvm, kvm["backing"]
    auto = info["auto_engine"]
    if kvm["backing"] == "hardware":
        assert auto["engine"] == "kvm"
    else:
        assert auto["engine"] == ("qemu" if qemu_binary() else None)
        assert "PVM" in auto["reason"] if expect_pvm else auto["reason"]
    assert info["qemu"] == qemu_binary()


def test_info_without_dev_kvm(monkeypatch, capsys):
    """No /dev/kvm (simulated in-process): info says so, auto falls back to qemu."""
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if os.fspath(p) == "/dev/kvm" else real_exists(p))
    assert research.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kvm"] == {"present": False, "backing": "missing"}
    if qemu_binary():
        assert info["auto_engine"] == {"engine": "qemu",
                                       "reason": "/dev/kvm is missing; using QEMU with TCG"}


# --- boot -----------------------------------------------------------------------------------

@needs_kvm
@pytest.mark.parametrize("flag", [[], ["--timeline"]])
def test_boot_streams_console_to_stdout(guests, flag):
    r = vmm_cli("boot", "--kernel", guests("hello"), "--engine", "kvm", "--memory", 16, *flag)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello from the test guest\n"), r.stdout
    assert r.stderr.splitlines()[-1] == "exit: shutdown: guest reset (i8042 0xFE)", r.stderr
    assert r.stderr.splitlines()[0].startswith("engine: kvm (requested")
    if not flag:
        assert "phase" not in r.stdout
        return
    rows = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(\w+) +(\d+\.\d+)(?: +(-?\d+\.\d+))?$", line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    phases = [p for p in research.PHASES if p in rows]
    assert phases == ["process_start", "machine_created", "vm_created", "kernel_loaded",
                      "first_vcpu_entry", "boot_timer", "exit"], r.stdout
    times = [rows[p] for p in phases]
    assert times == sorted(times), r.stdout
    # exit stats follow: the guest's three port writes, one of them to nobody (none here)
    assert re.search(r"^io +\d+$", r.stdout, re.M), r.stdout


@needs_kvm
def test_boot_json(guests):
    t_spawn = time.monotonic_ns()
    r = vmm_cli("boot", "--kernel", guests("port_exit"), "--engine", "kvm", "--memory", 16, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # nothing but the JSON object on stdout
    assert report["engine"] == "kvm" and report["initrd"] is None
    assert report["status"] == {"kind": "shutdown", "message": "guest reset (i8042 0xFE)",
                                "timed_out": False}
    tl = report["timeline_ns"]
    order = ["process_start", "machine_created", "vm_created", "kernel_loaded",
             "first_vcpu_entry", "boot_timer", "exit"]
    assert list(tl) == order, tl
    assert [tl[p] for p in order] == sorted(tl[p] for p in order), tl
    # The child's process start, from /proc/self/stat: one clock tick of truncation at most
    # before our spawn, and never after the machine was created.
    assert t_spawn - CLK_TCK_NS - 1_000_000 <= tl["process_start"] <= tl["machine_created"], \
        (t_spawn, tl)
    assert tl["exit"] <= time.monotonic_ns()
    # port_exit writes 0x440 (the boot timer), 0xf4 (QEMU's debug exit: nobody here), 0x64
    stats = report["exit_stats"]
    assert stats["io"] == 3 and stats["unclaimed_io"] == 1, stats
    assert report["console"] == ""


# --- bad input: one line, exit 2 -------------------------------------------------------------

def assert_bad_input(r, *fragments):
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert r.stdout == ""


@pytest.fixture(scope="session")
def hello(guests):
    return guests("hello")


def test_missing_kernel(tmp_path):
    missing = tmp_path / "no-such-vmlinux"
    assert_bad_input(vmm_cli("boot", "--kernel", missing), "kernel not found", str(missing))


def test_missing_initrd(tmp_path, hello):
    missing = tmp_path / "no-such-initrd"
    assert_bad_input(vmm_cli("boot", "--kernel", hello, "--initrd", missing),
                     "initrd not found", str(missing))


def test_not_a_kernel(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a kernel\n" * 100)
    assert_bad_input(vmm_cli("boot", "--kernel", text), str(text), "is not a kernel")


def test_an_arm_elf_is_not_a_kernel(tmp_path):
    elf = bytearray(elf_kernel(tmp_path / "arm.elf", 4096).read_bytes())
    struct.pack_into("<H", elf, 18, 183)  # EM_AARCH64
    (tmp_path / "arm.elf").write_bytes(bytes(elf))
    assert_bad_input(vmm_cli("boot", "--kernel", tmp_path / "arm.elf"), "not x86-64")


def test_memory_too_small_for_the_kernel(tmp_path):
    kernel = elf_kernel(tmp_path / "big.elf", 40 << 20)  # ends at 41 MiB
    assert_bad_input(vmm_cli("boot", "--kernel", kernel, "--memory", 16),
                     "memory 16 MiB is too small", str(kernel), "at least 41 MiB")


def test_memory_below_the_minimum(hello):
    assert_bad_input(vmm_cli("boot", "--kernel", hello, "--memory", 1), "memory_mib", "got 1")


@needs_kvm
def test_too_many_vcpus_for_the_kvm_engine(hello):
    assert_bad_input(vmm_cli("boot", "--kernel", hello, "--engine", "kvm", "--cpus", 65),
                     "cpus 65", "kvm engine", "at most 64")


@pytest.mark.parametrize("cpus", ["0", "-1", "1000"])
def test_vcpu_count_out_of_any_range(hello, cpus):
    assert_bad_input(vmm_cli("boot", "--kernel", hello, "--cpus", cpus), "cpus", f"got {cpus}")


def test_non_numeric_cpus(hello):
    assert_bad_input(vmm_cli("boot", "--kernel", hello, "--cpus", "two"), "--cpus", "'two'")


def test_unknown_engine(hello):
    assert_bad_input(vmm_cli("boot", "--kernel", hello, "--engine", "xen"), "--engine", "'xen'")


@needs_kvm
def test_command_line_too_long(hello):
    assert_bad_input(vmm_cli("boot", "--kernel", hello, "--engine", "kvm", "--cmdline", "x" * 2040),
                     "2040 bytes", "32-byte prefix", "2072", "2047")


def test_kvm_engine_without_dev_kvm(monkeypatch, capsys, hello):
    """No /dev/kvm, simulated in-process (the CLI's own main, as `python -m vmm` runs it)."""
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if os.fspath(p) == "/dev/kvm" else real_exists(p))
    rc = research.main(["boot", "--kernel", str(hello), "--engine", "kvm"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err == "error: the kvm engine needs /dev/kvm, which this host does not have\n"


def test_no_command_is_an_error():
    r = vmm_cli()
    assert_bad_input(r, "command")


# --- the project's own kernel (slow: real Linux under TCG) -----------------------------------

@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(qemu_binary() is None, reason="qemu-system-x86_64 is not installed")
def test_boot_with_no_arguments_reaches_ready():
    r = vmm_cli("boot", "--timeline", timeout=1800)  # a first run builds the kernel
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^READY", r.stdout, re.M), r.stdout[-2000:]
    assert "engine: " in r.stderr and r.stderr.splitlines()[-1].startswith("exit: shutdown")
    for phase in ("process_start", "machine_created", "boot_timer", "exit"):
        assert re.search(rf"^{phase} +\d+\.\d+", r.stdout, re.M), (phase, r.stdout[-2000:])
