"""The container's network namespace, given to the VM: a tap device inside the namespace,
joined to the namespace's interface (the veth CNI made) by two traffic-control redirects,
as Kata Containers does. Frames the namespace's peers send to the interface go to the
tap, hence to the guest, before the namespace's own stack sees them; the guest's frames
leave through the interface. The guest takes the interface's address, MAC, MTU and
default gateway, so CNI-assigned addresses and Services reach it unchanged.

    nic = attach(netns_path, dns=None)   # -> NamespaceNic (.network: a TapNetwork)
    ... Sandbox.create(..., network=nic.network) ...
    nic.close()                           # the redirects and the tap go

The namespace and its interface belong to whoever made them (CNI): we add a tap and two
filters and take them away again, nothing else. Commands run with `nsenter --net=PATH`
(iproute2's ip and tc); the tap is opened from a thread that joined the namespace
(setns(2) changes only the calling thread's namespace), so it is created there.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..errors import ConfigError
from ..net.network import TapNetwork

CLONE_NEWNET = 0x40000000
TAP_NAME = "vmmtap0"
CMD_TIMEOUT_S = 10


@dataclass
class NamespaceNic:
    netns: str
    iface: str
    tap: str
    fd: int
    network: TapNetwork

    def close(self) -> None:
        """Removes our redirects (the tap goes with its fd); the namespace may be gone."""
        _ns(self.netns, ["tc", "qdisc", "del", "dev", self.iface, "ingress"], check=False)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _ns(netns: str, argv: List[str], check: bool = True) -> str:
    r = subprocess.run(["nsenter", f"--net={netns}", "--"] + argv, capture_output=True, text=True,
                       timeout=CMD_TIMEOUT_S)
    if check and r.returncode != 0:
        raise ConfigError(f"network namespace {netns}: `{' '.join(argv)}` failed: "
                          f"{(r.stderr or r.stdout).strip()[:500]}")
    return r.stdout


def namespace_interface(netns: str) -> Optional[dict]:
    """The interface the VM takes over: the one with the default IPv4 route (else the only
    one with an IPv4 address), with its address, MTU, MAC and gateway; None when the
    namespace has nothing but loopback (podman's --network none)."""
    try:
        links = json.loads(_ns(netns, ["ip", "-j", "addr", "show"]) or "[]")
        routes = json.loads(_ns(netns, ["ip", "-j", "-4", "route", "show", "default"]) or "[]")
    except ValueError as e:
        raise ConfigError(f"network namespace {netns}: unreadable ip output: {e}") from None
    candidates = []
    for link in links:
        if link.get("ifname") in ("lo", TAP_NAME) or "LOOPBACK" in link.get("flags", []):
            continue
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and a.get("scope", "global") == "global":
                candidates.append((link, f"{a['local']}/{a['prefixlen']}"))
                break
    default = next((r for r in routes if r.get("gateway")), None)
    if not candidates:
        return None
    if default is not None:
        chosen = [c for c in candidates if c[0].get("ifname") == default.get("dev")]
    else:
        chosen = candidates
    if len(chosen) != 1:
        names = ", ".join(c[0].get("ifname", "?") for c in candidates) or "none"
        raise ConfigError(f"network namespace {netns}: cannot tell which interface is the "
                          f"container's (interfaces with an IPv4 address: {names}; "
                          f"default route: {default.get('dev') if default else 'none'})")
    if default is None:
        raise ConfigError(f"network namespace {netns}: no default IPv4 route (the guest needs "
                          "a gateway)")
    link, address = chosen[0]
    return {"ifname": link["ifname"], "address": address, "mtu": int(link.get("mtu", 1500)),
            "mac": link.get("address"), "gateway": default["gateway"]}


def _open_tap_in(netns: str, name: str) -> int:
    """Opens (creating) tap `name` inside netns, from a thread that joined it."""
    from .. import _binding
    out: dict = {}

    def run():
        try:
            enter(netns)
            out["fd"] = _binding.check(_binding.lib.vmm_net_open_tap, name.encode())
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e
    t = threading.Thread(target=run, name="vmm-runtime-netns")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["fd"]


def is_own_namespace(netns: str) -> bool:
    """Whether netns is the caller's own network namespace: the host's, as the runtime
    runs in containerd's. A container joining it has the host's network, as with runc;
    CRI names it for a host-network pod's containers (/proc/<pause pid>/ns/net)."""
    try:
        a, b = os.stat(netns), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def enter(netns: str) -> None:
    """Moves the calling thread into netns. The monitor calls it from its main thread, the
    thread /proc/<pid>/ns/net shows, once the VM has its NIC: the container's pid is then
    in the container's namespace, as runc's container process is, and containerd's CRI
    plugin gives a pod's other containers /proc/<pause container's pid>/ns/net as theirs."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise ConfigError(f"cannot join the network namespace {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def attach(netns: str, dns: Optional[str] = None) -> Optional[NamespaceNic]:
    """The VM's NIC in netns, or None if netns has only loopback (the VM gets none). In a
    Kubernetes pod the sandbox (pause) container's VM, the pod VM, takes it (pod.py)."""
    if not os.path.exists(netns):
        raise ConfigError(f"network namespace {netns} does not exist")
    if is_own_namespace(netns):
        # Taking over the host's interface would cut the host off (the caller treats a
        # container joining the host's namespace as one with the host's network).
        raise ConfigError(f"network namespace {netns} is the runtime's own (the host's): "
                          "the VM does not take over the host's interface")
    info = namespace_interface(netns)
    if info is None:
        return None
    if _ns(netns, ["tc", "qdisc", "show", "dev", info["ifname"], "ingress"]).strip():
        raise ConfigError(f"network namespace {netns}: its interface {info['ifname']} is "
                          "already another VM's NIC (one VM holds a network namespace's "
                          "interface; a Kubernetes pod's containers share its pod VM)")
    fd = _open_tap_in(netns, TAP_NAME)
    nic = NamespaceNic(netns, info["ifname"], TAP_NAME, fd,
                       TapNetwork(fd=fd, address=info["address"], gateway=info["gateway"],
                                  mtu=info["mtu"], dns=dns, mac=info["mac"]))
    try:
        _ns(netns, ["ip", "link", "set", TAP_NAME, "mtu", str(info["mtu"]), "up"])
        for src, dst in ((info["ifname"], TAP_NAME), (TAP_NAME, info["ifname"])):
            _ns(netns, ["tc", "qdisc", "add", "dev", src, "ingress"])
            _ns(netns, ["tc", "filter", "add", "dev", src, "parent", "ffff:", "protocol", "all",
                        "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect",
                        "dev", dst])
    except BaseException:
        nic.close()
        raise
    return nic



def new_namespace() -> Tuple[str, int]:
    """Moves this process into a new network namespace (loopback up) for the create-time
    hooks, as runc's init is in the container's new namespace when they run: a prestart
    hook given our pid (Docker's libnetwork-setkey) finds it at /proc/PID/ns/net and puts
    the container's interface there. Returns a path that names the new namespace whatever
    namespace this process is in later (/proc/PID/fd/N, an fd of ours holding it), and an
    fd of the namespace we came from for leave(): back there, the new namespace is one the
    VM joins like any other (boot_sandbox attaches to it, then enters it again).
    unshare(2) moves only the calling thread, and /proc/PID/ns/net shows the main one:
    call it from the main thread before the process starts any other."""
    if threading.active_count() != 1:
        raise ConfigError("internal error: a new network namespace needs a single-threaded process")
    back = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        os.close(back)
        raise ConfigError(f"cannot make the container's network namespace: {os.strerror(err)}")
    held = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, timeout=CMD_TIMEOUT_S)
    return f"/proc/{os.getpid()}/fd/{held}", back


def leave(back: int) -> None:
    """Back to the namespace new_namespace() came from (its fd, closed here)."""
    try:
        enter(f"/proc/self/fd/{back}")
    finally:
        os.close(back)
