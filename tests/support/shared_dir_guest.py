"""A sandbox guest (agent initramfs + busybox image) booted as a bare Machine with shared
dirs, for the shared-directory tests (tests/test_shared_dir_vm.py). No pytest here: the
tests also run it as another uid, under a Python that has only the standard library."""
import os

from support import proctable

import vmm
from vmm.devices import Disk, Vsock

BOOT_TIMEOUT = 120


class Guest:
    """A booted sandbox guest (Machine + agent) with shared dirs; sh() runs a command."""

    def __init__(self, kernel, initrd, image, shared_dirs, run_dir, options=None):
        from vmm.agent import AgentClient
        from vmm.sandbox.agent_cmdline import agent_cmdline
        self.sock = os.path.join(run_dir, "agent.sock")
        self.machine = vmm.Machine(kernel, initrd=initrd, engine="qemu", memory_mib=256,
                                   cmdline=agent_cmdline(writable=False, hostname="fs"),
                                   disks=[Disk(str(image), read_only=True, serial="image")],
                                   vsock=Vsock(3, self.sock), shared_dirs=shared_dirs,
                                   options=options)
        self.machine.start()
        try:
            self.client = AgentClient.connect_when_ready(
                self.sock, timeout=BOOT_TIMEOUT, alive=lambda: self.machine.wait(0) is None)
        except BaseException:
            self.machine.stop()
            raise

    def sh(self, cmd: str, timeout: float = 60):
        return self.client.exec(["/bin/sh", "-c", cmd], timeout=timeout)

    def ok(self, cmd: str, timeout: float = 60) -> str:
        r = self.sh(cmd, timeout)
        assert r.exit_code == 0, (cmd, r.exit_code, r.stdout, r.stderr)
        return r.stdout.decode()

    def fs_info(self):
        return [t for t in self.machine.inspect().transports if t["kind"] == "fs"]

    def stop(self):
        self.client.close()
        return self.machine.stop()


def boot(kernel, image, shared_dirs, run_dir, initrd=None, options=None) -> Guest:
    from vmm.guest.agent import agent_initramfs
    return Guest(kernel, initrd or agent_initramfs(), image, shared_dirs, run_dir, options)


def processes_alive(pids):
    return [pid for pid in pids if proctable.alive(pid)]


def wait_gone(pids, timeout=15.0):
    return proctable.wait_gone(pids, timeout)


def children(pid):
    return proctable.children(pid)


def virtiofsd_pids(info):
    """The main virtiofsd of each share and its sandboxed worker."""
    pids = []
    for t in info:
        pids.append(t["pid"])
        pids += children(t["pid"])
    return pids
