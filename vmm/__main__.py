"""`python -m vmm`: see vmm/cli/research.py."""
import os
import sys

from .cli.research import main

if __name__ == "__main__":
    rc = main()
    # Everything is closed by now (Machine is a context manager inside main). Skipping the
    # interpreter's finalization saves ~10 ms of every run, which the boot benchmarks count;
    # flush first, since os._exit does not.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # e.g. `python -m vmm info | head -1`
        pass
    os._exit(rc if isinstance(rc, int) else 1)
