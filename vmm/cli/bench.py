"""`python -m vmm bench boot` and `python -m vmm bench compare`: the boot-latency lab
(vmm.research) at the command line. The parser lives with the others in research.py;
this module turns parsed arguments into settings and prints and writes what comes back.

Sweep flags take comma-separated values (`--memory 128,256 --cpus 1,2`): every
combination is a configuration of its own. Pictures need matplotlib; without it the
JSON and CSV are still written and the command fails (exit 1) saying so.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError
from . import bench_density


_KIND_NAMES = {int: "an integer", str: "a string"}


def _list(kind, name, choices=None):
    def parse(text: str):
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise argparse.ArgumentTypeError(f"{name}: empty value in {text!r}")
            if choices is not None and part not in choices:
                raise argparse.ArgumentTypeError(
                    f"{name}: {part!r} is not one of {', '.join(choices)}")
            try:
                values.append(kind(part))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}: {part!r} is not {_KIND_NAMES.get(kind, kind.__name__)}") from None
        return values
    return parse


def _fragments(text: str):
    """--kernel-config: fragment files, "none" for the project's config alone."""
    return [None if v == "none" else v for v in _list(str, "--kernel-config")(text)]


def _on_off(text: str) -> bool:
    return {"on": True, "off": False}[text]


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="the boot-latency lab: many boots, phases, baselines, plots")
    bsub = bench.add_subparsers(dest="bench_command", required=True, parser_class=type(bench))
    boot = bsub.add_parser("boot", help="boot N times (ours and baselines, alternated) and "
                                        "report each phase")
    boot.add_argument("-n", "--runs", type=int, default=20, help="counted runs (default 20)")
    boot.add_argument("--warmup", type=int, default=1,
                      help="rounds run first and left out of every statistic (default 1)")
    boot.add_argument("--engine", type=_list(str, "--engine", ("auto", "kvm", "qemu")),
                      default=["auto"], help="auto, kvm or qemu (comma list sweeps)")
    boot.add_argument("--kernel", type=_list(str, "--kernel"), default=[None],
                      help="vmlinux path(s) (default: the project's guest kernel)")
    boot.add_argument("--kernel-config", type=_fragments, default=[None],
                      metavar="FRAGMENT[,FRAGMENT]",
                      help="build the project's kernel with this config fragment laid over "
                           "its config (through the kernel cache: minutes the first time); "
                           "a comma list sweeps, a+b applies both, none is the project's "
                           "config alone")
    boot.add_argument("--memory", type=_list(int, "--memory"), default=[128], metavar="MIB[,MIB]")
    boot.add_argument("--cpus", type=_list(int, "--cpus"), default=[1], metavar="N[,N]")
    boot.add_argument("--hugepages", type=_list(_on_off, "--hugepages", ("on", "off")),
                      default=[False], metavar="off|on[,...]")
    boot.add_argument("--root", type=_list(str, "--root", ("initramfs", "disk")),
                      default=["initramfs"], help="initramfs or disk (the test init on ext4)")
    boot.add_argument("--init", type=_list(str, "--init", ("test", "agent")), default=["test"],
                      help="test (the test init's READY line) or agent (a Sandbox to first exec)")
    boot.add_argument("--process", type=_list(str, "--process", ("in", "fresh", "launcher")),
                      default=["in"],
                      help="in (Machine() in this process), fresh (`python -m vmm boot` per "
                           "run) or launcher (the compiled vmm-boot per run, kvm engine, "
                           "init=test only); fresh and launcher are timed from their spawn "
                           "like a baseline")
    boot.add_argument("--baseline", type=_list(str, "--baseline",
                                               ("qemu", "firecracker", "cloud-hypervisor", "none")),
                      default=["qemu", "firecracker", "cloud-hypervisor"],
                      help="baselines to run where found (default all; none for ours only)")
    boot.add_argument("--initcalls", type=int, nargs="?", const=10, default=0, metavar="N",
                      help="boot with initcall_debug and report the slowest N (default 10)")
    boot.add_argument("--cmdline", default="", help="extra kernel command line, every system")
    boot.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                      help="per boot (default 120)")
    boot.add_argument("--seed", type=int, default=13, help="bootstrap seed (default 13)")
    boot.add_argument("--note", default="", help="a note stored with the result "
                                                 "(e.g. 'measured under load')")
    boot.add_argument("--out", metavar="DIR", help="write boot.json, boot.csv and the PNG+SVG "
                                                   "pictures here")
    boot.add_argument("--json", action="store_true", help="the whole result as JSON on stdout")
    boot.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    cmp_ = bsub.add_parser("compare", help="B / A per phase with bootstrap confidence intervals")
    cmp_.add_argument("a", metavar="A.json")
    cmp_.add_argument("b", metavar="B.json")
    cmp_.add_argument("--seed", type=int, default=13)
    cmp_.add_argument("--initcalls", action="store_true", help="compare initcalls too")
    cmp_.add_argument("--out", metavar="DIR", help="draw them side by side here (PNG+SVG)")
    cmp_.add_argument("--json", action="store_true", help="the rows as JSON on stdout")
    bench_density.add_parser(bsub)


