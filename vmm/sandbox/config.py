"""A named sandbox's configuration: the options `msb run` and `msb create` share, parsed
and checked once, frozen, and kept in the sandbox database as JSON.

    cfg = SandboxConfig.build(image="alpine:3.20", memory="1.5G", env=["A=1", "HOME"],
                              ports=["4324:4321"], idle_timeout="5m")
    SandboxConfig.from_json(cfg.to_json()) == cfg

Every bad value is a ConfigError naming it (exit 2 at the command line). The values are
what the user asked for; the image's own defaults (ENTRYPOINT, CMD, Env, WorkingDir,
User) are applied when a command runs (command.py), so a config stays meaningful if the
image changes.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

from ..errors import ConfigError
from .checks import check_env, check_hostname, check_workdir

DEFAULT_CPUS = 1
DEFAULT_MEMORY_MIB = 512
DEFAULT_SHELL = "/bin/sh"
MIN_MEMORY_MIB = 64
MAX_CPUS = 255
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
PULL_POLICIES = ("always", "if-missing", "never")

_MEM_UNITS = {"": 1, "M": 1, "MB": 1, "MI": 1, "MIB": 1, "G": 1024, "GB": 1024, "GI": 1024,
              "GIB": 1024, "K": 1 / 1024, "KB": 1 / 1024, "KI": 1 / 1024, "KIB": 1 / 1024,
              "T": 1024 * 1024, "TB": 1024 * 1024}
_DUR_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TMPFS_SIZE = re.compile(r"\d+[kKmMgG]?")


def check_name(name: str) -> str:
    """A sandbox name: 1-63 letters, digits, '_', '.', '-', starting with a letter or digit
    (it becomes a directory name and, by default, the guest's hostname)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"bad sandbox name {name!r}: use 1-63 letters, digits, '_', '.' "
                          "or '-', starting with a letter or digit")
    return name


def parse_memory(text) -> int:
    """MiB from `512M`, `1G`, `1.5G`, or a bare number of MiB."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).upper() if m else None
        if not m or unit not in _MEM_UNITS:
            raise ConfigError(f"memory {text!r} is not a size like 512M, 1G, 1.5G or a "
                              "number of MiB")
        value = float(m.group(1)) * _MEM_UNITS[unit]
    mib = int(value)
    if mib != value:
        raise ConfigError(f"memory {text!r} is not a whole number of MiB")
    if mib < MIN_MEMORY_MIB:
        raise ConfigError(f"memory {text!r} is below the minimum of {MIN_MEMORY_MIB} MiB")
    return mib


def parse_duration(text, what: str = "duration") -> Optional[float]:
    """Seconds from `30s`, `5m`, `1h`, `1d` or a bare number of seconds; None stays None."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
        if not m:
            raise ConfigError(f"{what} {text!r} is not a duration like 30s, 5m, 1h or a "
                              "number of seconds")
        value = float(m.group(1)) * _DUR_UNITS[m.group(2)]
    if value <= 0:
        raise ConfigError(f"{what} {text!r} must be more than zero")
    return value


def parse_env(items: Iterable[str], environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """`K=V` pairs; a bare `K` copies the host's value and is an error when it is unset."""
    environ = os.environ if environ is None else environ
    out: Dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not key:
            raise ConfigError(f"environment variable {item!r} has no name (expected K=V or K)")
        if not sep:
            if key not in environ:
                raise ConfigError(f"environment variable {key} is not set on the host "
                                  f"(-e {key} copies the host's value; give -e {key}=VALUE)")
            value = environ[key]
        out[key] = value
    check_env(out)
    return out


def check_user(user: Optional[str]) -> Optional[str]:
    """`-u USER[:GROUP]`: a name or uid, optionally a group name or gid (the guest agent
    looks names up in the image's /etc/passwd and /etc/group when a command runs)."""
    if user is None:
        return None
    if not isinstance(user, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
                                                     r"(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?", user):
        raise ConfigError(f"user {user!r} is not USER[:GROUP] (a name or uid, optionally "
                          "':' and a group name or gid)")
    return user


@dataclass(frozen=True)
class VolumeSpec:
    """`-v SRC:DEST[:ro]`: SRC starting with /, ./ or ../ is a host path, else a named
    volume. A host path is kept absolute, resolved against the directory `msb` was called
    from: the supervisor that mounts it runs elsewhere, and later."""
    source: str
    dest: str
    kind: str           # "host" | "named"
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> "VolumeSpec":
        # One grammar for `-v` everywhere: volumes.py's (guest path and name checks).
        from .volumes import parse_volume_spec
        if not isinstance(text, str) or ":" not in text:
            raise ConfigError(f"volume {text!r} is not SRC:DEST[:ro]")
        spec = parse_volume_spec(text)
        src = os.path.abspath(spec.src) if spec.kind == "host" else spec.src
        return cls(src, spec.dest, spec.kind, spec.read_only)

    def __str__(self) -> str:
        return f"{self.source}:{self.dest}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class TmpfsSpec:
    """`--tmpfs PATH[:SIZE]`, SIZE like 64m (tmpfs's own default when absent)."""
    path: str
    size: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "TmpfsSpec":
        path, sep, size = text.partition(":")
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"tmpfs {text!r}: the path must be an absolute guest path "
                              "other than /")
        if sep and not _TMPFS_SIZE.fullmatch(size):
            raise ConfigError(f"tmpfs {text!r}: size {size!r} is not like 64m or 1g")
        if any(c in path for c in " ,\0"):
            raise ConfigError(f"tmpfs {text!r}: the path may not contain spaces or commas")
        return cls(path, size.lower() if sep else None)


