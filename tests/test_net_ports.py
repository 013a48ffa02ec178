"""Published-port specs and the host-side checks made before a sandbox boots (no VM)."""
import socket

import pytest

import vmm
from vmm.errors import ConfigError
from vmm.net.network import Network, kernel_arg, guest_state, passt_options
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
    st = guest_state(Network(scope="host"), [])
    assert kernel_arg(st) == "vmm.net=10.0.2.15/24,10.0.2.2,1500,10.0.2.3,1"
    assert kernel_arg(guest_state(Network(dns="9.9.9.9"), [])) == \
        "vmm.net=10.0.2.15/24,10.0.2.2,1500,9.9.9.9,0"
    opts = passt_options(guest_state(Network(), parse_ports(["1234:80"])))
    assert opts[opts.index("--address") + 1] == "10.0.2.15"
    assert opts[opts.index("--gateway") + 1] == "10.0.2.2"
    assert opts[-2:] == ["-t", "127.0.0.1/1234:80"]


def test_sandbox_rejects_a_network_that_is_not_one(tmp_path):
    image = tmp_path / "image.erofs"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="network must be"):
        vmm.Sandbox.create(image, network="public")
