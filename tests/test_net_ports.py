"""Published-port specs and the host-side checks made before a sandbox boots, and which
passt runs and how one that fails to start is reported (no VM)."""
import ipaddress
import os
import re
import socket
import time
from pathlib import Path

import pytest

import vmm
from vmm.engines import net_backend
from vmm.errors import ConfigError
from vmm.net.network import Network, guest_state, host_has_ipv6, kernel_arg, passt_options
from vmm.net.ports import PublishedPort, parse_port, parse_ports, passt_args, reserve_ports


@pytest.mark.parametrize("spec, want", [
    ("4324:4321", PublishedPort("127.0.0.1", 4324, 4321, "tcp")),
    ("4324:4321/tcp", PublishedPort("127.0.0.1", 4324, 4321, "tcp")),
    ("127.0.0.1:5353:53/udp", PublishedPort("127.0.0.1", 5353, 53, "udp")),
    ("0.0.0.0:8080:80", PublishedPort("0.0.0.0", 8080, 80, "tcp")),
    ("0:80", PublishedPort("127.0.0.1", 0, 80, "tcp")),
    ("65535:1/UDP", PublishedPort("127.0.0.1", 65535, 1, "udp")),
])
def test_parse_port(spec, want):
    assert parse_port(spec) == want


@pytest.mark.parametrize("spec, words", [
    ("", "expected"),
    ("80", "expected"),
    ("1:2:3:4", "expected"),
    ("80:0", "guest port 0 is out of range"),
    ("70000:80", "host port 70000 is out of range"),
    ("80:70000", "guest port 70000"),
    ("x:80", "host port 'x' is not a number"),
    ("80:-1", "guest port '-1' is not a number"),
    ("80:80/sctp", "protocol 'sctp'"),
    ("localhost:80:80", "bind address 'localhost'"),
    ("300.1.1.1:80:80", "bind address"),
])
def test_bad_specs_name_the_spec(spec, words):
    with pytest.raises(ConfigError) as e:
        parse_port(spec)
    assert repr(spec) in str(e.value) and words in str(e.value)


def test_same_host_port_twice_is_an_error_but_tcp_and_udp_may_share():
    with pytest.raises(ConfigError, match="given twice"):
        parse_ports(["8080:80", "127.0.0.1:8080:81"])
    assert len(parse_ports(["8080:80", "8080:80/udp", "0:1", "0:2"])) == 4


def test_str_is_the_ps_form():
    assert str(parse_port("4324:4321")) == "127.0.0.1:4324->4321/tcp"
    assert str(parse_port("0.0.0.0:53:53/udp")) == "0.0.0.0:53->53/udp"


def test_port_zero_picks_a_free_port():
    (p,) = reserve_ports(parse_ports(["0:80"]))
    assert p.host != 0 and (p.bind, p.guest, p.protocol) == ("127.0.0.1", 80, "tcp")
    with socket.socket() as s:   # and it is free
        s.bind(("127.0.0.1", p.host))


