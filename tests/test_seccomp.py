"""The kvm engine's seccomp filters on the vCPU and device I/O threads (csrc/seccomp*.c).

A forbidden call must end the process with one line naming the call and the thread kind;
a test-only probe port (KvmOptions(seccomp_probe=...)) makes a confined thread issue one,
in a child process since the whole process ends. The freestanding guests of the other
kvm tests run under the filter too (every VM without Python devices has it on its vCPUs,
every VM's device I/O thread has it); here a guest with a disk runs with both threads
confined and is checked to really be confined.
"""
import glob
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

import vmm
from vmm import KvmOptions, PythonDevice
from vmm._binding import ffi, lib
from vmm.devices import Disk, Vsock
from vmm.errors import ConfigError

from support.kvm_guests import KVM_MARKS, guest_build  # noqa: E402

pytestmark = KVM_MARKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
PROBE_PORT = 0xF4  # port_exit.S writes it (QEMU's isa-debug-exit) before its i8042 reset
EXIT_STATUS = 159  # 128 + SIGSYS: csrc/seccomp.c
WAIT = 30


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    out = tmp_path_factory.mktemp("guests")
    return lambda name: guest_build.build_guest(name, out)


def _name(nr):
    p = lib.vmm_seccomp_syscall_name(nr)
    return None if p == ffi.NULL else ffi.string(p).decode()


@pytest.mark.skipif(not os.path.exists(UNISTD), reason=f"{UNISTD} not installed")
def test_syscall_names_match_the_system_header():
    with open(UNISTD) as f:
        table = {int(n): name for name, n in re.findall(r"#define __NR_(\w+) (\d+)", f.read())}
    assert table, UNISTD
    assert {nr: _name(nr) for nr in table} == table
    assert _name(-1) is None and _name(max(table) + 1000) is None


def test_seccomp_true_with_python_devices_is_refused():
    dev = PythonDevice(0x500, 4, lambda *a: None, mmio=False)
    with pytest.raises(ConfigError, match=r"seccomp=True\) cannot have Python devices"):
        KvmOptions(python_devices=[dev], seccomp=True)
    opts = KvmOptions(python_devices=[dev])
    assert not opts.seccomp_vcpus and opts.seccomp_io  # Python runs on the vCPU, never on the I/O thread
    assert KvmOptions().seccomp_vcpus and KvmOptions().seccomp_io
    off = KvmOptions(seccomp=False)
    assert not off.seccomp_vcpus and not off.seccomp_io


def _confined_threads():
    """(name, Seccomp mode) of this process's threads, without KVM's own kernel workers."""
    out = []
    for t in glob.glob("/proc/self/task/*/status"):
        try:
            with open(t) as f:
                st = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        if not st["Name"].startswith("kvm"):
            out.append(int(st["Seccomp"]))
    return sum(1 for mode in out if mode == 2)


@pytest.mark.parametrize("seccomp, confined", [(None, 3), (False, 0)])
def test_guest_with_a_disk_runs_with_its_threads_confined(guests, tmp_path, seccomp, confined):
    """2 vCPUs + the disk's I/O thread = 3 confined threads by default; none when off."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    before = _confined_threads()
    m = vmm.Machine(guests("spin"), engine="kvm", cpus=2, memory_mib=16, disks=[Disk(str(disk))],
                    options=KvmOptions(seccomp=seccomp))
    try:
        m.start()
        deadline = time.monotonic() + WAIT
        while b"spinning" not in m.console and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"spinning" in m.console, m.console
        assert _confined_threads() - before == confined
        assert m.wait(timeout=0.2) is None, "the guest keeps running under the filter"
    finally:
        status = m.stop()
    assert status.kind == "host-stop", status


def test_freestanding_guest_runs_and_ends_normally_under_the_filter(guests):
    m = vmm.Machine(guests("hello"), engine="kvm", memory_mib=16)
    with m:
        m.start()
        status = m.wait(timeout=WAIT)
    assert status is not None and status.kind == "shutdown", status
    assert b"hello from the test guest" in m.console


CHILD = textwrap.dedent("""
    import sys, time, vmm
    from vmm import KvmOptions
    path, thread, nr, seccomp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "on"
    m = vmm.Machine(path, engine="kvm", memory_mib=16,
                    options=KvmOptions(seccomp=seccomp, seccomp_probe=({port}, thread, nr)))
    m.start()
    status = m.wait(timeout={wait})
    time.sleep(2)  # the I/O thread acts on the probe's eventfd moments after the guest ends
    print("survived:", status.kind if status else None, flush=True)
