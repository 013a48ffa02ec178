"""An OCI bundle's config.json, read as what one of our microVMs can be: the root directory,
the process, the mounts, the hostname, the VM's size and its network namespace.

    from vmm.runtime.bundle import load_bundle
    b = load_bundle("/run/containerd/.../bundle")
    b.root, b.process.args, b.cpus, b.memory_mib, b.netns, b.unhonoured

The bundle comes from whoever drives the runtime (containerd, podman, a user's hand-written
file) and is not trusted: config.json is read with a size cap, every field is type-checked,
paths are checked to be absolute where the spec says so, and numbers are bounded. An error
names the field (`process.args[2]: not a string`) and raises BundleError.

What a VM cannot honour the way runc does (a host device cgroup, an AppArmor profile, a
seccomp profile for the host kernel) is never dropped silently: each is listed in
`Bundle.unhonoured` as one line naming the field, and the runtime logs every line at create.
The same names are in features() for a caller to see beforehand.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..agent.capabilities import NUMBERS as CAPABILITY_NUMBERS
from ..agent.capabilities import SETS as CAPABILITY_SETS
from ..agent.capabilities import Capabilities
from ..errors import ConfigError
from .hooks import Hook, HookError, parse_hooks

CONFIG_MAX_BYTES = 4 << 20        # containerd's configs are a few KiB; 4 MiB is generous
OCI_VERSION = re.compile(r"1\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?")
DEFAULT_MEMORY_MIB = 512          # as vmm.Sandbox
MIN_MEMORY_MIB = 128              # below this the guest kernel and agent do not fit
MAX_MEMORY_MIB = 1 << 20          # 1 TiB: a bound, not a promise
MAX_CPUS = 64
MAX_ARGS = 4096
MAX_ENV = 4096
MAX_MOUNTS = 256
MAX_STRING = 64 << 10
MAX_GROUPS = 1024                 # additionalGids (the guest agent's limit too)
# Annotations that size the VM, as krun's krun.cpus / krun.ram_mib do for crun.
ANNOTATION_CPUS = "vmm.cpus"
ANNOTATION_MEMORY = "vmm.ram_mib"
ANNOTATION_ENGINE = "vmm.engine"   # auto (default), kvm or qemu
ENGINES = ("auto", "kvm", "qemu")

RLIMITS = {"RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3,
           "RLIMIT_CORE": 4, "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7,
           "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11,
           "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15}
NAMESPACES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
# Mounts every container asks for that the guest agent makes itself in the guest (its own
# /proc, /sys, /dev, ...): satisfied by the VM whatever their type (podman binds a
# host tmpfs at /dev/shm; the guest's own /dev/shm is the one its processes share).
GUEST_PROVIDED = ("/proc", "/sys", "/dev", "/dev/pts", "/dev/mqueue", "/dev/shm", "/sys/fs/cgroup")
# Fields whose meaning is the host kernel's: a VM has a kernel of its own.
HOST_ONLY_LINUX = {
    "devices": "linux.devices (a host device cgroup): the guest sees only its virtio devices",
    "seccomp": "linux.seccomp: not applied (the process runs under the guest's kernel, "
               "behind the VM boundary)",
    "maskedPaths": "linux.maskedPaths: not applied inside the guest",
    "readonlyPaths": "linux.readonlyPaths: not applied inside the guest",
    "sysctl": "linux.sysctl: not applied (the guest kernel has its own defaults)",
    "uidMappings": "linux.uidMappings: not applied (the guest has its own user ids)",
    "gidMappings": "linux.gidMappings: not applied (the guest has its own user ids)",
    "intelRdt": "linux.intelRdt: not applied",
    "personality": "linux.personality: not applied",
    "mountLabel": "linux.mountLabel: not applied (no SELinux in the guest)",
}


class BundleError(ConfigError):
    """config.json is missing, too large, not JSON, or a field has the wrong type or value."""


@dataclass(frozen=True)
class ProcessSpec:
    args: Tuple[str, ...]
    env: Tuple[Tuple[str, str], ...]
    cwd: str
    uid: int = 0
    gid: int = 0
    additional_gids: Tuple[int, ...] = ()
    umask: Optional[int] = None
    terminal: bool = False
    console_size: Optional[Tuple[int, int]] = None   # (rows, cols)
    rlimits: Tuple[Tuple[int, int, int], ...] = ()    # (resource, soft, hard)
    no_new_privileges: bool = False
    capabilities: Optional[Capabilities] = None       # None: the agent's defaults (exec's flags)

    @property
    def env_dict(self) -> Dict[str, str]:
        return dict(self.env)

    @property
    def user(self) -> str:
        """uid:gid as the agent's exec takes it."""
        return f"{self.uid}:{self.gid}"


