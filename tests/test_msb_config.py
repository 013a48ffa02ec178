"""SandboxConfig: the shared `run`/`create` options parsed, checked, frozen, and kept as JSON."""
import dataclasses

import pytest

from vmm.errors import ConfigError
from vmm.net.network import Network
from vmm.sandbox.command import resolve_command
from vmm.sandbox.config import (SandboxConfig, TmpfsSpec, VolumeSpec, check_name,
                                parse_duration, parse_env, parse_memory)


@pytest.mark.parametrize("text,mib", [("512M", 512), ("1G", 1024), ("1.5G", 1536), ("2G", 2048),
                                      ("768", 768), (1024, 1024), ("256MiB", 256),
                                      ("1g", 1024), ("131072K", 128)])
def test_memory(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "1X", "-5", "1.0001G", "32M", "0"])
def test_memory_refused(text):
    with pytest.raises(ConfigError, match="memory"):
        parse_memory(text)


@pytest.mark.parametrize("text,secs", [("30s", 30), ("5m", 300), ("1h", 3600), ("90", 90),
                                       ("1.5m", 90), (12, 12), ("2d", 172800)])
def test_duration(text, secs):
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text", ["soon", "5 min", "-1", "0", "1y"])
def test_duration_refused(text):
    with pytest.raises(ConfigError, match="--idle-timeout"):
        parse_duration(text, "--idle-timeout")


def test_env_copies_host_value_and_refuses_unset():
    assert parse_env(["A=1", "B", "C=x=y", "D="], {"B": "from-host"}) == \
        {"A": "1", "B": "from-host", "C": "x=y", "D": ""}
    with pytest.raises(ConfigError, match="MISSING is not set on the host"):
        parse_env(["MISSING"], {})
    with pytest.raises(ConfigError, match="no name"):
        parse_env(["=v"], {})


def test_volumes_parsed_by_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a host path is made absolute against it
    assert VolumeSpec.parse("./src:/app") == VolumeSpec(f"{tmp_path}/src", "/app", "host")
    assert VolumeSpec.parse("/abs:/data:ro") == VolumeSpec("/abs", "/data", "host", True)
    assert VolumeSpec.parse("../up:/x").kind == "host"
    assert VolumeSpec.parse("cache:/root/.cache") == VolumeSpec("cache", "/root/.cache", "named")
    for bad in ("nocolon", "a:relative", ":/x", "we ird:/x"):
        with pytest.raises(ConfigError, match="volume"):
            VolumeSpec.parse(bad)


def test_tmpfs():
    assert TmpfsSpec.parse("/scratch") == TmpfsSpec("/scratch", None)
    assert TmpfsSpec.parse("/scratch:64M") == TmpfsSpec("/scratch", "64m")
    for bad in ("rel", "/", "/x:big", "/a,b"):
        with pytest.raises(ConfigError, match="tmpfs"):
            TmpfsSpec.parse(bad)


def test_names():
    for good in ("astro-demo", "a", "msb-0123abcd", "x_y.z", "A" * 63):
        assert check_name(good) == good
    for bad in ("", "-x", "a/b", "..", "a b", "A" * 64, ".hidden"):
        with pytest.raises(ConfigError, match="bad sandbox name"):
            check_name(bad)


def test_build_defaults_and_frozen():
    cfg = SandboxConfig.build(image="alpine:3.20")
    assert (cfg.cpus, cfg.memory_mib, cfg.shell, cfg.net_scope, cfg.pull) == \
        (1, 512, "/bin/sh", "public", "if-missing")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cpus = 2
    assert cfg.guest_hostname("my_box") == "my-box"
    assert SandboxConfig.build(hostname="h1").guest_hostname("x") == "h1"


def test_json_round_trip_of_every_field():
    cfg = SandboxConfig.build(
        image="node:22", cpus=2, memory="1.5G", env=["A=1", "HOME"], workdir="/w",
        shell="/bin/bash", hostname="web", user="1000:1000", entrypoint="tini --",
        command=["node", "app.js"], ports=["4324:4321", "0.0.0.0:53:53/udp"], net="private",
        net_rules=["deny@10.0.0.0/8"], max_duration="1h", idle_timeout="5m",
        tmpfs=["/scratch:64m"], volumes=["cache:/c"], engine="qemu", pull="never",
        environ={"HOME": "/home/me"})
    back = SandboxConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.entrypoint == ("tini", "--")
    assert back.env_dict == {"A": "1", "HOME": "/home/me"}
    assert back.max_duration == 3600 and back.idle_timeout == 300


def test_network_mapping():
    assert SandboxConfig.build(no_net=True).network() is None
    assert SandboxConfig.build(net="none").network() is None
    net = SandboxConfig.build(ports=["4324:4321"], net="host",
                              net_rules=["allow@192.168.1.0/24:tcp:22"]).network()
    assert net == Network(scope="host", ports=("4324:4321",),
                          rules=("allow@192.168.1.0/24:tcp:22",))


@pytest.mark.parametrize("kwargs,match", [
    (dict(cpus=0), "cpus"), (dict(cpus=300), "cpus"), (dict(memory="1T0"), "memory"),
    (dict(workdir="rel"), "workdir"), (dict(hostname="bad host"), "hostname"),
    (dict(shell="sh"), "shell"), (dict(ports=["99999:1"]), "published port"),
    (dict(net_rules=["maybe@1.2.3.4"]), "rule"), (dict(no_net=True, net="public"), "contradict"),
    (dict(no_net=True, ports=["1:1"]), "contradict"), (dict(entrypoint="'open"), "entrypoint"),
    (dict(pull="sometimes"), "pull policy"),
])
def test_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SandboxConfig.build(**kwargs)


def test_command_resolution():
    cfg = SandboxConfig.build()
    img = {"entrypoint": ["docker-entrypoint.sh"], "cmd": ["node"]}
    assert resolve_command(cfg, img, ["corepack", "enable"], False) == \
        ["docker-entrypoint.sh", "corepack", "enable"]
    assert resolve_command(cfg, img, [], False) == ["docker-entrypoint.sh", "node"]
    assert resolve_command(cfg, {"cmd": ["sh"]}, [], False) == ["sh"]
    assert resolve_command(cfg, {}, [], True) == ["/bin/sh", "-i"]
    assert resolve_command(cfg, {}, [], False) == ["/bin/sh"]
    own = SandboxConfig.build(entrypoint="/bin/env")
    assert resolve_command(own, img, ["x"], False) == ["/bin/env", "x"]
