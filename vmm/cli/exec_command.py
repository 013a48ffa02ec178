"""What `msb exec` does once its arguments are parsed, without click: exec_in() (connect to
the sandbox's agent, resolve the command, run it attached), which `msb exec` and a
non-detached `msb run` share (sandboxes.py), and the fast path for the plain form

    msb exec [-q] [-t] NAME -- CMD...

which the `msb` entry point (vmm/cli/__init__.py) runs before click is even imported.
Why: `msb exec` is called in loops by scripts, and each call is a fresh interpreter that
pays for every module it loads; click alone is ~10 ms of a ~45 ms call. Any other form
(other options, no `--`, --help, a global option) goes through click as before, so the
fast path only ever handles arguments whose meaning click would give them too. It does
not load logging either (msb.py silences vmm's loggers when no --debug and the like is
given): the one record this path can emit, the log writer's warning that it is dropping
entries (a full disk), then reaches stderr through logging's last-resort handler.
"""
import os

FAST_FLAGS = {"-q": "quiet", "--quiet": "quiet", "-t": "tty", "--tty": "tty"}


def fast_form(args):
    """(name, command, flags) when args are `exec [-q|-t]... NAME [-q|-t]... -- CMD...`,
    else None (click parses them)."""
    if not args or args[0] != "exec" or "--" not in args:
        return None
    i = args.index("--")
    head, command = args[1:i], args[i + 1:]
    names = [a for a in head if a not in FAST_FLAGS]
    if not command or len(names) != 1 or names[0].startswith("-"):
        return None
    return names[0], command, {FAST_FLAGS[a] for a in head if a in FAST_FLAGS}


def run_fast(form) -> int:
    """Run a fast_form() inside the error boundary; the exit status for sys.exit()."""
    from . import boundary
    name, command, flags = form
    return boundary.run(lambda: exec_in(name, command, tty="tty" in flags or os.isatty(0),
                                        quiet="quiet" in flags))


def exec_in(name, command, *, env=None, workdir=None, user=None, tty=False, timeout=None,
            quiet=False) -> int:
    from ..sandbox.command import resolve_command
    from ..sandbox.manager import connect
    from .sandbox_attach import run_attached
    target = connect(name, quiet=quiet)
    try:
        argv = resolve_command(target.config, target.image_config, command, tty)
        return run_attached(target, argv, env=env or None, cwd=workdir,
                            user=user or target.config.user or target.image_config.get("user"),
                            tty=tty, timeout=timeout)
    finally:
        target.close()
