"""vmm.net.Network: what network a sandbox gets, and what it got (NetworkState).

    Sandbox.create(image, network=Network(ports=["4324:4321"]))   # NAT through passt
    Sandbox.create(image, network=None)                           # no NIC: only lo

The guest is configured without DHCP: the host picks every value and passes it on the
kernel command line (`vmm.net=`, parsed by guest/agent/net.c before READY). The values are
fixed and sandbox-private rather than copied from the host (passt's default):

- the guest's config is then the same on every host and every boot, so tests, docs and
  a user's scripts can rely on it, and nothing about the host's own addresses leaks in;
- passt is a socket-level NAT, so the guest's address never appears on the host's wire;
  it only has to not clash with what the guest itself wants to reach. 10.0.2.0/24 is the
  range QEMU's user networking made familiar for exactly this role;
- the gateway (10.0.2.2) is passt's own: traffic to it reaches the host's loopback
  (passt's gateway mapping), which is what scope "host" and host.microsandbox.internal
  name. DNS goes to 10.0.2.3, which passt forwards to the host's resolver
  (--dns-forward), unless `dns=` names a server the guest asks directly;
- MTU 1500: our virtio-net device offers neither mergeable nor big receive buffers, so a
  guest's receive buffers hold one 1500-byte frame.

IPv6 where passt provides it, which is where the host has an IPv6 default route (passt
then offers IPv6; without one it runs --ipv4-only): the guest gets fd76:6d6d:0:2::15/64
and gateway fd76:6d6d:0:2::2, set statically by the agent like IPv4 (no SLAAC and no
duplicate-address wait before READY). fd76:6d6d::/48 is a ULA prefix of our own ("vmm"
in its global ID) laid out like 10.0.2.0/24, so it clashes with nothing a host routes.
passt maps the IPv6 gateway to the host's ::1 as it maps 10.0.2.2 to 127.0.0.1, and the
egress policy treats both gateways alike. DNS stays on IPv4 (10.0.2.3 answers AAAA
queries too).

`scope` and `rules` are checked when the Network is made (vmm/net/policy.py) and enforced
by our virtio-net device on every frame the guest sends (csrc/virtio/net_policy.c); scope
"none" means no NIC, like network=None.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from ..errors import ConfigError
from .policy import Policy
from .ports import PublishedPort, parse_ports, passt_args

GUEST_ADDRESS = "10.0.2.15"
GUEST_PREFIX = 24
GATEWAY = "10.0.2.2"
DNS_FORWARD = "10.0.2.3"
MTU = 1500
HOST_ALIAS = "host.microsandbox.internal"
GUEST_ADDRESS6 = "fd76:6d6d:0:2::15"
GUEST_PREFIX6 = 64
GATEWAY6 = "fd76:6d6d:0:2::2"

_RTF_REJECT = 0x0200


def host_has_ipv6(routes: str = "/proc/net/ipv6_route",
                  addresses: str = "/proc/net/if_inet6") -> bool:
    """Whether the host has an IPv6 default route on a real interface that also carries a
    global address: what passt needs to offer the guest IPv6 (its `-a`/`-g` template is
    the interface with the default route; with no global address there it refuses to
    start). The kernel's own unreachable default on lo does not count."""
    try:
        with open(routes) as f:
            route_lines = f.read().splitlines()
        with open(addresses) as f:
            address_lines = f.read().splitlines()
    except OSError:
        return False
    # if_inet6: address, ifindex, prefix length, scope (00 = global), flags, device
    global_devs = {fields[5] for fields in map(str.split, address_lines)
                   if len(fields) >= 6 and fields[3] == "00"}
    for line in route_lines:
        fields = line.split()
        if len(fields) < 10:
            continue
        dest, plen, flags, dev = fields[0], fields[1], int(fields[8], 16), fields[9]
        if (int(dest, 16) == 0 and int(plen, 16) == 0 and dev != "lo"
                and not flags & _RTF_REJECT and dev in global_devs):
            return True
    return False


