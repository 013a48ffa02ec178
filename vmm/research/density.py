"""Density: how fast a host starts many sandboxes, and what each idle one costs it.

    report = run_density(DensityConfig(count=30))       # both modes
    print(format_report(report))
    write_outputs(report, "out/")                       # density.json, density.png/.svg

For each mode, sequential (one create() after another) and concurrent (count threads
released together), it starts `count` sandboxes (vmm.Sandbox, the busybox default image,
no network unless asked) and keeps every one of them running until all are ready, then
lets them idle for `settle_s` and reads their host memory:

- starts per second: count / time from the mode's start to the last sandbox ready; per
  core: divided by the CPUs this process may run on.
- memory per idle sandbox, PSS and RSS (proc_memory.py says why PSS): QEMU's (each
  sandbox's qemu-system child), helpers' (passt with --network) and ours (this Python
  process: agent clients, vhost-user device threads, their share of guest RAM), ours
  counted as what the sandboxes added to it (its PSS before the mode, subtracted, is
  reported as `ours_base`). Guest RAM the guest touched is shared memory (a memfd QEMU and
  our devices both map): `guest_ram` is its PSS, `beyond_guest_ram` the rest.

A warm-up sandbox first builds and caches the kernel, the agent initramfs and the image
disk, and is not counted. Everything started is stopped before run_density returns or
raises, on Ctrl-C too: registered sandboxes are stopped, and QEMU/helper children still
booting (a create() cannot be cancelled) are killed so that their create() fails at once.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..errors import ConfigError
from .machine_info import machine_info
from .proc_memory import ProcMemory, children, comm, read_memory

MODES = ("sequential", "concurrent")
MAX_COUNT = 512
MIN_MEMORY_MIB = 64              # the Sandbox's own minimum (vmm.sandbox.config)
QEMU_TARGET_MIB = 60             # issue 13: QEMU + ours per idle sandbox on the qemu engine
STOP_TIMEOUT_S = 10.0
MIB = 1024                       # proc_memory sizes are KiB


@dataclass(frozen=True)
class DensityConfig:
    count: int
    engine: str = "auto"
    memory_mib: int = 256
    modes: tuple = MODES
    settle_s: float = 3.0
    boot_timeout: float = 120.0
    image: Optional[str] = None      # an EROFS/ext4 root disk; None: the default image
    network: bool = False            # NAT through passt for each sandbox
    cmdline: str = ""                # more kernel command line for every guest

    def check(self) -> None:
        """ConfigError (a bad argument: exit 2 at the command line) for values that
        cannot run, before anything starts."""
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_COUNT:
            raise ConfigError(f"--count must be between 1 and {MAX_COUNT}, not {self.count}")
        if self.engine not in ("auto", "kvm", "qemu"):
            raise ConfigError(f"--engine must be auto, kvm or qemu, not {self.engine!r}")
        if not isinstance(self.memory_mib, int) or self.memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(f"--memory must be at least {MIN_MEMORY_MIB} MiB, "
                              f"not {self.memory_mib}")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ConfigError(f"--mode must be one of {', '.join(MODES)} or both")
        if not self.settle_s >= 0:
            raise ConfigError(f"--settle must be 0 or more seconds, not {self.settle_s}")
        if not self.boot_timeout > 0:
            raise ConfigError(f"--boot-timeout must be more than 0 seconds, "
                              f"not {self.boot_timeout}")
        if self.image is not None and not os.path.isfile(self.image):
            raise ConfigError(f"image disk not found: {self.image}")


def cores() -> int:
    """CPUs this process may run on (what a per-core rate divides by)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- the fleet: what one mode started, and its clean-up ------------------------------------