@dataclass(frozen=True)
class SandboxConfig:
    image: Optional[str] = None
    cpus: int = DEFAULT_CPUS
    memory_mib: int = DEFAULT_MEMORY_MIB
    env: Tuple[Tuple[str, str], ...] = ()
    workdir: Optional[str] = None
    shell: str = DEFAULT_SHELL
    hostname: Optional[str] = None
    user: Optional[str] = None
    entrypoint: Optional[Tuple[str, ...]] = None
    command: Tuple[str, ...] = ()
    ports: Tuple[str, ...] = ()
    net_scope: str = "public"
    net_rules: Tuple[str, ...] = ()
    max_duration: Optional[float] = None
    idle_timeout: Optional[float] = None
    tmpfs: Tuple[TmpfsSpec, ...] = ()
    volumes: Tuple[VolumeSpec, ...] = ()
    engine: str = "auto"
    pull: str = "if-missing"

    @classmethod
    def build(cls, *, image=None, cpus=DEFAULT_CPUS, memory=DEFAULT_MEMORY_MIB, env=(),
              workdir=None, shell=DEFAULT_SHELL, hostname=None, user=None, entrypoint=None,
              command=(), ports=(), no_net=False, net=None, net_rules=(), max_duration=None,
              idle_timeout=None, tmpfs=(), volumes=(), engine="auto", pull="if-missing",
              environ=None) -> "SandboxConfig":
        """A config from the command line's values (strings as typed); ConfigError names
        the first bad one."""
        if no_net and net not in (None, "none"):
            raise ConfigError(f"--no-net and --net {net} contradict each other")
        if no_net and ports:
            raise ConfigError("--no-net and -p contradict each other: a published port "
                              "needs a network")
        scope = "none" if no_net else (net or "public")
        if isinstance(entrypoint, str):
            try:
                entrypoint = tuple(shlex.split(entrypoint))
            except ValueError as e:
                raise ConfigError(f"--entrypoint {entrypoint!r}: {e}") from None
            if not entrypoint:
                raise ConfigError("--entrypoint is empty")
        cfg = cls(image=image, cpus=cpus, memory_mib=parse_memory(memory),
                  env=tuple(parse_env(env, environ).items()), workdir=workdir, shell=shell,
                  hostname=hostname, user=user or None,
                  entrypoint=tuple(entrypoint) if entrypoint else None,
                  command=tuple(command), ports=tuple(ports), net_scope=scope,
                  net_rules=tuple(net_rules),
                  max_duration=parse_duration(max_duration, "--max-duration"),
                  idle_timeout=parse_duration(idle_timeout, "--idle-timeout"),
                  tmpfs=tuple(TmpfsSpec.parse(t) for t in tmpfs),
                  volumes=tuple(VolumeSpec.parse(v) for v in volumes), engine=engine,
                  pull=pull)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not isinstance(self.cpus, int) or isinstance(self.cpus, bool) or \
                not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"cpus {self.cpus!r} must be a whole number from 1 to {MAX_CPUS}")
        if not isinstance(self.memory_mib, int) or self.memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(f"memory {self.memory_mib!r} MiB is below {MIN_MEMORY_MIB} MiB")
        check_workdir(self.workdir)
        check_hostname(self.hostname)
        if not (isinstance(self.shell, str) and self.shell.startswith("/")):
            raise ConfigError(f"shell {self.shell!r} must be an absolute path in the guest")
        from ..net.policy import SCOPES   # the network layer loads only to check a config
        if self.net_scope not in SCOPES:
            raise ConfigError(f"network scope {self.net_scope!r} is not one of {', '.join(SCOPES)}")
        if self.pull not in PULL_POLICIES:
            raise ConfigError(f"pull policy {self.pull!r} is not one of {', '.join(PULL_POLICIES)}")
        dests = {}
        for v in self.volumes:
            if v.dest in dests:
                raise ConfigError(f"volumes {dests[v.dest]} and {v} are both mounted at {v.dest}")
            dests[v.dest] = v
        for t in self.tmpfs:
            if t.path.rstrip("/") in dests:
                raise ConfigError(f"--tmpfs {t.path} and volume {dests[t.path.rstrip('/')]} "
                                  "are both mounted there")
        check_user(self.user)
        self.network()   # ports and rules are checked by the network's own parser

    # --- what it means ------------------------------------------------------------------
    @property
    def env_dict(self) -> Dict[str, str]:
        return dict(self.env)

    def network(self):
        """The vmm.net Network for Sandbox.create, or None for no NIC."""
        from ..net.network import Network
        if self.net_scope == "none":
            return None
        return Network(scope=self.net_scope, ports=self.ports, rules=self.net_rules)

    def guest_hostname(self, name: str) -> str:
        """-H, else the sandbox name made a valid hostname ('_' is not allowed in one)."""
        return self.hostname or name.replace("_", "-")

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["env"] = dict(self.env)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "SandboxConfig":
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}  # a newer msb may add fields
        for key in ("ports", "net_rules", "command"):
            if key in d:
                d[key] = tuple(d[key])
        if "env" in d:
            d["env"] = tuple(dict(d["env"]).items())
        if d.get("entrypoint") is not None:
            d["entrypoint"] = tuple(d["entrypoint"])
        d["tmpfs"] = tuple(TmpfsSpec(**t) for t in d.get("tmpfs", ()))
        d["volumes"] = tuple(VolumeSpec(**v) for v in d.get("volumes", ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "SandboxConfig":
        return cls.from_dict(json.loads(text))