@dataclass(frozen=True)
class Network:
    """A sandbox's network: NAT through passt, scope, ordered rules, published ports
    (`[bind:]host:guest[/tcp|/udp]`) and an optional DNS server for the guest."""
    scope: str = "public"
    ports: Tuple[str, ...] = ()
    rules: Tuple[str, ...] = ()
    dns: Optional[str] = None

    def __post_init__(self):
        for name in ("ports", "rules"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"Network {name} must be a list of strings, not one string")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.scope, str):
            raise ConfigError(f"Network scope must be a string, not {self.scope!r}")
        parse_ports(self.ports)   # a bad spec fails here, when the config is made
        if self.dns is not None:
            try:
                object.__setattr__(self, "dns", str(ipaddress.IPv4Address(self.dns)))
            except ValueError:
                raise ConfigError(f"Network dns {self.dns!r} is not an IPv4 address") from None
        self.policy()             # so does a bad scope or rule

    def published(self) -> List[PublishedPort]:
        return parse_ports(self.ports)

    def policy(self) -> Policy:
        """The egress policy: this scope and rules, both gateways as the host's address
        (whether or not the guest gets IPv6), DNS allowed to the guest's resolver."""
        return Policy.parse(self.scope, self.rules, gateways=[GATEWAY, GATEWAY6],
                            dns=[self.dns or DNS_FORWARD])

    @property
    def has_nic(self) -> bool:
        return self.scope != "none"


@dataclass(frozen=True)
class NetworkState:
    """What a running sandbox's network is: `sb.network`."""
    address: str                # "10.0.2.15/24"
    gateway: str
    dns: str
    mtu: int
    ports: Tuple[PublishedPort, ...] = field(default_factory=tuple)
    scope: str = "public"
    rules: Tuple[str, ...] = ()
    address6: Optional[str] = None   # "fd76:6d6d:0:2::15/64", or None: no IPv6
    gateway6: Optional[str] = None
    # Where stats() reads the live counters (the sandbox sets it when its VM starts).
    counters: Optional[Callable[[], dict]] = field(default=None, compare=False, repr=False)

    def stats(self) -> dict:
        """The egress policy's counters: passed, denied, malformed, resets, and each rule
        with its hits ({"rules": [{"rule", "source", "hits"}, ...]}); {} before boot."""
        return self.counters() if self.counters is not None else {}

    @property
    def gateways(self) -> List[str]:
        """Every address through which the guest reaches the host (for the policy)."""
        return [self.gateway] + ([self.gateway6] if self.gateway6 else [])

    @property
    def published(self) -> List[str]:
        """The published ports as `127.0.0.1:4324->4321/tcp`."""
        return [str(p) for p in self.ports]


@dataclass(frozen=True)
class TapNetwork:
    """A NIC on a tap device someone else set up, with the guest's addresses given rather
    than ours: what the OCI runtime uses to put a container's VM on the network its
    namespace was given (a CNI address, the namespace's gateway and MAC). No NAT and no
    egress policy of ours: the namespace's own network is the boundary, as for runc. The
    guest is configured statically on its kernel command line, like Network's guests.

    fd: an open tap device (the Sandbox's NIC takes a duplicate; the caller keeps fd).
    address: "10.88.0.5/16"; gateway: the default route's next hop; mac: the namespace
    interface's MAC, so that its peers' neighbour entries stay right."""
    fd: int
    address: str
    gateway: str
    mtu: int = MTU
    dns: Optional[str] = None
    mac: Optional[str] = None

    def __post_init__(self):
        try:
            iface = ipaddress.IPv4Interface(self.address)
            gw = ipaddress.IPv4Address(self.gateway)
        except ValueError as e:
            raise ConfigError(f"TapNetwork: {e}") from None
        if not 68 <= int(self.mtu) <= 65535:
            raise ConfigError(f"TapNetwork mtu {self.mtu} is not between 68 and 65535")
        if gw not in iface.network:
            raise ConfigError(f"TapNetwork gateway {gw} is not in {iface.network}")
        if self.dns is not None:
            ipaddress.IPv4Address(self.dns)

    @property
    def has_nic(self) -> bool:
        return True

    def state(self) -> NetworkState:
        return NetworkState(self.address, self.gateway, self.dns or self.gateway, int(self.mtu),
                            scope="public")


