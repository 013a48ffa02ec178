"""The `bench boot` loop: every configuration, ours and each baseline, round by round.

Within a round each system of each configuration boots once; the order alternates (ours
first on even rounds, last on odd ones, and a sweep's configurations in reverse order on
odd rounds), so a drift in the host's load or caches lands on every side instead of on
whichever ran later: two kernels swept in one run are compared round by round too. The first `warmup` rounds are recorded, marked, and left out of
every statistic (they pay for cold page caches and first-use builds).

A round that fails at run time (a guest that never printed READY, a baseline that
crashed) is kept as a failed sample with its reason; a bad request (ConfigError,
EngineUnavailable) ends the whole run at once.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from ..engines import choose as choose_engine
from ..errors import ConfigError, EngineUnavailable, VmmError
from . import baselines as baselines_mod
from . import guest_files, launcher, ours
from .machine_info import load_average, machine_info
from .results import new_result
from .samples import failed_sample
from .settings import BenchSettings


def run_bench(settings: BenchSettings, *, workdir: Optional[str] = None,
              progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the benchmark; returns a result (results.py). progress gets one line per event."""
    settings.check()
    _check_launcher_engines(settings)
    say = progress or (lambda line: None)
    info = machine_info()
    found, skipped = baselines_mod.available(settings.baselines, info["kvm_backing"])
    for line in skipped:
        say(line)
    if info["kvm_backing"] == "pvm" and "kvm" in settings.engine:
        say("warning: /dev/kvm here is PVM (a software hypervisor): Linux guests do not reach "
            "init on the kvm engine here (docs/platform.md); expect failed rounds")
    result = new_result(info, settings.to_dict(), skipped=skipped)
    owned = None
    if workdir is None:
        owned = tempfile.TemporaryDirectory(prefix="vmm-bench-")
        workdir = owned.name
    try:
        initrd = guest_files.test_initramfs()
        # Every configuration's files first (a fragment's kernel may take minutes to build),
        # then the rounds, each visiting every configuration.
        prepared = [(cfg, _systems(settings, cfg, found, initrd, Path(workdir)))
                    for cfg in settings.configs()]
        _run_rounds(settings, prepared, result, say)
    finally:
        if owned is not None:
            owned.cleanup()
    result["finished"] = time.time()
    result["machine"]["load_average_at_end"] = load_average()
    return result


def _check_launcher_engines(settings: BenchSettings) -> None:
    """process=launcher with engine=auto: refuse before anything boots if auto is not kvm
    here (settings.check() refused engine=qemu already)."""
    if "launcher" not in settings.process:
        return
    for asked in settings.engine:
        chosen = choose_engine(asked)
        if chosen.name != "kvm":
            raise ConfigError(f"process=launcher boots on the kvm engine only (vmm-boot is "
                              f"the C core); engine {asked} chose {chosen.name} here "
                              f"({chosen.reason}): ask for engine kvm")


def _systems(settings, cfg, found, initrd, workdir) -> list:
    """[(name, run)] of one configuration: ours first, then each baseline found."""
    kernel = guest_files.kernel_for(cfg.kernel, cfg.kernel_config)
    root_disk = guest_files.init_root_disk(workdir) if cfg.root == "disk" else None
    image = guest_files.agent_image(workdir) if cfg.init == "agent" else None
    launch = baselines_mod.Launch(kernel=kernel, initrd=initrd, root_disk=root_disk,
                                  root_cmdline=guest_files.DISK_ROOT_CMDLINE,
                                  memory=cfg.memory, cpus=cfg.cpus, hugepages=cfg.hugepages,
                                  cmdline=settings.cmdline, workdir=str(workdir))
    # "auto" resolved once here (EngineUnavailable ends the run: a bad request), so that
    # every sample of ours, a failed one too, carries the engine that ran it.
    engine = choose_engine(cfg.engine).name
    ours_name = f"vmm-{engine}" + {"fresh": "-fresh", "launcher": "-launcher"}.get(cfg.process, "")

    def run_ours():
        if cfg.process == "launcher":
            return launcher.boot_launcher(cfg, initrd=initrd, cmdline=settings.cmdline,
                                          initcalls=settings.initcalls, timeout=settings.timeout)
        if cfg.process == "fresh":
            return ours.boot_fresh_process(cfg, engine, initrd=initrd,
                                           cmdline=settings.cmdline, initcalls=settings.initcalls,
                                           timeout=settings.timeout, workdir=str(workdir))
        if cfg.init == "agent":
            return ours.boot_agent(cfg, engine, image=image, cmdline=settings.cmdline,
                                   initcalls=settings.initcalls, timeout=settings.timeout)
        return ours.boot_test_init(cfg, engine, initrd=initrd, root_disk=root_disk,
                                   cmdline=settings.cmdline, initcalls=settings.initcalls,
                                   timeout=settings.timeout)

    return [(ours_name, run_ours)] + [
        (b.name, lambda b=b: b.run(launch, initcalls=settings.initcalls,
                                   timeout=settings.timeout)) for b in found]


def _run_rounds(settings, prepared, result, say) -> None:
    total = settings.warmup + settings.runs
    for rnd in range(total):
        for cfg, systems in (prepared if rnd % 2 == 0 else prepared[::-1]):
            for name, run in (systems if rnd % 2 == 0 else systems[::-1]):
                sample = _guarded(name, run)
                sample.update(config=cfg.label, round=rnd, warmup=rnd < settings.warmup,
                              params=cfg.params())
                result["samples"].append(sample)
                say(_progress_line(cfg.label, rnd, total, settings.warmup, sample))


def _guarded(name: str, run) -> dict:
    try:
        return run()
    except (ConfigError, EngineUnavailable):
        raise  # the request itself is wrong: every round would fail the same way
    except VmmError as e:
        return failed_sample(name, str(e))


def _progress_line(label, rnd, total, warmup, s) -> str:
    what = "warm-up" if rnd < warmup else f"round {rnd - warmup + 1}/{total - warmup}"
    got = (f"total {s['phases_ms'].get('total', float('nan')):.1f} ms" if s["ok"]
           else f"FAILED: {s['error']}")
    return f"[{label}] {what} {s['system']}: {got}"

