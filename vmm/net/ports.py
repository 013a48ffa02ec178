"""Published ports: `[bind:]host:guest[/tcp|/udp]`, as `msb run -p` takes them.

    parse_port("4324:4321")            -> PublishedPort("127.0.0.1", 4324, 4321, "tcp")
    parse_port("0.0.0.0:5353:53/udp")  -> PublishedPort("0.0.0.0", 5353, 53, "udp")

The bind address defaults to 127.0.0.1: a sandbox's server is the host user's unless they
say otherwise. Host port 0 means "pick a free one": reserve_ports() binds each host port
once on the host before the VM boots, so a port in use is a ConfigError naming it (and not
a passt that silently forwards nothing), and a 0 becomes the port the kernel picked.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable, List

from ..errors import ConfigError

DEFAULT_BIND = "127.0.0.1"
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PublishedPort:
    bind: str
    host: int
    guest: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        """The form `msb ps` prints: 127.0.0.1:4324->4321/tcp."""
        return f"{self.bind}:{self.host}->{self.guest}/{self.protocol}"


def _port(text: str, what: str, spec: str, *, zero_ok: bool) -> int:
    if not text.isdigit():
        raise ConfigError(f"published port {spec!r}: {what} port {text!r} is not a number")
    n = int(text)
    if n > 65535 or (n == 0 and not zero_ok):
        raise ConfigError(f"published port {spec!r}: {what} port {n} is out of range "
                          f"({0 if zero_ok else 1}-65535)")
    return n


def parse_port(spec: str) -> PublishedPort:
    """One `[bind:]host:guest[/tcp|/udp]` spec, checked; ConfigError names what is wrong."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"published port {spec!r}: expected '[bind:]host:guest[/tcp|/udp]'")
    body, sep, proto = spec.partition("/")
    proto = proto.lower() if sep else "tcp"
    if proto not in PROTOCOLS:
        raise ConfigError(f"published port {spec!r}: protocol {proto!r} is not tcp or udp")
    parts = body.split(":")
    if len(parts) == 2:
        bind, host, guest = DEFAULT_BIND, parts[0], parts[1]
    elif len(parts) == 3:
        bind, host, guest = parts
        try:
            bind = str(ipaddress.IPv4Address(bind))
        except ValueError:
            raise ConfigError(f"published port {spec!r}: bind address {bind!r} is not an "
                              "IPv4 address") from None
    else:
        raise ConfigError(f"published port {spec!r}: expected '[bind:]host:guest[/tcp|/udp]'")
    return PublishedPort(bind, _port(host, "host", spec, zero_ok=True),
                         _port(guest, "guest", spec, zero_ok=False), proto)


def parse_ports(specs: Iterable[str]) -> List[PublishedPort]:
    """Every spec parsed; the same host port (address, port, protocol) twice is an error."""
    ports = [parse_port(s) for s in specs]
    seen = set()
    for p in ports:
        key = (p.bind, p.host, p.protocol)
        if p.host and key in seen:
            raise ConfigError(f"published port {p.bind}:{p.host}/{p.protocol} is given twice")
        seen.add(key)
    return ports


def _probe(p: PublishedPort) -> int:
    """Bind p's host port as passt will (SO_REUSEADDR, so a TIME_WAIT leftover is not "in
    use" but a listener is) and return the bound port: the kernel's pick for port 0."""
    kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((p.bind, p.host))
            if kind == socket.SOCK_STREAM:
                s.listen(1)
        except OSError as e:
            raise ConfigError(f"published port {p.bind}:{p.host}/{p.protocol}: cannot bind the "
                              f"host port: {e.strerror}") from None
        return s.getsockname()[1]


def reserve_ports(ports: Iterable[PublishedPort]) -> List[PublishedPort]:
    """The ports with each host port checked free on the host, and 0 replaced by a free
    port. (The check and passt's own bind are moments apart; a port taken in between
    shows as a forward that does not answer, which the check makes rare, not impossible.)"""
    out = []
    for p in ports:
        host = _probe(p)
        out.append(PublishedPort(p.bind, host, p.guest, p.protocol))
    return out


def passt_args(ports: Iterable[PublishedPort]) -> List[str]:
    """passt's forwarding options: `-t ADDR/HOST:GUEST` (`-u` for UDP), one per port."""
    args: List[str] = []
    for p in ports:
        args += ["-t" if p.protocol == "tcp" else "-u", f"{p.bind}/{p.host}:{p.guest}"]
    return args
