"""A vhost-user blk server in a child process, for attacks that would kill or hang the
test process if the back end were broken (SIGBUS from a shrunk memfd, the loop thread
blocked writing a call fd).

    python -m support.vhost_user_child SOCKET DISK

prints "ready", then answers commands on stdin, one per line: "error" prints the
server's error (or "-"); "stop" stops the server, prints "stopped SECONDS" and exits.
ChildServer runs it from a test and never waits on it without a deadline.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChildServer:
    def __init__(self, sock: str, disk: str, timeout: float = 20.0):
        self.path = sock
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in [TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")] if p))
        self.p = subprocess.Popen([sys.executable, "-m", "support.vhost_user_child", sock, disk],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        line = self._line(timeout)
        if line != "ready":
            self.close()
            raise RuntimeError(f"vhost-user child did not start: {line!r} {self.stderr()}")

    def _line(self, timeout: float):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        return self.p.stdout.readline().strip() if r else None

    def command(self, cmd: str, timeout: float = 5.0):
        """The child's answer, or None if it did not answer within timeout (or is dead)."""
        if not self.alive():
            return None
        try:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            return None
        return self._line(timeout)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stderr(self) -> str:
        if self.alive():
            return ""
        return self.p.stderr.read()

    def close(self):
        if self.alive():
            self.p.kill()
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            f.close()


def main(sock: str, disk: str) -> None:
    from vmm.devices import Disk
    from vmm.engines.vhost_user_server import VhostUserServer
    from vmm.engines.virtio_device import open_device
    dev = open_device(Disk(disk))
    srv = VhostUserServer(dev, sock)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "error":
            print(srv.error or "-", flush=True)
        elif cmd == "stop":
            t = time.monotonic()
            srv.stop()
            print(f"stopped {time.monotonic() - t:.3f}", flush=True)
            break
    dev.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
