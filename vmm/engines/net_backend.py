"""Where a virtio-net device's frames go: the host end of a Net config, as one fd.

passt (userspace NAT, no root) on one end of a socketpair we create; a Unix stream socket
someone else listens on; a tap device; or an fd the caller already holds. Each yields
(fd, kind, helper process or None); the C device takes the fd over.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .. import _binding
from ..errors import ConfigError

NET_STREAM, NET_TAP = 0, 1  # vmm_net_new's backend kinds

# passt's end of the socketpair gets a send buffer larger than the guest's TCP receive
# window. passt sends a guest as much as that window allows, in batches of up to 128
# frames, with non-blocking writes; what does not fit in the socket is not sent. Debian
# 12's passt drops the rest of the batch and recovers only by resending everything from
# the first loss (go-back-N): with the 208 KiB default a 64 MiB download took 5.0 s
# instead of 0.60 s, the guest receiving its data up to 9.6 times over, and reading the
# socket faster or buffering more on our side cannot fix it (measured for issue 10 item
# 5). The pinned passt (scripts/build-passt.sh) rewinds its sequence to the first frame
# it could not send: 0.40 s with 208 KiB vs 0.40 s with 8 MiB. The large buffer stays for
# the Debian fallback and costs nothing: memory is charged only while frames wait for us.
# 8 MiB (16 MiB once the kernel doubles it) holds a whole window of a Linux guest
# (tcp_rmem max 6 MiB). Without CAP_NET_ADMIN the size is capped by net.core.wmem_max.
PASST_SNDBUF = 8 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)

# Tests and benchmarks ask for another size (bytes), or "default" for the kernel's own,
# to see what a host without CAP_NET_ADMIN gets. An environment variable, not a Net field:
# it is a measurement knob, and it also reaches a `python -m vmm` child process.
SNDBUF_ENV = "VMM_PASST_SNDBUF"


def passt_sndbuf():
    """The send buffer for passt's socket: bytes, or None to leave the kernel default."""
    v = os.environ.get(SNDBUF_ENV, "").strip()
    if not v:
        return PASST_SNDBUF
    if v == "default":
        return None
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n <= 0:
        raise ConfigError(f"{SNDBUF_ENV}={v!r} is not a size in bytes or 'default'")
    return n


