"""`msb`: the root command group (click). Compatible with microsandbox's msb 0.4.6 names
and flags.

This file holds the global options, the list of command groups (one module each, added
here by import, so the tree of commands reads from this file alone) and the entry point,
which runs every command inside the shared error boundary (boundary.py): a usage error
exits 2, a failure 1, each as one `error:` line on stderr, never a traceback.
"""
import logging
import sys

import click

from .._version import __version__
from . import boundary, images, logs, sandboxes, volumes

LOG_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG, "trace": 5}


# no_args_is_help off: a bare `msb` is click's own "Missing command." usage error (one line,
# exit 2) on every click version, not the whole help text as an error.
@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=False)
@click.version_option(__version__, "-V", "--version", prog_name="msb", message="%(prog)s %(version)s")
@click.option("--error", "log_level", flag_value="error", help="Show error diagnostics.")
@click.option("--warn", "log_level", flag_value="warn", help="Show warnings and errors.")
@click.option("--info", "log_level", flag_value="info", help="Show informational diagnostics.")
@click.option("--debug", "log_level", flag_value="debug", help="Show debug diagnostics.")
@click.option("--trace", "log_level", flag_value="trace", help="Show everything.")
def msb(log_level):
    """msb: run programs in microVM sandboxes."""
    # Diagnostics go to stderr and are silent unless a level is asked for.
    if log_level:
        logging.basicConfig(level=LOG_LEVELS[log_level], stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger("vmm").addHandler(logging.NullHandler())
        logging.getLogger("vmm").propagate = False


images.register(msb)
sandboxes.register(msb)
logs.register(msb)
volumes.register(msb)


def main(argv=None):
    """Console entry point: run `msb` inside the error boundary and exit with its status."""
    sys.exit(boundary.run(_invoke, argv))


def _invoke(argv):
    try:
        return msb.main(args=argv, prog_name="msb", standalone_mode=False)
    except click.exceptions.Exit as e:      # --help, --version
        return e.exit_code
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    except click.UsageError as e:
        # One line, with the hint click would have printed on a second one.
        text = e.format_message()
        if e.ctx:
            text = f"{text.rstrip('.')}. Try '{e.ctx.command_path} -h' for help."
        raise boundary.UsageError(text) from None
    except click.ClickException as e:
        raise boundary.Failure(e.format_message()) from None


if __name__ == "__main__":
    main()