@pytest.mark.parametrize("kind, proto", [(socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")])
def test_port_in_use_is_an_error_naming_it(kind, proto):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}/{proto}"):
            reserve_ports(parse_ports([f"{port}:80/{proto}"]))


def test_sandbox_create_refuses_a_port_in_use_before_booting(tmp_path):
    image = tmp_path / "image.erofs"
    image.write_bytes(b"\0" * 4096)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        # kernel/initrd are files that are no kernel: the port check comes first.
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}/tcp"):
            vmm.Sandbox.create(image, kernel=image, initrd=image,
                               network=Network(ports=[f"{port}:80"]))


def test_passt_args():
    ports = parse_ports(["127.0.0.1:4324:4321", "0.0.0.0:5353:53/udp"])
    assert passt_args(ports) == ["-t", "127.0.0.1/4324:4321", "-u", "0.0.0.0/5353:53"]


def test_network_config():
    n = Network(ports=["4324:4321"], rules=["deny@203.0.113.0/24"], dns="9.9.9.9")
    assert n.ports == ("4324:4321",) and n.rules == ("deny@203.0.113.0/24",)
    assert hash(n) == hash(Network(ports=("4324:4321",), rules=("deny@203.0.113.0/24",),
                                   dns="9.9.9.9"))   # frozen, comparable, hashable
    with pytest.raises(ConfigError, match="'nope'"):
        Network(ports=["nope"])
    with pytest.raises(ConfigError, match="list of strings"):
        Network(ports="80:80")
    with pytest.raises(ConfigError, match="dns"):
        Network(dns="resolver.example")


def test_guest_config_on_the_command_line_and_for_passt():
    st = guest_state(Network(scope="host"), [], ipv6=False)
    assert kernel_arg(st) == "vmm.net=10.0.2.15/24,10.0.2.2,1500,10.0.2.3,1"
    assert kernel_arg(guest_state(Network(dns="9.9.9.9"), [], ipv6=False)) == \
        "vmm.net=10.0.2.15/24,10.0.2.2,1500,9.9.9.9,0"
    opts = passt_options(guest_state(Network(), parse_ports(["1234:80"]), ipv6=False))
    assert opts[0] == "--ipv4-only"
    assert opts[opts.index("--address") + 1] == "10.0.2.15"
    assert opts[opts.index("--gateway") + 1] == "10.0.2.2"
    assert opts[-2:] == ["-t", "127.0.0.1/1234:80"]
    assert st.gateways == ["10.0.2.2"] and st.address6 is None


def test_guest_config_with_ipv6():
    """Where passt offers IPv6: our ULA address and gateway, on the command line for the
    agent, to passt as its second -a/-g, and the gateway to the policy as the host's."""
    st = guest_state(Network(scope="host"), [], ipv6=True)
    assert (st.address6, st.gateway6) == ("fd76:6d6d:0:2::15/64", "fd76:6d6d:0:2::2")
    assert kernel_arg(st) == ("vmm.net=10.0.2.15/24,10.0.2.2,1500,10.0.2.3,1,"
                              "fd76:6d6d:0:2::15/64,fd76:6d6d:0:2::2")
    opts = passt_options(st)
    assert "--ipv4-only" not in opts
    assert [opts[i + 1] for i, o in enumerate(opts) if o == "--address"] == \
        ["10.0.2.15", "fd76:6d6d:0:2::15"]
    assert [opts[i + 1] for i, o in enumerate(opts) if o == "--gateway"] == \
        ["10.0.2.2", "fd76:6d6d:0:2::2"]
    assert st.gateways == ["10.0.2.2", "fd76:6d6d:0:2::2"]
    for scope, verdict in (("host", "allow"), ("private", "deny"), ("public", "deny")):
        table = Network(scope=scope).policy().table()
        first = next(r for r in table if ipaddress.ip_address(st.gateway6) in r.network)
        assert first.action == verdict, (scope, first)


def test_host_ipv6_is_its_default_route(tmp_path):
    """passt offers IPv6 where the host has a default route on a real interface carrying a
    global address; the kernel's unreachable default on lo (flag RTF_REJECT) is not one,
    and neither is a default route on an interface with only a link-local address."""
    def proc_file(name, *lines):
        f = tmp_path / name
        f.write_text("".join(line + "\n" for line in lines))
        return str(f)
    z = "0" * 32
    lo_reject = f"{z} 00 {z} 00 {z} ffffffff 00000001 00000000 00200200       lo"
    eth_default = f"{z} 00 {z} 00 fd00{'0' * 27}1 00000400 00000002 00000000 00000003     eth0"
    eth_prefix = f"fd00{'0' * 28} 40 {z} 00 {z} 00000100 00000001 00000000 00000001     eth0"
    global_addr = f"fd00{'0' * 27}2 04 40 00 82     eth0"
    link_local = f"fe80{'0' * 27}1 04 40 20 80     eth0"
    loopback = f"{'0' * 31}1 01 80 10 80       lo"
    both = proc_file("if_inet6", link_local, loopback, global_addr)
    assert host_has_ipv6(proc_file("r1", eth_prefix, eth_default, lo_reject), both)
    assert not host_has_ipv6(proc_file("r2", eth_prefix, lo_reject), both)
    assert not host_has_ipv6(proc_file("r3"), both)
    assert not host_has_ipv6(proc_file("r4", eth_prefix, eth_default),
                             proc_file("a2", link_local, loopback))
    assert not host_has_ipv6(str(tmp_path / "missing"), both)   # a kernel without IPv6


def test_sandbox_rejects_a_network_that_is_not_one(tmp_path):
    image = tmp_path / "image.erofs"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="network must be"):
        vmm.Sandbox.create(image, network="public")


