"""A fuzzer that dies of a signal in round AT (for tests/test_fuzz_run.py): what a crashing
fuzzer's failure message must still say is the round to replay.

Usage: python -m support.fuzz_crash SECONDS ROUNDS SEED AT"""
import os
import sys

from support.fuzz_run import Budget


def main(budget, seed, at):
    while budget.more():
        if budget.rounds == at:
            os.abort()   # no statistics line: only the progress file knows the round
    print(f"rounds={budget.rounds}")


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), int(sys.argv[4]))