def passt_socketpair(sndbuf=PASST_SNDBUF):
    """(ours, theirs): a connected Unix stream pair for passt --fd, theirs with a send
    buffer of sndbuf bytes (None: the kernel default). Without CAP_NET_ADMIN the size is
    capped by net.core.wmem_max."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if sndbuf is not None:
        try:
            theirs.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, sndbuf)
        except OSError:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return ours, theirs


# Which passt: $VMM_PASST (a path), else the build scripts/build-passt.sh keeps in the
# cache (the pinned 2025-05 source: it rewinds its sequence numbers for frames its socket
# could not take, and serves forwarded connections to guests that speak first), else
# `passt` on PATH (Debian 12's, which works with the limits docs/platform.md lists).
PASST_ENV = "VMM_PASST"
# The tarball's sha256 that scripts/build-passt.sh pins; its first 16 hex digits name the
# cache entry. Change both together (tests/test_net_ports.py checks they agree).
PASST_SOURCE_SHA256 = "69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49"

# How long passt may take to get ready (options parsed, ports bound, PID file written);
# it takes ~10 ms. One that exits or hangs instead is an error naming it and its stderr.
PASST_START_TIMEOUT = 10.0
_STDERR_SHOWN = 1000  # bytes of passt's stderr an error quotes


def built_passt() -> Path:
    """Where scripts/build-passt.sh installs the pinned passt: under the cache root of
    vmm/guest/cache.py (${VMM_CACHE:-~/.cache/vmm}; a layer above this one, so not
    imported)."""
    root = Path(os.environ.get("VMM_CACHE") or Path.home() / ".cache" / "vmm")
    return root / "passt" / PASST_SOURCE_SHA256[:16] / "passt"


def passt_program() -> str:
    """The passt to run: $VMM_PASST, else the cached build, else `passt` on PATH."""
    chosen = os.environ.get(PASST_ENV, "").strip()
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise ConfigError(f"{PASST_ENV}={chosen!r} is not an executable file")
        return chosen
    built = built_passt()
    if os.access(built, os.X_OK):
        return str(built)
    exe = shutil.which("passt")
    if not exe:
        raise ConfigError("net backend passt needs the passt program: run "
                          "scripts/build-passt.sh, install Debian's package passt, or set "
                          f"{PASST_ENV}")
    return exe


def _stderr_text(f) -> str:
    f.seek(0)
    text = f.read(_STDERR_SHOWN + 1).decode(errors="replace")
    # Debian 12's passt also tells stderr each time syslog is missing: noise here.
    lines = [ln for ln in text.splitlines() if ln.strip() and "to syslog" not in ln]
    text = "\n".join(lines)
    return text[:_STDERR_SHOWN] + ("..." if len(text) > _STDERR_SHOWN else "")


class PasstStart:
    """A passt being started: the fd of our end of its socket at once, and wait() to learn
    whether it came up. A caller can boot its VM between the two (frames the guest sends
    meanwhile wait in the socket), so passt's start-up overlaps the machine's.

    spawn=False leaves the process to spawn(): the socket (and so the fd for the VM's
    device) exists at once, and the caller may start its VM before the fork+exec of
    passt (5-10 ms from Python), which then overlaps the guest's boot too."""

    def __init__(self, options=(), spawn: bool = True):
        self.exe = passt_program()
        self._options = list(options)
        ours, theirs = passt_socketpair(passt_sndbuf())
        # stderr goes to an anonymous file: read only if passt fails to start, and freed
        # with the process (passt --quiet writes only warnings and errors there).
        self._errors = tempfile.TemporaryFile(prefix="passt-stderr-")
        self._dir = tempfile.mkdtemp(prefix="vmm-passt-")
        self._pid_file = os.path.join(self._dir, "pid")
        self.proc = None
        self._theirs = theirs
        try:
            # passt started as root drops to nobody before it writes the file: let it
            # (the directory's name is unguessable and unlistable; the file holds a PID).
            with open(self._pid_file, "w"):
                pass
            if os.geteuid() == 0:
                os.chmod(self._dir, 0o711)
                os.chmod(self._pid_file, 0o666)
        except BaseException:
            ours.close()
            self.discard()
            raise
        self.fd = ours.detach()
        if spawn:
            try:
                self.spawn()
            except BaseException:
                os.close(self.fd)
                raise

    def spawn(self) -> None:
        """Fork and exec passt on its end of the socket (once)."""
        if self._theirs is None:
            return
        theirs, self._theirs = self._theirs, None
        try:
            from .child_process import spawn   # passt ends with this process
            self.proc = spawn([self.exe, "--foreground", "--quiet",
                               "--fd", str(theirs.fileno()), "--pid", self._pid_file,
                               *self._options],
                              pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=self._errors)
        except BaseException:
            self._cleanup()
            raise
        finally:
            theirs.close()

    def discard(self) -> None:
        """Give up without wait(): the files go, and passt's end of the socket if it was
        never spawned (a spawned passt is its owner's to end)."""
        if self._theirs is not None:
            self._theirs.close()
            self._theirs = None
        self._cleanup()

    def wait(self) -> None:
        """Return once passt wrote its PID file (its set-up is done); ConfigError quoting
        its stderr if it exits or stays silent instead (the process is then reaped)."""
        try:
            deadline = time.monotonic() + PASST_START_TIMEOUT
            delay = 0.0005
            while os.path.getsize(self._pid_file) == 0:
                rc = self.proc.poll()
                if rc is not None:
                    why = _stderr_text(self._errors) or "(nothing on stderr)"
                    raise ConfigError(f"passt ({self.exe}) exited with status {rc} at start: {why}")
                if time.monotonic() > deadline:
                    raise ConfigError(f"passt ({self.exe}) did not get ready within "
                                      f"{PASST_START_TIMEOUT:.0f} s: {_stderr_text(self._errors)}")
                time.sleep(delay)
                delay = min(delay * 2, 0.002)  # passt takes ~15 ms: notice it within 2
        except BaseException:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._errors is not None:
            self._errors.close()
            self._errors = None
        shutil.rmtree(self._dir, ignore_errors=True)


def start_passt(options=()):
    """(our fd, passt process): passt on one end of a socketpair; we keep the other.
    options: more passt options (a sandbox's addresses and port forwards,
    vmm/net/network.py). Returns once passt is ready; a passt that exits at start (a bad
    option, a host port taken) is a ConfigError quoting its stderr, before any guest
    boots without a working NIC."""
    start = PasstStart(options)
    try:
        start.wait()
    except BaseException:
        os.close(start.fd)
        raise
    return start.fd, start.proc


def open_backend(net):
    """(fd, kind, helper process or None) of the frame backend of the Net config `net`."""
    if net.fd is not None:
        return os.dup(net.fd), NET_TAP if net.backend == "tap" else NET_STREAM, None
    if net.backend == "tap":
        if not net.tap:
            raise ConfigError("net backend tap needs a tap device name (tap=...)")
        fd = _binding.check(_binding.lib.vmm_net_open_tap, net.tap.encode())
        return fd, NET_TAP, None
    if net.backend == "passt" and not net.socket_path:
        fd, proc = start_passt()
        return fd, NET_STREAM, proc
    if not net.socket_path:
        raise ConfigError(f"net backend {net.backend} needs socket_path or fd")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(net.socket_path))
    except OSError as e:
        s.close()
        raise ConfigError(f"cannot connect to the network socket {net.socket_path}: {e.strerror}") from None
    return s.detach(), NET_STREAM, None