def guest_state(network: Network, ports: List[PublishedPort],
                ipv6: Optional[bool] = None) -> NetworkState:
    """The guest configuration for `network`, with its host ports already reserved.
    ipv6: whether the guest gets IPv6 (default: where the host has it, host_has_ipv6)."""
    if ipv6 is None:
        ipv6 = host_has_ipv6()
    return NetworkState(f"{GUEST_ADDRESS}/{GUEST_PREFIX}", GATEWAY,
                        network.dns or DNS_FORWARD, MTU, tuple(ports), network.scope,
                        network.rules,
                        f"{GUEST_ADDRESS6}/{GUEST_PREFIX6}" if ipv6 else None,
                        GATEWAY6 if ipv6 else None)


def kernel_arg(state: NetworkState) -> str:
    """`vmm.net=ADDR/PREFIX,GATEWAY,MTU,DNS,HOSTALIAS[,ADDR6/PREFIX6,GATEWAY6]` for the
    agent (guest/agent/net.c)."""
    alias = 1 if state.scope in ("host", "all") else 0
    arg = f"vmm.net={state.address},{state.gateway},{state.mtu},{state.dns},{alias}"
    if state.address6:
        arg += f",{state.address6},{state.gateway6}"
    return arg


def passt_options(state: NetworkState) -> List[str]:
    """passt's options for this guest: the fixed addresses above, DNS forwarding, the
    published ports. passt maps each gateway it is given (-g) to the host's loopback
    (the default of its --map-host-loopback, in Debian 12's passt and the pinned one)."""
    opts = ["--address", GUEST_ADDRESS, "--netmask", str(GUEST_PREFIX),
            "--gateway", GATEWAY, "--mtu", str(MTU), "--dns-forward", DNS_FORWARD]
    if state.address6:
        opts += ["--address", state.address6.split("/")[0], "--gateway", state.gateway6]
    else:
        opts.insert(0, "--ipv4-only")
    return opts + passt_args(state.ports)


class Nat:
    """The host end of a sandbox's NIC: passt, started with this guest's options on one
    end of a socketpair. `fd` goes to the virtio-net device (Net(fd=...), which takes a
    duplicate); wait_ready() says whether passt came up (call it after the machine started:
    the two start-ups overlap); close() ends passt and is safe to repeat.

    spawn=False: passt itself starts only at spawn() (or wait_ready()), so a caller can
    start its VM first and take passt's fork+exec off the boot's path."""

    def __init__(self, state: NetworkState, spawn: bool = True):
        from ..engines.net_backend import PasstStart  # subprocess: only sandboxes with a NIC
        self._start = PasstStart(passt_options(state), spawn=spawn)
        self.fd, self._proc = self._start.fd, self._start.proc

    def spawn(self) -> None:
        if self._start is not None:
            self._start.spawn()
            self._proc = self._start.proc

    def wait_ready(self) -> None:
        """Return once passt is serving; ConfigError quoting passt's stderr if it failed
        to start (a bad option, a host port taken since we reserved it)."""
        if self._start is not None:
            self.spawn()
            start, self._start = self._start, None
            start.wait()

    def release_fd(self) -> None:
        """Our copy of the socket, once the device holds its own."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        self.release_fd()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._start is not None:  # wait_ready() never ran (or passt never spawned)
            self._start.discard()
            self._start = None