@dataclass(frozen=True)
class MountSpec:
    destination: str
    source: str
    type: str
    options: Tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "rro" in self.options

    @property
    def is_bind(self) -> bool:
        return self.type in ("bind", "rbind", "") and ("bind" in self.options or "rbind" in self.options
                                                       or self.type in ("bind", "rbind"))


@dataclass(frozen=True)
class Bundle:
    path: str
    oci_version: str
    root: str                      # absolute host path of the root directory
    root_readonly: bool
    process: Optional[ProcessSpec]
    hostname: Optional[str]
    mounts: Tuple[MountSpec, ...]  # the ones that share something from the host
    cpus: int
    memory_mib: int
    netns: Optional[str]           # the network namespace the VM's NIC lives in
    network: str                   # "join" (netns), "none" (a new, empty one), "host"
    engine: Optional[str]          # from the vmm.engine annotation; None: the runtime's default
    annotations: Tuple[Tuple[str, str], ...]
    unhonoured: Tuple[str, ...] = field(default=())
    hooks: Tuple[Tuple[str, Hook], ...] = field(default=())   # (stage, hook), hooks.py

    @property
    def annotations_dict(self) -> Dict[str, str]:
        return dict(self.annotations)


def load_bundle(bundle_dir: str) -> Bundle:
    """Reads <bundle_dir>/config.json; BundleError naming the problem."""
    bundle_dir = os.path.abspath(bundle_dir)
    path = os.path.join(bundle_dir, "config.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file (is {bundle_dir} an OCI bundle?)") from None
    except OSError as e:
        raise BundleError(f"cannot open {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        # O_NONBLOCK and this check: a FIFO or a device named config.json must not hang us.
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{path} is not a regular file")
        data = f.read(CONFIG_MAX_BYTES + 1)
    if len(data) > CONFIG_MAX_BYTES:
        raise BundleError(f"{path} is larger than {CONFIG_MAX_BYTES >> 20} MiB")
    return parse_config(data, bundle_dir)


def parse_config(data: bytes, bundle_dir: str) -> Bundle:
    try:
        cfg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"config.json is not valid JSON: {e}") from None
    r = _Reader(cfg, "")
    r.is_object()
    notes: List[str] = []
    oci_version = r.get("ociVersion").string(required=True)
    if not OCI_VERSION.fullmatch(oci_version):
        raise BundleError(f"ociVersion {oci_version!r} is not a 1.x version")

    root = r.get("root")
    root.is_object(required=True)
    root_path = root.get("path").string(required=True)
    if not os.path.isabs(root_path):
        root_path = os.path.join(bundle_dir, root_path)
    root_path = os.path.normpath(root_path)
    root_readonly = root.get("readonly").boolean(default=False)

    process = _process(r.get("process"), notes)
    hostname = r.get("hostname").string()
    annotations = r.get("annotations").string_map()
    linux = r.get("linux")
    linux.is_object()
    cpus, memory_mib = _size(linux.get("resources"), annotations, notes)
    netns, network = _namespaces(linux.get("namespaces"), notes)
    for key, why in HOST_ONLY_LINUX.items():
        if linux.get(key).present and not linux.get(key).empty:
            notes.append(why)
    for key in ("apparmorProfile", "selinuxLabel", "oomScoreAdj"):
        if r.get("process").get(key).present:
            notes.append(f"process.{key}: not applied in the guest")
    try:
        hooks = parse_hooks(cfg.get("hooks"), notes)
    except HookError as e:
        raise BundleError(str(e)) from None
    mounts = _mounts(r.get("mounts"), notes)
    engine = annotations.get(ANNOTATION_ENGINE)
    if engine is not None and engine not in ENGINES:
        raise BundleError(f"annotation {ANNOTATION_ENGINE}={engine!r}: not one of {', '.join(ENGINES)}")
    return Bundle(path=bundle_dir, oci_version=oci_version, root=root_path,
                  root_readonly=root_readonly, process=process, hostname=hostname,
                  mounts=tuple(mounts), cpus=cpus, memory_mib=memory_mib, netns=netns, network=network, engine=engine,
                  annotations=tuple(sorted(annotations.items())), unhonoured=tuple(notes),
                  hooks=hooks)


