"""The command lines: `msb` (msb.py, click: one module per command group) and
`python -m vmm` (research.py, argparse: the researcher's boot and host tools). Both end in
one error boundary (boundary.py) with one exit-status rule.

Nothing is imported here, so `python -m vmm` never pays for click and `msb --version`
never pays for the images or the engines.
"""


def main(argv=None):
    """`msb` (the console script and `python -m vmm.cli`): the plain `msb exec NAME -- CMD`
    runs without click (exec_command.py); everything else is msb.py's click group."""
    import sys
    args = sys.argv[1:] if argv is None else list(argv)
    from .exec_command import fast_form
    form = fast_form(args)
    if form is not None:
        from .exec_command import run_fast
        sys.exit(run_fast(form))
    from .msb import main as msb_main
    msb_main(args)