""")


def _run_probe(guests, thread, nr, seccomp="on"):
    script = CHILD.format(port=PROBE_PORT, wait=WAIT)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", script, str(guests("port_exit")), thread, str(nr), seccomp],
                          capture_output=True, text=True, timeout=WAIT + 30, env=env)


@pytest.mark.parametrize("thread, kind, nr, name", [
    ("vcpu", "vCPU", 102, "getuid"),            # on no allowlist
    ("vcpu", "vCPU", 16, "ioctl"),              # allowed, but request 0 is not KVM_RUN & co.
    ("io", "device I/O", 41, "socket"),         # allowed for AF_UNIX only; this is family 0
    ("io", "device I/O", 59, "execve"),
])
def test_forbidden_call_ends_the_process_and_names_it(guests, thread, kind, nr, name):
    r = _run_probe(guests, thread, nr)
    assert r.returncode == EXIT_STATUS, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout
    line = f"vmm: seccomp: the {kind} thread made a forbidden system call: {name} ({nr}); ending the process"
    assert line in r.stderr.splitlines(), r.stderr


@pytest.mark.parametrize("thread", ["vcpu", "io"])
def test_the_probe_alone_is_harmless(guests, thread):
    """The control: without the filter the same call just fails, and the guest ends as
    usual; the deaths above are the filter's doing."""
    r = _run_probe(guests, thread, 41, seccomp="off")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "survived: shutdown" in r.stdout, (r.stdout, r.stderr)


# --- the virtio paths under both filters (reports go to an unclaimed port: no Python device) --

@pytest.mark.parametrize("fallbacks", [False, True])
def test_virtio_blk_driver_runs_with_both_threads_confined(guests, tmp_path, fallbacks):
    """Register writes, queue notifies (ioeventfd or MMIO exit), disk I/O, interrupts (irqfd
    or KVM_IRQ_LINE from the I/O thread) and the driver's reset, all under the filters."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 16)
    m = vmm.Machine(guests("virtio_blk"), engine="kvm", memory_mib=16, disks=[Disk(str(disk))],
                    options=KvmOptions(seccomp=True, ioeventfd=not fallbacks, irqfd=not fallbacks))
    with m:
        m.start()
        status = m.wait(timeout=WAIT)
        stats = m.device_stats
    assert status is not None and status.kind == "shutdown", status
    [blk] = stats
    assert blk["requests"] == 2 and blk["bytes_read"] == 512 and blk["bytes_written"] == 512, blk


def test_vsock_host_connect_with_both_threads_confined(guests, tmp_path):
    """The vsock device accepts the host's connection and reads its CONNECT line on the
    confined I/O thread, and interrupts the guest."""
    import socket
    path = str(tmp_path / "v.sock")
    m = vmm.Machine(guests("virtio_vsock"), engine="kvm", memory_mib=16,
                    vsock=Vsock(cid=7, socket_path=path), options=KvmOptions(seccomp=True))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with m:
        m.start()
        deadline = time.monotonic() + WAIT
        # The guest's READY goes to an unclaimed port: wait for DRIVER_OK instead (set
        # after its receive buffer is posted), then for the notify to be served.
        while m.inspect().transports[0]["status"] != 0xF or not m.inspect().transports[0]["notify_events"]:
            assert time.monotonic() < deadline, m.inspect().transports
            time.sleep(0.01)
        client.connect(path)
        client.sendall(b"CONNECT 1234\n")
        status = m.wait(timeout=WAIT)
        stats = m.device_stats
    client.close()
    assert status is not None and status.kind == "shutdown", status
    [vsock] = stats
    assert vsock["frames_in"] == 1 and vsock["interrupts"] == 1, vsock


def test_two_vcpus_one_resets_and_kicks_the_other_under_the_filter(guests):
    """The BSP starts the AP (INIT/SIPI) and resets the VM: vm_end() on a confined vCPU
    thread signals the other one (pthread_kill: getpid, rt_sigprocmask, tgkill)."""
    m = vmm.Machine(guests("smp"), engine="kvm", cpus=2, memory_mib=16, options=KvmOptions(seccomp=True))
    with m:
        m.start()
        status = m.wait(timeout=WAIT)
    assert status is not None and status.kind == "shutdown", status