def load_process(path: str, notes: Optional[List[str]] = None) -> ProcessSpec:
    """An OCI process object alone (what `exec --process FILE` reads); BundleError naming
    the problem. What is not applied is added to notes, if given."""
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_MAX_BYTES + 1)
    except OSError as e:
        raise BundleError(f"cannot read the process file {path}: {e.strerror}") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise BundleError(f"{path} is larger than {CONFIG_MAX_BYTES >> 20} MiB")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    r = _Reader(raw, "process")
    r.is_object(required=True)
    return _process(r, notes if notes is not None else [])


def _process(p: "_Reader", notes: List[str]) -> Optional[ProcessSpec]:
    if not p.present:
        return None
    p.is_object()
    args = p.get("args").string_list(limit=MAX_ARGS)
    if not args:
        raise BundleError("process.args: must name the program to run")
    env_list = p.get("env").string_list(limit=MAX_ENV)
    env = []
    for i, item in enumerate(env_list):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise BundleError(f"process.env[{i}]: {item[:80]!r} is not KEY=VALUE")
        env.append((k, v))
    cwd = p.get("cwd").string(required=True)
    if not cwd.startswith("/"):
        raise BundleError(f"process.cwd: {cwd!r} is not an absolute path")
    user = p.get("user")
    user.is_object()
    uid = user.get("uid").integer(0, 2**32 - 2, default=0)
    gid = user.get("gid").integer(0, 2**32 - 2, default=0)
    extra = tuple(user.get("additionalGids").integer_list(0, 2**32 - 2, limit=MAX_GROUPS))
    umask = user.get("umask").integer(0, 0o777, default=None)
    if user.get("username").present:
        notes.append("process.user.username: ignored (uid and gid are used)")
    size = p.get("consoleSize")
    console_size = None
    if size.present:
        size.is_object()
        console_size = (size.get("height").integer(0, 65535, default=24),
                        size.get("width").integer(0, 65535, default=80))
    rlimits = []
    for i, rl in enumerate(p.get("rlimits").items(limit=64)):
        rl.is_object()
        name = rl.get("type").string(required=True)
        if name not in RLIMITS:
            raise BundleError(f"process.rlimits[{i}].type: unknown resource {name!r}")
        hard = rl.get("hard").integer(0, 2**64 - 1, required=True)
        soft = rl.get("soft").integer(0, 2**64 - 1, required=True)
        if soft > hard:
            raise BundleError(f"process.rlimits[{i}]: soft {soft} is above hard {hard}")
        rlimits.append((RLIMITS[name], soft, hard))
    return ProcessSpec(args=tuple(args), env=tuple(env), cwd=cwd, uid=uid, gid=gid,
                       additional_gids=extra, umask=umask,
                       terminal=p.get("terminal").boolean(default=False),
                       console_size=console_size, rlimits=tuple(rlimits),
                       no_new_privileges=p.get("noNewPrivileges").boolean(default=False),
                       capabilities=_capabilities(p.get("capabilities"), notes))


