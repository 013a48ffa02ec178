"""Run any pytest selection, or any commands, inside L1 and show their output: for
benchmarks, the boot-latency lab, and for looking into a nested failure by hand.

    PYTHONPATH=tests python3 -m support.nested benchmarks/bench_kvm_boot.py --benchmark-only -s
    PYTHONPATH=tests python3 -m support.nested tests/test_sandbox_vm.py -k hostname --env VMM_TEST_ENGINE=kvm
    PYTHONPATH=tests python3 -m support.nested --out results \
        --run 'python -m vmm bench boot --engine kvm -n 5 --out /nested-out/test' \
        --run 'python -m vmm bench boot --engine kvm -n 5 --init agent --out /nested-out/agent'

With --run (repeatable: all run in one L1 boot, in order) each is a command line, where
`python` is this interpreter; whatever it writes under /nested-out inside L1 comes back
in --out (default: a temporary directory, removed afterwards). The exit code is the
inner pytest's, or the first failing command's (2 if L1 could not start).
"""
import os
import shlex
import sys
import tempfile
from pathlib import Path

from .l1_kernel import L1Unavailable
from .runner import prepare_host_caches, run_commands_in_l1, run_in_l1


def main(argv):
    env, args, commands, out_dir = {}, [], [], None
    it = iter(argv)
    for a in it:
        if a == "--env":
            k, _, v = next(it, "").partition("=")
            env[k] = v
        elif a == "--run":
            commands.append(shlex.split(next(it, "")))
        elif a == "--out":
            out_dir = next(it, None)
        else:
            args.append(a)
    if commands and args:
        print("error: give either pytest arguments or --run commands, not both",
              file=sys.stderr)
        return 2
    # The same bound as the tier's (tests/test_nested.py): long benchmarks need more.
    timeout = float(os.environ.get("VMM_NESTED_TIMEOUT", "1800"))
    prepare_host_caches()
    with tempfile.TemporaryDirectory(prefix="vmm-nested-") as tmp:
        out = Path(out_dir or tmp)
        try:
            if commands:
                done = run_commands_in_l1(commands, out, env=env, timeout=timeout)
            else:
                run = run_in_l1([(args, env)], out, timeout=timeout)
        except L1Unavailable as e:
            print(f"error: no L1 here: {e}", file=sys.stderr)
            return 2
        if commands:
            print(done.log or done.console)
            print(f"nested: L1 ran for {done.seconds:.0f} s; exit codes {done.returncodes}; "
                  f"files in {out if out_dir else '(discarded: no --out)'}", file=sys.stderr)
            return next((1 if rc is None else rc for rc in done.returncodes if rc != 0), 0)
        print(run.pytest_log or run.console)
        print(f"nested: L1 ran for {run.seconds:.0f} s", file=sys.stderr)
        rc = run.returncodes[0]
        return 1 if rc is None else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
