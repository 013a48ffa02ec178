"""`msb`: the command line (click). Compatible with microsandbox's msb 0.4.6 names and flags.

Each command group lives in its own module under vmm/commands/ and registers itself on
the root group here; this file only holds the global options and the error boundary:
every vmm error is printed as `error: <message>` on stderr with exit status 1, never as a
traceback (set MSB_TRACEBACK=1 to see one while debugging).
"""
import logging
import os
import sys

import click

from ._version import __version__
from .commands import register_all

LOG_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG, "trace": 5}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="msb", message="%(prog)s %(version)s")
@click.option("--error", "log_level", flag_value="error", help="Show error diagnostics.")
@click.option("--warn", "log_level", flag_value="warn", help="Show warnings and errors.")
@click.option("--info", "log_level", flag_value="info", help="Show informational diagnostics.")
@click.option("--debug", "log_level", flag_value="debug", help="Show debug diagnostics.")
@click.option("--trace", "log_level", flag_value="trace", help="Show everything.")
def cli(log_level):
    """msb: run programs in microVM sandboxes."""
    # Diagnostics go to stderr and are silent unless a level is asked for.
    if log_level:
        logging.basicConfig(level=LOG_LEVELS[log_level], stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger("vmm").addHandler(logging.NullHandler())
        logging.getLogger("vmm").propagate = False


register_all(cli)


def main(argv=None):
    """Console entry point: run `msb` and turn failures into `error: ...` and exit 1."""
    from .errors import VmmError
    try:
        rv = cli.main(args=argv, prog_name="msb", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f"\nTry '{e.ctx.command_path} -h' for help." if e.ctx else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except (VmmError, OSError) as e:
        _fail(e)
    except Exception as e:   # a bug: still one line, with the type to report it by
        _fail(e, internal=True)


def _fail(e, internal=False):
    if os.environ.get("MSB_TRACEBACK"):
        import traceback
        traceback.print_exc()
    message = str(e) or type(e).__name__
    if internal:
        message = f"internal error ({type(e).__name__}): {message}"
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