def run(args) -> int:
    if args.bench_command == "density":
        return bench_density.run(args)
    if args.bench_command == "compare":
        return _compare(args)
    return _boot(args)


def _out_dir(path):
    if path is None:
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--out {path} exists and is not a directory")
    os.makedirs(path, exist_ok=True)
    return path


def _boot(args) -> int:
    from ..research import BenchSettings, render, run_bench, write_csv, write_json

    baselines = [] if "none" in args.baseline else args.baseline
    settings = BenchSettings(runs=args.runs, warmup=args.warmup, engine=args.engine,
                             kernel=args.kernel, kernel_config=args.kernel_config,
                             memory=args.memory, cpus=args.cpus,
                             hugepages=args.hugepages, root=args.root, init=args.init,
                             process=args.process,
                             baselines=baselines, initcalls=args.initcalls,
                             timeout=args.timeout, cmdline=args.cmdline, seed=args.seed)
    settings.check()  # before --out is created: a bad request leaves nothing behind
    out = _out_dir(args.out)
    progress = None if args.quiet else (lambda line: (sys.stderr.write(line + "\n"),
                                                      sys.stderr.flush()))
    result = run_bench(settings, progress=progress)
    result["note"] = args.note
    if args.json:
        import json
        print(json.dumps(result, indent=1))
    else:
        sys.stdout.write(render(result))
    if out:
        write_json(result, os.path.join(out, "boot.json"))
        write_csv(result, os.path.join(out, "boot.csv"))
        from ..research.plots import all_plots
        paths = all_plots(result, out)
        sys.stderr.write(f"wrote boot.json, boot.csv and {len(paths)} pictures to {out}\n")
    counted = [s for s in result["samples"] if not s["warmup"]]
    return 0 if counted and all(s["ok"] for s in counted) else 1


def _short_names(a: str, b: str):
    """Names for a legend: the file names, or with their directories when those match."""
    na, nb = os.path.basename(a), os.path.basename(b)
    if na != nb:
        return na, nb
    return (os.path.join(os.path.basename(os.path.dirname(os.path.abspath(a))), na),
            os.path.join(os.path.basename(os.path.dirname(os.path.abspath(b))), nb))


def _compare(args) -> int:
    from ..research import compare, read_json
    from ..research.compare import differences, render

    a, b = read_json(args.a), read_json(args.b)
    out = _out_dir(args.out)
    rows = compare(a, b, seed=args.seed, initcalls=args.initcalls)
    if args.json:
        import json
        print(json.dumps(rows, indent=1))
    else:
        sys.stdout.write(render(rows, args.a, args.b, args.seed, differences(a, b)))
    if out:
        from ..research.plots import compare_plot
        compare_plot(rows, out, *_short_names(args.a, args.b))
    return 0 if rows else 1