def _capabilities(caps: "_Reader", notes: List[str]) -> Capabilities:
    """The five sets by name; absent, all five are empty (runc 1.1 gives such a process no
    capabilities, root or not). A name we do not know is left out of its set, and noted, as
    runc 1.1 does ("ignoring unknown or unavailable capabilities"): the process gets less,
    never more, and a bundle written for a newer kernel still runs."""
    caps.is_object()
    sets = {}
    for name in CAPABILITY_SETS:
        names = caps.get(name).string_list(limit=len(CAPABILITY_NUMBERS) * 2)
        unknown = [c for c in names if c not in CAPABILITY_NUMBERS]
        if unknown:
            notes.append(f"process.capabilities.{name}: unknown capability "
                         f"{', '.join(repr(c[:64]) for c in unknown[:8])} ignored (as runc does)")
        sets[name] = tuple(c for c in names if c in CAPABILITY_NUMBERS)
    return Capabilities(**sets)


def _size(res: "_Reader", annotations: Dict[str, str], notes: List[str]) -> Tuple[int, int]:
    res.is_object()
    cpus = 1
    cpu = res.get("cpu")
    cpu.is_object()
    quota = cpu.get("quota").integer(-1, 2**63 - 1, default=None)
    period = cpu.get("period").integer(1, 2**63 - 1, default=None)
    if quota is not None and quota > 0:
        cpus = math.ceil(quota / (period or 100000))
    elif cpu.get("cpus").present:
        cpus = _cpuset_count(cpu.get("cpus").string(), "linux.resources.cpu.cpus")
    memory_mib = DEFAULT_MEMORY_MIB
    mem = res.get("memory")
    mem.is_object()
    limit = mem.get("limit").integer(-1, 2**63 - 1, default=None)
    if limit is not None and limit > 0:
        memory_mib = math.ceil(limit / (1 << 20))
    if ANNOTATION_CPUS in annotations:
        cpus = _annotation_int(annotations, ANNOTATION_CPUS, 1, MAX_CPUS)
    if ANNOTATION_MEMORY in annotations:
        memory_mib = _annotation_int(annotations, ANNOTATION_MEMORY, MIN_MEMORY_MIB, MAX_MEMORY_MIB)
    if cpus > MAX_CPUS:
        notes.append(f"linux.resources.cpu: {cpus} CPUs asked, the VM gets {MAX_CPUS}")
        cpus = MAX_CPUS
    if memory_mib < MIN_MEMORY_MIB:
        notes.append(f"linux.resources.memory.limit: {memory_mib} MiB is below the VM's minimum; "
                     f"the VM gets {MIN_MEMORY_MIB} MiB")
        memory_mib = MIN_MEMORY_MIB
    memory_mib = min(memory_mib, MAX_MEMORY_MIB)
    for key in ("blockIO", "hugepageLimits", "network", "pids", "rdma", "unified", "devices"):
        if res.get(key).present and not res.get(key).empty:
            notes.append(f"linux.resources.{key}: not applied (the VM's size bounds it)")
    return max(1, cpus), memory_mib


def _cpuset_count(spec: str, where: str) -> int:
    count = 0
    for part in spec.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise BundleError(f"{where}: {spec!r} is not a CPU list like 0-3,6") from None
        if lo < 0 or hi < lo or hi > 4095:
            raise BundleError(f"{where}: {spec!r} is not a CPU list like 0-3,6")
        count += hi - lo + 1
    return max(1, count)


def _annotation_int(annotations: Dict[str, str], key: str, lo: int, hi: int) -> int:
    text = annotations[key]
    if not re.fullmatch(r"[0-9]{1,9}", text) or not lo <= int(text) <= hi:
        raise BundleError(f"annotation {key}={text!r}: not a whole number from {lo} to {hi}")
    return int(text)


def _namespaces(ns: "_Reader", notes: List[str]) -> Tuple[Optional[str], str]:
    """The network namespace to join (or None) and what the VM's network is: "join" a
    namespace's interface, "none" (a new namespace: only loopback, as runc gives), or
    "host" (no network namespace asked for: the host's network, through NAT)."""
    netns = None
    network = "host"
    seen = set()
    for i, n in enumerate(ns.items(limit=len(NAMESPACES) * 2)):
        n.is_object()
        kind = n.get("type").string(required=True)
        if kind not in NAMESPACES:
            raise BundleError(f"linux.namespaces[{i}].type: unknown namespace {kind!r}")
        if kind in seen:
            raise BundleError(f"linux.namespaces[{i}]: {kind} named twice")
        seen.add(kind)
        path = n.get("path").string()
        if path is not None and not path.startswith("/"):
            raise BundleError(f"linux.namespaces[{i}].path: {path!r} is not an absolute path")
        if kind == "network":
            netns = path
            network = "join" if path else "none"
        elif path:
            notes.append(f"linux.namespaces: joining the {kind} namespace at {path} is not "
                         "possible for a VM; the guest has its own")
    return netns, network