# --- which passt, and one that dies at start ---------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_build_script_and_net_backend_pin_the_same_passt():
    script = (REPO / "scripts" / "build-passt.sh").read_text()
    (pinned,) = re.findall(r"^PASST_SHA256=([0-9a-f]{64})$", script, re.M)
    assert pinned == net_backend.PASST_SOURCE_SHA256
    assert net_backend.built_passt().parent.name == pinned[:16]


def fake_passt(tmp_path, body: str) -> str:
    exe = tmp_path / "passt"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return str(exe)


def test_passt_is_found_in_order(tmp_path, monkeypatch):
    """$VMM_PASST, else the cached build (scripts/build-passt.sh), else passt on PATH."""
    monkeypatch.setenv("VMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(net_backend.PASST_ENV, raising=False)
    with pytest.raises(ConfigError, match="build-passt.sh"):
        net_backend.passt_program()
    (tmp_path / "bin").mkdir()
    on_path = fake_passt(tmp_path / "bin", "exit 0\n")
    assert net_backend.passt_program() == on_path
    built = net_backend.built_passt()
    built.parent.mkdir(parents=True)
    built.write_text("#!/bin/sh\n")
    built.chmod(0o755)
    assert net_backend.passt_program() == str(built)
    chosen = fake_passt(tmp_path, "exit 0\n")
    monkeypatch.setenv(net_backend.PASST_ENV, chosen)
    assert net_backend.passt_program() == chosen
    monkeypatch.setenv(net_backend.PASST_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="VMM_PASST=.*missing.*not an executable"):
        net_backend.passt_program()


def test_a_passt_that_exits_at_start_is_an_error_quoting_it(tmp_path, monkeypatch):
    monkeypatch.setenv(net_backend.PASST_ENV, fake_passt(
        tmp_path, "echo 'Failed to bind port 4324: Address in use' >&2\nexit 1\n"))
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        net_backend.start_passt(["-t", "127.0.0.1/4324:80"])
    msg = str(e.value)
    assert "passt" in msg and "status 1" in msg and "Failed to bind port 4324" in msg, msg
    assert time.monotonic() - t0 < 5   # noticed when it exits, not after a timeout


def test_a_passt_that_never_gets_ready_is_an_error(tmp_path, monkeypatch):
    """One that neither writes its PID file nor exits: ended and reported, not left."""
    monkeypatch.setenv(net_backend.PASST_ENV, fake_passt(tmp_path, "echo stuck >&2\nexec sleep 60\n"))
    monkeypatch.setattr(net_backend, "PASST_START_TIMEOUT", 0.5)
    with pytest.raises(ConfigError, match="did not get ready.*stuck"):
        net_backend.start_passt()


def test_a_ready_passt_writes_its_pid_file(tmp_path, monkeypatch):
    """The ready signal is passt's --pid file: a fake that writes it (as passt does once
    its set-up is done) starts, and keeps running until ended."""
    monkeypatch.setenv(net_backend.PASST_ENV, fake_passt(
        tmp_path, 'while [ $# -gt 0 ]; do [ "$1" = --pid ] && echo $$ > "$2"; shift; done\n'
                  'exec sleep 60\n'))
    fd, proc = net_backend.start_passt()
    try:
        assert proc.poll() is None
    finally:
        os.close(fd)
        proc.kill()
        proc.wait()


def test_sandbox_create_fails_with_passt_s_own_words(tmp_path, monkeypatch, kernel_path):
    """A passt that dies at start fails Sandbox.create with an error naming passt and
    quoting it, before READY: passt starts up while the machine does, and the sandbox
    is torn down (the machine included) when passt turns out to have failed."""
    monkeypatch.setenv(net_backend.PASST_ENV, fake_passt(
        tmp_path, "echo 'Failed to open tap: broken on purpose' >&2\nexit 1\n"))
    image = tmp_path / "image.erofs"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="passt .* exited with status 1 at start: "
                                          "Failed to open tap: broken on purpose"):
        vmm.Sandbox.create(image, kernel=kernel_path, engine="qemu", network=Network())
