"""`msb`: the root command group (click). Compatible with microsandbox's msb 0.4.6 names
and flags.

This file holds the global options, the list of command groups (one module each, named in
COMMAND_MODULES, so the tree of commands reads from this file alone) and the entry point,
which runs every command inside the shared error boundary (boundary.py): a usage error
exits 2, a failure 1, each as one `error:` line on stderr, never a traceback.
"""
import logging
import sys

import click

from .._version import __version__
from . import boundary

LOG_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG, "trace": 5}


# Which module adds which top-level commands (its register(root)). A command's module is
# imported only when that command runs, so `msb exec` does not load the image store's CLI,
# the views or the volumes (each costs milliseconds on every short-lived call); `msb -h`
# loads them all.
COMMAND_MODULES = {
    "sandboxes": ("run", "create", "start", "stop", "exec", "remove", "rm"),
    "sandbox_views": ("list", "ls", "status", "ps", "inspect", "metrics"),
    "images": ("pull", "image", "images", "rmi"),
    "logs": ("logs",),
    "volumes": ("volume",),
}


class LazyGroup(click.Group):
    """The root group: commands are added by their module's register() on first lookup."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loaded = set()

    def _load(self, module: str) -> None:
        if module not in self._loaded:
            self._loaded.add(module)
            from importlib import import_module
            import_module(f"{__package__}.{module}").register(self)

    def _load_all(self) -> None:
        for module in COMMAND_MODULES:
            self._load(module)

    def get_command(self, ctx, cmd_name):
        for module, names in COMMAND_MODULES.items():
            if cmd_name in names:
                self._load(module)
                break
        if cmd_name not in self.commands:
            self._load_all()   # a name missing from the table still works, only slower
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        self._load_all()
        return super().list_commands(ctx)


# no_args_is_help off: a bare `msb` is click's own "Missing command." usage error (one line,
# exit 2) on every click version, not the whole help text as an error.
@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             no_args_is_help=False)
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