def _mounts(ms: "_Reader", notes: List[str]) -> List[MountSpec]:
    out = []
    for i, m in enumerate(ms.items(limit=MAX_MOUNTS)):
        m.is_object()
        dest = m.get("destination").string(required=True)
        if not dest.startswith("/"):
            raise BundleError(f"mounts[{i}].destination: {dest!r} is not an absolute path")
        dest = os.path.normpath(dest)
        kind = m.get("type").string(default="") or ""
        source = m.get("source").string(default="") or ""
        options = tuple(m.get("options").string_list(limit=64))
        spec = MountSpec(destination=dest, source=source, type=kind, options=options)
        if dest in GUEST_PROVIDED:
            continue
        if spec.is_bind:
            if not source.startswith("/"):
                raise BundleError(f"mounts[{i}].source: bind source {source!r} is not an absolute path")
            out.append(spec)
        elif kind == "tmpfs":
            out.append(spec)
        else:
            notes.append(f"mounts[{i}]: a {kind or 'typeless'} mount at {dest} is not made "
                         "(only bind mounts and tmpfs are)")
    return out


class _Reader:
    """One JSON value at a dotted path, with typed getters that raise BundleError naming it."""

    _MISSING = object()

    def __init__(self, value: Any, where: str):
        self.value = value
        self.where = where

    @property
    def present(self) -> bool:
        return self.value is not self._MISSING and self.value is not None

    @property
    def empty(self) -> bool:
        return self.value in ({}, [], "", None) or self.value is self._MISSING

    def get(self, key: str) -> "_Reader":
        where = f"{self.where}.{key}" if self.where else key
        if isinstance(self.value, dict):
            return _Reader(self.value.get(key, self._MISSING), where)
        return _Reader(self._MISSING, where)

    def _fail(self, what: str):
        raise BundleError(f"{self.where or 'config.json'}: {what}")

    def is_object(self, required: bool = False) -> None:
        if not self.present:
            if required:
                self._fail("missing")
            return
        if not isinstance(self.value, dict):
            self._fail("not an object")

    def string(self, required: bool = False, default=None) -> Optional[str]:
        if not self.present:
            if required:
                self._fail("missing")
            return default
        if not isinstance(self.value, str):
            self._fail("not a string")
        if len(self.value) > MAX_STRING or "\0" in self.value:
            self._fail("longer than 64 KiB or holds a NUL byte")
        return self.value

    def boolean(self, default: bool) -> bool:
        if not self.present:
            return default
        if not isinstance(self.value, bool):
            self._fail("not true or false")
        return self.value

    def integer(self, lo: int, hi: int, required: bool = False, default=None):
        if not self.present:
            if required:
                self._fail("missing")
            return default
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            self._fail("not a whole number")
        if not lo <= self.value <= hi:
            self._fail(f"{self.value} is outside {lo}..{hi}")
        return self.value

    def items(self, limit: int) -> List["_Reader"]:
        if not self.present:
            return []
        if not isinstance(self.value, list):
            self._fail("not a list")
        if len(self.value) > limit:
            self._fail(f"more than {limit} entries")
        return [_Reader(v, f"{self.where}[{i}]") for i, v in enumerate(self.value)]

    def string_list(self, limit: int) -> List[str]:
        return [item.string(required=True) for item in self.items(limit)]

    def integer_list(self, lo: int, hi: int, limit: int) -> List[int]:
        return [item.integer(lo, hi, required=True) for item in self.items(limit)]

    def string_map(self) -> Dict[str, str]:
        if not self.present:
            return {}
        if not isinstance(self.value, dict):
            self._fail("not an object")
        if len(self.value) > 1024:
            self._fail("more than 1024 entries")
        return {k: self.get(k).string(required=True) for k in self.value}
