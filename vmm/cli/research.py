"""`python -m vmm`: the researcher's view of the monitor.

    python -m vmm info [--json]
    python -m vmm boot [--kernel K] [--initrd I] [--cmdline C] [--cpus N] [--memory MIB]
                       [--engine kvm|qemu|auto] [--timeout S] [--timeline] [--json]
                       [--timeline-out FILE]
    python -m vmm bench boot [-n N] [--warmup W] [--engine E,..] [--memory M,..] ... [--out DIR]
    python -m vmm bench compare A.json B.json [--out DIR]     (bench.py, vmm.research)
    python -m vmm bench density [--count N] [--mode both|sequential|concurrent] [--out DIR]
                       ...    (vmm/research/density.py)

Errors go through the boundary `msb` uses too (boundary.py): bad input is one `error:`
line on stderr and exit code 2, a failure exit code 1; a guest that does not shut down
cleanly exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .._version import __version__
from ..errors import ConfigError, EngineUnavailable, VmmError
from . import bench, boundary


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors go to the boundary
        raise boundary.UsageError(message)


def _parser():
    p = _Parser(prog="python -m vmm", description="vmm: boot and measure microVMs")
    p.add_argument("-V", "--version", action="version", version=f"vmm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = sub.add_parser("info", help="what this host offers: KVM, engines, guest kernel")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    boot = sub.add_parser("boot", help="boot a kernel, stream its console, report the timeline")
    boot.add_argument("--kernel", help="vmlinux or bzImage (default: the project's guest kernel)")
    boot.add_argument("--initrd", help="initramfs (default: the project's test initramfs "
                                       "when --kernel is not given)")
    boot.add_argument("--cmdline", default="", help="extra kernel command line")
    boot.add_argument("--cpus", type=int, default=1)
    boot.add_argument("--memory", type=int, default=128, metavar="MIB")
    boot.add_argument("--engine", default="auto", choices=["auto", "kvm", "qemu"])
    boot.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                      help="stop the guest after this long (default 120)")
    boot.add_argument("--timeline", action="store_true", help="print the boot timeline")
    boot.add_argument("--json", action="store_true",
                      help="one JSON object on stdout (console included) instead of text")
    boot.add_argument("--timeline-out", metavar="FILE",
                      help="when the guest ends, write its timeline (CLOCK_MONOTONIC ns) and "
                           "exit counts to FILE as JSON (what `bench boot --process fresh` reads)")
    bench.add_parsers(sub)
    return p


def main(argv=None) -> int:
    """Run `python -m vmm ARGV`; returns the exit status (errors already printed)."""
    return boundary.run(_run, argv)


def _run(argv):
    args = _parser().parse_args(argv)
    if args.command == "info":
        return _info(args)
    if args.command == "bench":
        return bench.run(args)
    return _boot(args)


# --- info ---------------------------------------------------------------------------------

def host_info() -> dict:
    from .. import engines
    from ..guest import kernel

    info = {"version": __version__, "kvm": _kvm_info()}
    info["kvm"]["backing"] = engines.kvm_backing()
    try:
        choice = engines.choose("auto")
        info["auto_engine"] = {"engine": choice.name, "reason": choice.reason}
    except EngineUnavailable as e:
        info["auto_engine"] = {"engine": None, "reason": str(e)}
    info["qemu"] = engines.qemu_binary()
    info["guest_kernel"] = kernel.kernel_info()
    return info


def _kvm_info() -> dict:
    if not os.path.exists("/dev/kvm"):
        return {"present": False}
    try:
        from ..engines.kvm import probe
        return {"present": True, **probe()}
    except VmmError as e:
        return {"present": True, "error": str(e)}


def _info(args):
    info = host_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    kvm = info["kvm"]
    print(f"vmm {info['version']}")
    if not kvm.get("present"):
        print("kvm:          /dev/kvm missing")
    elif "error" in kvm:
        print(f"kvm:          {kvm['error']}")
    else:
        print(f"kvm:          API {kvm.get('api_version')}, {kvm['backing']}"
              + (" (software hypervisor: Linux guests run on the qemu engine)"
                 if kvm["backing"] == "pvm" else ""))
        caps = kvm.get("capabilities", {})
        if caps:
            print("capabilities: " + ", ".join(f"{k}={v}" for k, v in caps.items()))
    ae = info["auto_engine"]
    print(f"auto engine:  {ae['engine'] or 'none'} ({ae['reason']})")
    print(f"qemu:         {info['qemu'] or 'not installed'}")
    gk = info["guest_kernel"]
    print(f"guest kernel: {gk.get('path') or 'not built'}"
          + (f" (Linux {gk['release']})" if gk.get("release") else "")
          + ("" if gk.get("built") else " - built on first `python -m vmm boot`"))
    return 0


# --- boot ---------------------------------------------------------------------------------

PHASES = ["process_start", "machine_created", "vm_created", "kernel_loaded",
          "first_vcpu_entry", "first_console", "boot_timer", "exit"]


def _boot(args):
    from ..machine import Machine

    kernel_path, initrd = args.kernel, args.initrd
    if kernel_path is None:
        from ..guest import kernel  # only here: it imports the build machinery

        kernel_path = kernel.guest_kernel()
        if initrd is None:
            initrd = kernel.test_initramfs()
    for what, path in (("kernel", kernel_path), ("initrd", initrd)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{what} not found: {path}")

    out = sys.stdout.buffer
    stream = None if args.json else (lambda data: (out.write(data), out.flush()))
    m = Machine(kernel_path, initrd=initrd, cmdline=args.cmdline, cpus=args.cpus,
                memory_mib=args.memory, engine=args.engine, console=stream)
    if not args.json:
        sys.stderr.write(f"engine: {m.engine} ({m.engine_choice.reason})\n")
    with m:
        m.start()
        status = m.wait(args.timeout)
        timed_out = status is None
        status = m.stop() if timed_out else status
        timeline, stats = m.timeline, m.exit_stats
        stats_at_boot_timer = m.inspect().exit_stats_at_boot_timer
    if timed_out:
        status.message = f"timed out after {args.timeout:g} s"
    if args.timeline_out:
        with open(args.timeline_out, "w") as f:
            json.dump({"engine": m.engine, "timeline_ns": timeline, "exit_stats": stats,
                       "exit_stats_at_boot_timer": stats_at_boot_timer,
                       "status": status.kind}, f)

    if args.json:
        print(json.dumps({
            "engine": m.engine, "engine_reason": m.engine_choice.reason,
            "kernel": os.fspath(kernel_path), "initrd": os.fspath(initrd) if initrd else None,
            "status": {"kind": status.kind, "message": status.message, "timed_out": timed_out},
            "timeline_ns": timeline, "timeline_ms": _relative_ms(timeline),
            "exit_stats": stats,
            "console": m.console.decode("utf-8", "replace"),
        }, indent=2))
    else:
        if args.timeline:
            _print_timeline(timeline)
            _print_stats(stats)
        sys.stderr.write(f"exit: {status.kind}" + (f": {status.message}" if status.message else "")
                         + "\n")
    return 0 if status.kind == "shutdown" else 1


def _relative_ms(timeline: dict) -> dict:
    base = timeline.get("process_start") or timeline.get("machine_created")
    return {k: round((v - base) / 1e6, 3) for k, v in timeline.items()}


def _print_timeline(timeline: dict):
    rel = _relative_ms(timeline)
    # In time order: the engines' phases need not come in PHASES order (a Linux guest
    # writes to its console before its init marks the boot timer).
    known = {p: i for i, p in enumerate(PHASES)}
    order = sorted(rel, key=lambda p: (rel[p], known.get(p, len(PHASES))))
    print("\nphase                 ms since start   delta ms")
    prev = None
    for phase in order:
        delta = "" if prev is None else f"{rel[phase] - rel[prev]:10.3f}"
        print(f"{phase:<20} {rel[phase]:15.3f} {delta}".rstrip())
        prev = phase


def _print_stats(stats: dict):
    if not stats:
        print("\nexit stats: none (this engine does not expose exits)")
        return
    print("\nexit reason           count")
    for k, v in sorted(stats.items(), key=lambda kv: -kv[1]):
        print(f"{k:<20} {v:8d}")
