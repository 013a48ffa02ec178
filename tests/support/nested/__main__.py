"""Run any pytest selection inside L1 and show its output: for benchmarks and for looking
into a nested failure by hand.

    PYTHONPATH=tests python3 -m support.nested benchmarks/bench_kvm_boot.py --benchmark-only -s
    PYTHONPATH=tests python3 -m support.nested tests/test_sandbox_vm.py -k hostname --env VMM_TEST_ENGINE=kvm

The exit code is the inner pytest's (2 if L1 could not start).
"""
import sys
import tempfile
from pathlib import Path

from .l1_kernel import L1Unavailable
from .runner import prepare_host_caches, run_in_l1


def main(argv):
    env, args = {}, []
    it = iter(argv)
    for a in it:
        if a == "--env":
            k, _, v = next(it, "").partition("=")
            env[k] = v
        else:
            args.append(a)
    prepare_host_caches()
    with tempfile.TemporaryDirectory(prefix="vmm-nested-") as out:
        try:
            run = run_in_l1([(args, env)], Path(out))
        except L1Unavailable as e:
            print(f"error: no L1 here: {e}", file=sys.stderr)
            return 2
        print(run.pytest_log or run.console)
        print(f"nested: L1 ran for {run.seconds:.0f} s", file=sys.stderr)
        rc = run.returncodes[0]
        return 1 if rc is None else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
