"""QEMU's confinement: its own seccomp sandbox, provoked; its own uid; no KSM (slow: real
TCG boots).

A QEMU monitor command that spawns a process (`migrate "exec:..."` forks a shell) is what a
compromised QEMU would do to escape: with the sandbox QEMU dies of SIGSYS and the machine
ends with an error naming the signal; without it (the control) the same command runs and
the guest goes on to boot and shut down normally.
"""
import os
import socket
import time

import pytest

import vmm
from vmm import QemuOptions
from vmm.devices import Disk
from vmm.engines import qemu_binary
from vmm.engines.qemu_user import UID_BASE
from vmm.guest import kernel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.qemu,
    pytest.mark.skipif(qemu_binary() is None, reason="qemu-system-x86_64 not installed"),
]

TIMEOUT = 60


@pytest.fixture(scope="module")
def guest():
    return kernel.guest_kernel(), kernel.test_initramfs()


def _monitor(path, command):
    """Send one HMP command over the monitor socket QEMU listens on."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            assert time.monotonic() < deadline, "QEMU's monitor socket never appeared"
            time.sleep(0.02)
    with s:
        s.settimeout(TIMEOUT)
        s.recv(4096)  # the banner
        s.sendall(command.encode() + b"\n")
        time.sleep(0.5)  # let QEMU act on it before the socket goes


def _boot_and_spawn(guest, tmp_path, sandbox):
    vmlinux, initrd = guest
    # In /tmp itself: QEMU runs as a uid of its own, which cannot reach pytest's 0700 tmp_path.
    mon = f"/tmp/vmm-test-mon-{os.getpid()}-{tmp_path.name}.sock"
    options = QemuOptions(sandbox=sandbox, extra_args=[
        "-chardev", f"socket,id=mon,path={mon},server=on,wait=off", "-mon", "chardev=mon,mode=readline"])
    with vmm.Machine(vmlinux, initrd=initrd, engine="qemu", options=options) as m:
        m.start()
        try:
            _monitor(mon, 'migrate "exec:true"')
        finally:
            if os.path.exists(mon):
                os.unlink(mon)
        status = m.wait(timeout=TIMEOUT)
        assert status is not None, f"no exit within {TIMEOUT}s; console:\n{m.console!r}"
        return m, status


def test_sandboxed_qemu_dies_when_it_spawns(guest, tmp_path):
    m, status = _boot_and_spawn(guest, tmp_path, sandbox=True)
    assert status.kind == "error", status
    assert "signal SIGSYS" in status.message, status


def test_unsandboxed_qemu_spawns_and_runs_on(guest, tmp_path):
    """The control: the provocation is harmless without the sandbox, so the SIGSYS above
    is the sandbox's doing."""
    m, status = _boot_and_spawn(guest, tmp_path, sandbox=False)
    assert status.kind == "shutdown", (status, m.console[-2000:])
    assert b"READY" in m.console


def _mergeable_mappings(pid):
    with open(f"/proc/{pid}/smaps") as f:
        return [line for line in f if line.startswith("VmFlags:") and " mg" in line]


@pytest.mark.parametrize("mem_merge", [False, True])
def test_no_memory_is_offered_to_ksm_unless_asked(guest, mem_merge):
    """Finding 10: QEMU's default marks RAM MADV_MERGEABLE (VmFlags "mg"); by default no
    mapping of ours is, and the opt-in brings QEMU's default back (the control)."""
    vmlinux, initrd = guest
    with vmm.Machine(vmlinux, initrd=initrd, engine="qemu", cmdline="vmmtest.end=hang",
                     options=QemuOptions(mem_merge=mem_merge)) as m:
        m.start()
        deadline = time.monotonic() + TIMEOUT
        while b"READY" not in m.console and time.monotonic() < deadline:
            time.sleep(0.05)  # all RAM blocks exist once the guest runs
        mergeable = _mergeable_mappings(m.inspect().pid)
        m.stop()
    assert bool(mergeable) == mem_merge, mergeable


def _ids(pid):
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    return int(st["Uid"].split()[0]), int(st["Gid"].split()[0]), st["Groups"].split()


@pytest.mark.skipif(os.geteuid() != 0, reason="QEMU drops to a uid of its own only when started by root")
def test_qemu_runs_as_a_uid_of_its_own_and_still_serves_its_disk(guest, tmp_path):
    """Two machines at once: each QEMU has its own unprivileged uid and gid, no groups,
    and boots with a disk over vhost-user (its socket handed over as a descriptor: QEMU
    cannot reach our 0700 directory by path)."""
    vmlinux, initrd = guest
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    machines = [vmm.Machine(vmlinux, initrd=initrd, engine="qemu", cmdline="vmmtest.end=hang",
                            disks=[Disk(str(disk), read_only=True)]) for _ in range(2)]
    try:
        for m in machines:
            m.start()
        ids = [_ids(m.inspect().pid) for m in machines]
        for m in machines:
            deadline = time.monotonic() + TIMEOUT
            while b"READY" not in m.console and time.monotonic() < deadline:
                time.sleep(0.05)
            assert b"READY" in m.console, m.console[-2000:]
            assert m.device_stats[0]["requests"] > 0, "the guest read its disk through QEMU"
    finally:
        for m in machines:
            m.stop()
    (uid0, gid0, groups0), (uid1, gid1, groups1) = ids
    assert uid0 >= UID_BASE and uid1 >= UID_BASE and uid0 != uid1, ids
    assert (gid0, gid1) == (uid0, uid1) and groups0 == groups1 == [], ids
    # Released when the machine is closed: the next QEMU of this process may reuse it.


@pytest.mark.skipif(os.geteuid() != 0, reason="QEMU drops to a uid of its own only when started by root")
def test_user_none_keeps_qemu_as_our_user(guest):
    vmlinux, initrd = guest
    with vmm.Machine(vmlinux, initrd=initrd, engine="qemu", cmdline="vmmtest.end=hang",
                     options=QemuOptions(user=None)) as m:
        m.start()
        uid = _ids(m.inspect().pid)[0]
        m.stop()
    assert uid == 0
