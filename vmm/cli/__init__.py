"""The command lines: `msb` (msb.py, click: one module per command group) and
`python -m vmm` (research.py, argparse: the researcher's boot and host tools). Both end in
one error boundary (boundary.py) with one exit-status rule.

Nothing is imported here, so `python -m vmm` never pays for click and `msb --version`
never pays for the images or the engines.
"""


def main(argv=None):
    """`msb`. Kept here for console scripts installed before msb moved to vmm.cli.msb."""
    from .msb import main as msb_main
    msb_main(argv)
