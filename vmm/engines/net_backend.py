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

from .. import _binding
from ..errors import ConfigError

NET_STREAM, NET_TAP = 0, 1  # vmm_net_new's backend kinds

# passt's end of the socketpair needs a send buffer larger than the guest's TCP receive
# window. passt sends a guest as much as that window allows, in batches of up to 128
# frames, with non-blocking writes in a tight loop; whatever does not fit in the socket is
# dropped (partial sendmsg), and passt (Debian 12's) only recovers by resending everything
# from the first loss (go-back-N) after duplicate ACKs or its timer. With the 208 KiB
# default a 64 MiB download ran at 3-20 s instead of 0.3 s, the guest receiving its data
# 8 times over. Reading the socket faster cannot fix it (passt outruns any reader), and
# buffering more on our side makes it worse (every go-back-N round then reaches the guest
# whole): measured for issue 10 item 5. 8 MiB (16 MiB once the kernel doubles it) holds a
# whole window of a Linux guest (tcp_rmem max 6 MiB). Memory is charged only while frames
# wait for us. Without CAP_NET_ADMIN the size is capped by net.core.wmem_max.
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


def start_passt(options=()):
    """(our fd, passt process): passt on one end of a socketpair; we keep the other.
    options: more passt options (a sandbox's addresses and port forwards,
    vmm/net/network.py)."""
    exe = shutil.which("passt")
    if not exe:
        raise ConfigError("net backend passt needs the passt program (Debian package passt)")
    ours, theirs = passt_socketpair(passt_sndbuf())
    try:
        from .child_process import spawn   # passt ends with this process (child_process.py)
        proc = spawn([exe, "--foreground", "--quiet", "--fd", str(theirs.fileno()), *options],
                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        theirs.close()
    return ours.detach(), proc


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
