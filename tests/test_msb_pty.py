"""`msb exec` on a terminal, as a user's shell runs it: the host `msb` process is the
session leader of a pseudo-terminal (pty.fork), so resizing the terminal makes the
kernel send it SIGWINCH, as a terminal emulator's resize does. The guest command must
see a terminal of its own (`tty`), the host terminal's size (`stty size`), and the new
size after a resize.
"""
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks
from test_msb_lifecycle import IMAGE, msb_in
from test_msb_volumes import make_home

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")]

ROOT = Path(__file__).resolve().parents[1]


def _set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _spawn_on_pty(home, *args, rows=30, cols=100):
    """`msb ARGS` with a pseudo-terminal as its controlling terminal and stdio: (pid, master)."""
    env = dict(os.environ, MSB_HOME=str(home), PYTHONPATH=str(ROOT), MSB_ENGINE=ENGINE)
    pid, master = pty.fork()
    if pid == 0:   # the child: nothing but exec (or exit) from here
        try:
            _set_size(0, rows, cols)
            os.execve(sys.executable, [sys.executable, "-m", "vmm.cli", *args], env)
        finally:
            os._exit(127)
    return pid, master


class Screen:
    """What the pseudo-terminal's master has read so far."""

    def __init__(self, fd):
        self.fd, self.data = fd, b""

    def wait_for(self, needle: bytes, timeout=60.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:   # EIO: the child closed its side
                    break
                if not chunk:
                    break
                self.data += chunk
        assert needle in self.data, (needle, self.data)
        return self.data


def _exit_status(pid, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("msb exec did not end")


def test_exec_on_a_terminal_gets_a_pty_that_follows_resizes(kernel_path, tmp_path):
    home = make_home(tmp_path)
    assert msb_in(home, "run", "--name", "term", "-d", "-q", IMAGE).returncode == 0
    try:
        pid, master = _spawn_on_pty(home, "exec", "-t", "term", "--", "sh", "-c",
                                    "tty; stty size; read x; stty size; exit 5")
        try:
            screen = Screen(master)
            out = screen.wait_for(b"30 100")
            assert b"/dev/pts/" in out and b"not a tty" not in out, out
            # The terminal is resized: the kernel signals the session's foreground group
            # (the msb process), which resizes the guest's PTY.
            _set_size(master, 50, 132)
            time.sleep(0.5)
            os.write(master, b"\r")   # raw mode: Enter reaches the guest's PTY as typed
            screen.wait_for(b"50 132")
            assert _exit_status(pid) == 5
        finally:
            os.close(master)
        # Without -t: a terminal on stdin is enough for a PTY.
        pid, master = _spawn_on_pty(home, "exec", "term", "--", "sh", "-c", "tty; stty size",
                                    rows=20, cols=70)
        try:
            out = Screen(master).wait_for(b"20 70")
            assert b"/dev/pts/" in out, out
            assert _exit_status(pid) == 0
        finally:
            os.close(master)
    finally:
        msb_in(home, "rm", "-f", "term")
