"""What a `bench boot` run varies and repeats: BenchSettings, and the configurations
(one per combination of swept values) it expands to.

Every sweepable variable takes a list of values; the run measures the cartesian product,
each configuration with its own rounds and baselines. A configuration's label names only
the variables that take more than one value ("default" when nothing is swept), so two
result files of single-configuration runs compare by system alone.

What each combination means, and what is refused (ConfigError, before anything boots):
    kernel     a vmlinux path (None: the project's guest kernel)
    kernel_config
               config fragments laid over the project's kernel config, the kernel built
               through the kernel cache (vmm/guest/kernel.py; the first use builds it,
               minutes): one fragment path, or several joined by "+" applied in order;
               None: the project's config alone. Takes kernel=None only. The result's
               settings record each fragment's text and hash (fragment_records())
    memory     MiB of guest RAM
    cpus       vCPUs
    hugepages  guest RAM on 2 MiB huge pages (needs free ones in /proc/sys/vm/nr_hugepages;
               the agent init has no such option: Sandbox.create() does not take one)
    root       "initramfs" (the test init in an initramfs) or "disk" (the same init on an
               ext4 disk as root=/dev/vda, no initramfs); the agent always boots from its
               initramfs with the image as a disk, so init=agent takes root=initramfs only
    init       "test" (guest/init/init.c: READY line, then reboot) or "agent" (a
               Sandbox: the guest agent as PID 1, a busybox image, one `true` exec)
    engine     "auto", "kvm" or "qemu" (resolved when the run starts)
    process    "in": ours boots in this process (Machine(); Python's start-up is not timed)
               or "fresh": `python -m vmm boot` in a new process per run, timed from its
               spawn like a baseline (interpreter start-up and imports included); fresh
               takes init=test, root=initramfs and no hugepages (what `boot` offers)
               or "launcher": the compiled `vmm-boot --timeline` in a new process per run,
               timed from its spawn (launcher.py); it is the C core alone: kvm engine
               only, no virtio devices and no agent, so init=test, root=initramfs and
               no hugepages; engine=auto must resolve to kvm (checked when the run starts)
"""
from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

from ..errors import ConfigError

SWEEPABLE = ("engine", "kernel", "kernel_config", "memory", "cpus", "hugepages", "root", "init",
             "process")
ROOTS = ("initramfs", "disk")
INITS = ("test", "agent")
ENGINES = ("auto", "kvm", "qemu")
PROCESSES = ("in", "fresh", "launcher")
BASELINE_NAMES = ("qemu", "firecracker", "cloud-hypervisor")


@dataclass(frozen=True)
class BootConfig:
    """One configuration of a sweep."""
    engine: str = "auto"
    kernel: Optional[str] = None
    kernel_config: Optional[str] = None
    memory: int = 128
    cpus: int = 1
    hugepages: bool = False
    root: str = "initramfs"
    init: str = "test"
    process: str = "in"
    label: str = "default"

    def params(self) -> dict:
        d = asdict(self)
        d.pop("label")
        return d