class Fleet:
    """The sandboxes of one mode. Threads add to it; close() stops every one of them and
    kills any child process of ours that appeared since the fleet began (a QEMU or passt
    whose create() is still booting), so nothing it started outlives it."""

    def __init__(self):
        self.sandboxes: List = []
        self.errors: List[str] = []
        self.closing = threading.Event()
        # Creator threads still running. Counted by the threads themselves rather than
        # read from Thread.is_alive(): a Ctrl-C that lands in Thread.join() can leave a
        # running thread marked stopped (CPython's bpo-45274 handling), and clean-up must
        # wait for every create() still in flight.
        self._running = 0
        self.creators_done = threading.Event()
        self.creators_done.set()
        self._lock = threading.Lock()
        self._preexisting = set(children(os.getpid()))

    def add(self, sandbox) -> bool:
        """Keep sandbox; False (the caller stops it) once the fleet is closing."""
        with self._lock:
            if self.closing.is_set():
                return False
            self.sandboxes.append(sandbox)
            return True

    def creator_started(self) -> None:
        with self._lock:
            self._running += 1
            self.creators_done.clear()

    def creator_ended(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self.creators_done.set()

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(f"{type(error).__name__}: {error}".splitlines()[0])

    def new_children(self) -> List[int]:
        return [p for p in children(os.getpid()) if p not in self._preexisting]

    def kill_new_children(self) -> None:
        for pid in self.new_children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        """Stop every sandbox, all at once (a graceful stop each: the agent powers off)."""
        with self._lock:
            todo, self.sandboxes = self.sandboxes, []
        threads = [threading.Thread(target=_stop_quietly, args=(sb,), daemon=True)
                   for sb in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join(STOP_TIMEOUT_S + 5)


def _stop_quietly(sandbox) -> None:
    try:
        sandbox.stop(STOP_TIMEOUT_S)
    except Exception:
        pass  # stop() forces the VM down itself; nothing more to do here


# --- one mode ----------------------------------------------------------------------------

def _create(cfg: DensityConfig, image: str, fleet: Fleet, started: float,
            ready_at: List[float], durations: List[float]) -> None:
    import vmm
    t0 = time.monotonic()
    try:
        sb = vmm.Sandbox.create(image, engine=cfg.engine, memory_mib=cfg.memory_mib,
                                boot_timeout=cfg.boot_timeout, extra_cmdline=cfg.cmdline,
                                **({} if cfg.network else {"network": None}))
    except Exception as e:
        fleet.failed(e)
        return
    now = time.monotonic()
    if not fleet.add(sb):
        _stop_quietly(sb)
        return
    ready_at.append(now - started)
    durations.append(now - t0)


def _start_all(mode: str, cfg: DensityConfig, image: str, fleet: Fleet,
               progress: Callable[[str], None]) -> Dict:
    ready_at: List[float] = []
    durations: List[float] = []
    started = time.monotonic()
    if mode == "sequential":
        for i in range(cfg.count):
            _create(cfg, image, fleet, started, ready_at, durations)
            progress(f"{mode}: {len(ready_at)}/{cfg.count} ready")
    else:
        gate = threading.Event()

        def one():
            try:
                gate.wait()   # `started` is read after the gate: the time it opened
                _create(cfg, image, fleet, started, ready_at, durations)
            finally:
                fleet.creator_ended()
        for i in range(cfg.count):
            fleet.creator_started()
            try:
                threading.Thread(target=one, name=f"density-{i}", daemon=True).start()
            except BaseException:
                fleet.creator_ended()
                raise
        started = time.monotonic()
        gate.set()
        while not fleet.creators_done.wait(0.1):   # in slices: Ctrl-C is seen at once
            pass
        progress(f"{mode}: {len(ready_at)}/{cfg.count} ready")
    ready_at.sort()
    all_ready = ready_at[-1] if len(ready_at) == cfg.count else None
    return {"ready": len(ready_at), "ready_at_s": [round(t, 4) for t in ready_at],
            "create_s": [round(t, 4) for t in sorted(durations)],
            "time_to_all_ready_s": None if all_ready is None else round(all_ready, 4),
            "starts_per_s": None if all_ready is None else round(cfg.count / all_ready, 3),
            "starts_per_s_per_core": None if all_ready is None
            else round(cfg.count / all_ready / cores(), 3),
            "errors": list(fleet.errors)}


def measure_fleet(fleet: Fleet, ours_before: ProcMemory, n: int) -> Dict:
    """Memory now of this process and of the fleet's children (see the module docstring)."""
    ours = read_memory(os.getpid())
    qemu, helpers = [], []
    for pid in fleet.new_children():
        try:
            mem = read_memory(pid)
        except ProcessLookupError:
            continue
        (qemu if comm(pid).startswith("qemu-system") else helpers).append(mem)
    return summarize(ours_before, ours, qemu, helpers, n)


def summarize(ours_before: ProcMemory, ours: ProcMemory, qemu: List[ProcMemory],
              helpers: List[ProcMemory], n: int) -> Dict:
    """Per idle sandbox, MiB: the report's memory section (pure: tested without VMs)."""
    def total(mems):
        out = ProcMemory()
        for m in mems:
            out = out + m
        return out

    def per(kib):
        return round(kib / MIB / n, 2) if n else None

    q, h = total(qemu), total(helpers)
    added = {k: v - ours_before.as_dict()[k] for k, v in ours.as_dict().items()}
    per_sandbox = {
        "qemu": {"pss": per(q.pss), "rss": per(q.rss), "pss_anon": per(q.pss_anon),
                 "pss_file": per(q.pss_file), "pss_guest_ram": per(q.pss_shmem),
                 "rss_beyond_guest_ram": per(q.rss_beyond_shmem),
                 "threads": round(q.threads / len(qemu), 1) if qemu else 0},
        "ours": {"pss": per(added["pss"]), "rss": per(added["rss"]),
                 "pss_guest_ram": per(added["pss_shmem"]),
                 "threads": round(added["threads"] / n, 1) if n else None},
        "helpers": {"pss": per(h.pss), "rss": per(h.rss)},
    }
    total_pss = q.pss + added["pss"] + h.pss
    guest_ram = q.pss_shmem + added["pss_shmem"] + h.pss_shmem
    per_sandbox["total"] = {"pss": per(total_pss), "guest_ram": per(guest_ram),
                            "beyond_guest_ram": per(total_pss - guest_ram)}
    return {"sandboxes": n, "qemu_processes": len(qemu), "helper_processes": len(helpers),
            "per_sandbox_mib": per_sandbox,
            "ours_base_mib": {"pss": round(ours_before.pss / MIB, 2),
                              "rss": round(ours_before.rss / MIB, 2)}}


def run_mode(mode: str, cfg: DensityConfig, image: str,
             progress: Callable[[str], None] = lambda s: None) -> Dict:
    """Start cfg.count sandboxes the mode's way, measure them idle, stop them all."""
    ours_before = read_memory(os.getpid())
    fleet = Fleet()
    try:
        result = _start_all(mode, cfg, image, fleet, progress)
        result["engine"] = fleet.sandboxes[0].machine.engine if fleet.sandboxes else None
        if fleet.sandboxes:
            time.sleep(cfg.settle_s)   # idle: the guests finish boot-time work
            result["memory"] = measure_fleet(fleet, ours_before, len(fleet.sandboxes))
    except BaseException:              # Ctrl-C too: nothing started may outlive the run
        cleanup(fleet, cfg.boot_timeout)
        raise
    cleanup(fleet, cfg.boot_timeout)
    left = fleet.new_children()
    if left:
        raise RuntimeError(f"{len(left)} child processes outlived the {mode} run: {left}")
    return result


def cleanup(fleet: Fleet, boot_timeout: float) -> None:
    """Stop what is ready; kill the children of creates still booting (a create() cannot
    be cancelled, but one whose QEMU died fails at once and releases its own set-up);
    wait for those creates; then wait for every child to be gone."""
    fleet.closing.set()
    fleet.stop_all()
    deadline = time.monotonic() + boot_timeout + STOP_TIMEOUT_S
    while not fleet.creators_done.is_set() and time.monotonic() < deadline:
        fleet.kill_new_children()
        fleet.creators_done.wait(0.05)
    fleet.stop_all()     # nothing should be left; a create that beat `closing` is stopped
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while fleet.new_children() and time.monotonic() < deadline:
        fleet.kill_new_children()
        time.sleep(0.05)


# --- the whole run -----------------------------------------------------------------------

def default_image_disk() -> str:
    """The offline default image's root disk (busybox; built on first use)."""
    from ..sandbox.image_source import resolve_image
    return resolve_image(None, quiet=True).disk


def run_density(cfg: DensityConfig, progress: Callable[[str], None] = lambda s: None) -> Dict:
    """The density report (a JSON-ready dict) for cfg; see the module docstring."""
    cfg.check()
    image = cfg.image or default_image_disk()
    report = {"config": {"count": cfg.count, "engine": cfg.engine, "memory_mib": cfg.memory_mib,
                         "modes": list(cfg.modes), "settle_s": cfg.settle_s,
                         "network": cfg.network, "cmdline": cfg.cmdline, "image": image},
              "host": host_facts(), "modes": {}}
    progress("warm-up: one sandbox (builds and caches kernel, agent and image disk)")
    warm = run_mode("sequential", dataclasses.replace(cfg, count=1, settle_s=0), image)
    if warm["ready"] != 1:
        raise RuntimeError(f"the warm-up sandbox did not start: {warm['errors'][0]}")
    report["warmup_s"] = warm["create_s"][0]
    report["engine"] = warm["engine"]
    if report["engine"] == "qemu":
        report["target_pss_mib"] = QEMU_TARGET_MIB
    for mode in cfg.modes:
        report["host"][f"loadavg_before_{mode}"] = [round(x, 2) for x in os.getloadavg()]
        report["modes"][mode] = run_mode(mode, cfg, image, progress)
    return report


def host_facts() -> Dict:
    """The machine record every lab result carries (machine_info), plus the cores a
    per-core rate divides by and the Python that ran it."""
    facts = machine_info()
    facts.update(cores=cores(), python=platform.python_version())
    return facts


# --- output ------------------------------------------------------------------------------

def format_report(report: Dict) -> str:
    """The human-readable summary: one block per mode."""
    cfg = report["config"]
    lines = [f"density: {cfg['count']} sandboxes, engine {report.get('engine')}, "
             f"{cfg['memory_mib']} MiB guests, {report['host']['cores']} cores "
             f"(warm-up {report.get('warmup_s', 0):.2f} s, not counted)"]
    for mode, r in report["modes"].items():
        lines.append("")
        if r["time_to_all_ready_s"] is None:
            lines.append(f"{mode}: only {r['ready']}/{cfg['count']} ready; first error: "
                         f"{r['errors'][0] if r['errors'] else 'unknown'}")
        else:
            lines.append(f"{mode}: all {r['ready']} ready in {r['time_to_all_ready_s']:.2f} s, "
                         f"{r['starts_per_s']:.2f} starts/s "
                         f"({r['starts_per_s_per_core']:.2f} per core)")
        mem = r.get("memory")
        if not mem:
            continue
        p = mem["per_sandbox_mib"]
        lines.append("  per idle sandbox (MiB)       PSS      RSS")
        lines.append(f"  QEMU                    {_f(p['qemu']['pss'])} {_f(p['qemu']['rss'])}"
                     f"   (RSS beyond guest RAM {_f(p['qemu']['rss_beyond_guest_ram']).strip()})")
        lines.append(f"  ours (added)            {_f(p['ours']['pss'])} {_f(p['ours']['rss'])}")
        if mem["helper_processes"]:
            lines.append(f"  helpers (passt)         {_f(p['helpers']['pss'])} "
                         f"{_f(p['helpers']['rss'])}")
        lines.append(f"  total                   {_f(p['total']['pss'])}"
                     f"            (guest RAM {_f(p['total']['guest_ram']).strip()}, "
                     f"beyond it {_f(p['total']['beyond_guest_ram']).strip()})")
        lines.append(f"  ours before the mode: PSS {mem['ours_base_mib']['pss']:.1f} MiB "
                     f"(the monitor process itself, shared by all sandboxes)")
    return "\n".join(lines)


def _f(v) -> str:
    return f"{v:8.1f}" if isinstance(v, (int, float)) else f"{'-':>8}"


def failures(report: Dict) -> List[str]:
    """One line per mode in which not every sandbox became ready."""
    return [f"{mode}: {r['ready']}/{report['config']['count']} sandboxes ready"
            + (f" ({r['errors'][0]})" if r["errors"] else "")
            for mode, r in report["modes"].items() if r["time_to_all_ready_s"] is None]


def write_outputs(report: Dict, out_dir: str) -> List[str]:
    """density.json, and with matplotlib density.png and density.svg, in out_dir."""
    import json
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "density.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    from .density_plot import plot_density
    return [path] + plot_density(report, out_dir)


def check_out_dir(out_dir: str) -> None:
    """ConfigError before anything starts: --out names a file, or plots cannot be drawn."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir}: exists and is not a directory")
    from .density_plot import require_matplotlib
    require_matplotlib()
