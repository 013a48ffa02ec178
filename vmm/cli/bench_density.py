"""`python -m vmm bench density`: many sandboxes at once (vmm/research/density.py) at the
command line. add_parser() registers it under the `bench` group; run() is what the group
calls for it. Bad values are ConfigErrors raised before anything starts (exit 2); a run in
which not every sandbox started exits 1 after its report.
"""
from __future__ import annotations

import json
import sys

from . import boundary


def add_parser(bench_sub) -> None:
    """`density` under `python -m vmm bench`."""
    d = bench_sub.add_parser("density", help="start N sandboxes (sequentially and at once): "
                                             "starts per second, host memory per idle sandbox")
    d.add_argument("--count", type=int, default=10, metavar="N", help="sandboxes (default 10)")
    d.add_argument("--engine", default="auto", choices=["auto", "kvm", "qemu"])
    d.add_argument("--memory", type=int, default=256, metavar="MIB",
                   help="guest RAM of each (default 256)")
    d.add_argument("--mode", default="both", choices=["both", "sequential", "concurrent"])
    d.add_argument("--settle", type=float, default=3.0, metavar="SECONDS",
                   help="idle time before memory is read (default 3)")
    d.add_argument("--boot-timeout", type=float, default=120.0, metavar="SECONDS")
    d.add_argument("--image", metavar="DISK", help="root disk (default: the busybox default image)")
    d.add_argument("--network", action="store_true", help="NAT (passt) for each sandbox")
    d.add_argument("--cmdline", default="", help="more kernel command line for every guest")
    d.add_argument("--out", metavar="DIR", help="write density.json, .png and .svg here")
    d.add_argument("--json", action="store_true", help="the report as JSON on stdout")


def run(args) -> int:
    from ..research import density

    cfg = density.DensityConfig(
        count=args.count, engine=args.engine, memory_mib=args.memory,
        modes=density.MODES if args.mode == "both" else (args.mode,), settle_s=args.settle,
        boot_timeout=args.boot_timeout, image=args.image, network=args.network,
        cmdline=args.cmdline)
    cfg.check()
    if args.out is not None:
        density.check_out_dir(args.out)
    progress = (lambda line: None) if args.json else \
        (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
    report = density.run_density(cfg, progress)
    print(json.dumps(report, indent=2) if args.json else density.format_report(report))
    if args.out is not None:
        for path in density.write_outputs(report, args.out):
            progress(f"wrote {path}")
    failed = density.failures(report)
    if failed:
        raise boundary.Failure("not every sandbox started: " + "; ".join(failed))
    return 0