@dataclass
class BenchSettings:
    runs: int = 20
    warmup: int = 1
    engine: Sequence[str] = ("auto",)
    kernel: Sequence[Optional[str]] = (None,)
    kernel_config: Sequence[Optional[str]] = (None,)
    memory: Sequence[int] = (128,)
    cpus: Sequence[int] = (1,)
    hugepages: Sequence[bool] = (False,)
    root: Sequence[str] = ("initramfs",)
    init: Sequence[str] = ("test",)
    process: Sequence[str] = ("in",)
    baselines: Sequence[str] = BASELINE_NAMES
    initcalls: int = 0          # 0: off; N: the slowest N initcalls (initcall_debug)
    timeout: float = 120.0      # per boot
    cmdline: str = ""
    seed: int = 13              # bootstrap resampling
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """Refuse what cannot run, with a message that names the value."""
        if not isinstance(self.runs, int) or self.runs < 1:
            raise ConfigError(f"runs must be at least 1, got {self.runs}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"warmup must be 0 or more, got {self.warmup}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout:g}")
        if self.initcalls < 0:
            raise ConfigError(f"initcalls must be 0 (off) or more, got {self.initcalls}")
        for name in SWEEPABLE:
            if not list(getattr(self, name)):
                raise ConfigError(f"{name}: no values given")
        _check_choices("engine", self.engine, ENGINES)
        _check_choices("root", self.root, ROOTS)
        _check_choices("init", self.init, INITS)
        _check_choices("process", self.process, PROCESSES)
        for unknown in set(self.baselines) - set(BASELINE_NAMES) - {"none"}:
            raise ConfigError(f"unknown baseline {unknown!r} (choose from "
                              f"{', '.join(BASELINE_NAMES)}, or none)")
        for m in self.memory:
            if not isinstance(m, int) or m < 16:
                raise ConfigError(f"memory must be at least 16 MiB, got {m}")
        for c in self.cpus:
            if not isinstance(c, int) or not 1 <= c <= 255:
                raise ConfigError(f"cpus must be between 1 and 255, got {c}")
        for k in self.kernel:
            if k is not None and not os.path.isfile(k):
                raise ConfigError(f"kernel not found: {k}")
        if any(k is not None for k in self.kernel) and any(
                c is not None for c in self.kernel_config):
            raise ConfigError("kernel_config builds the project's kernel with a fragment; "
                              "it cannot apply to a kernel given as a vmlinux path")
        for value in self.kernel_config:
            if value is not None:
                fragments_of(value)  # each file readable and a well-formed fragment
        if "agent" in self.init and "disk" in self.root:
            raise ConfigError("root=disk needs init=test: the agent always boots from its "
                              "initramfs with the image as a disk")
        if "agent" in self.init and True in self.hugepages:
            raise ConfigError("hugepages needs init=test: Sandbox.create() has no huge-page "
                              "option")
        if "fresh" in self.process and ("agent" in self.init or "disk" in self.root
                                        or True in self.hugepages):
            raise ConfigError("process=fresh runs `python -m vmm boot`, which takes "
                              "init=test, root=initramfs and no hugepages")
        if "launcher" in self.process:
            if "agent" in self.init or "disk" in self.root or True in self.hugepages:
                raise ConfigError("process=launcher runs the compiled vmm-boot, which has no "
                                  "virtio devices, no agent and no huge-page option: it takes "
                                  "init=test, root=initramfs and no hugepages")
            if "qemu" in self.engine:
                raise ConfigError("process=launcher boots on the kvm engine only (vmm-boot "
                                  "is the C core); engine qemu cannot run it")
            from .launcher import launcher_path
            launcher_path()  # built with the C core; if not, say how
        if True in self.hugepages and _free_hugepages() == 0:
            raise ConfigError("hugepages: no free 2 MiB huge pages on this host "
                              "(/proc/sys/vm/nr_hugepages is 0)")

    def configs(self) -> List[BootConfig]:
        swept = [n for n in SWEEPABLE if len(list(getattr(self, n))) > 1]
        out = []
        for combo in itertools.product(*(list(getattr(self, n)) for n in SWEEPABLE)):
            values = dict(zip(SWEEPABLE, combo))
            label = " ".join(f"{n}={_show_named(n, values[n])}" for n in swept) or "default"
            out.append(BootConfig(label=label, **values))
        return out

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in asdict(self).items()}
        records = fragment_records(self.kernel_config)
        if records:  # only with fragments: a plain run's settings stay what they were
            d["kernel_config_fragments"] = records
        return d


def fragments_of(value: str) -> list:
    """The fragment paths of one kernel_config value ("a.config+b.config"); ConfigError
    for a missing or malformed one."""
    from ..guest.config_fragment import FragmentError
    from ..guest.kernel import read_fragments
    paths = value.split("+")
    if any(not p.strip() for p in paths):
        raise ConfigError(f"kernel_config {value!r}: an empty fragment name")
    try:
        read_fragments(paths)
    except FragmentError as e:
        raise ConfigError(str(e)) from None
    return paths


def fragment_records(values) -> dict:
    """{value: [{"path", "sha256", "text"}, ...]} for every kernel_config value, so a
    result says what its kernels were built from even after the files change."""
    import hashlib
    from ..guest.kernel import read_fragments
    out = {}
    for value in values:
        if value is None:
            continue
        out[value] = [{"path": f.name, "sha256": hashlib.sha256(f.text).hexdigest(),
                       "text": f.text.decode()} for f in read_fragments(fragments_of(value))]
    return out


def _show(value) -> str:
    if value is None:
        return "project"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _show_named(name: str, value) -> str:
    if name == "kernel_config" and value is not None:
        # the names only: the full paths are in each sample's params
        return "+".join(os.path.basename(p) for p in value.split("+"))
    return _show(value)


def _check_choices(name: str, values, allowed) -> None:
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{name} {v!r} is not one of {', '.join(allowed)}")


def _free_hugepages() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
