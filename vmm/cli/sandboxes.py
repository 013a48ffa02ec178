"""`msb run`, `create`, `start`, `stop`, `exec`, `remove|rm`: the lifecycle of named
sandboxes (vmm/sandbox/manager.py does the work). The read-only views (`ls`, `ps`,
`inspect`, `metrics`) are in sandbox_views.py, the attached terminal in sandbox_attach.py.
"""
import os

import click

from . import boundary

SHARED_OPTIONS = [
    click.option("-n", "--name", default=None, help="Sandbox name (default: msb-XXXXXXXX, "
                 "removed when an unnamed run ends)."),
    click.option("-c", "--cpus", type=int, default=1, show_default=True, help="vCPUs."),
    click.option("-m", "--memory", default="512", help="Memory: 512M, 1G, 1.5G or MiB "
                 "(default 512 MiB)."),
    click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DEST[:ro]",
                 help="Volume: a named volume, or a host directory starting with /, ./ or "
                 "../ (shared over virtio-fs)."),
    click.option("-w", "--workdir", default=None, help="Working directory for commands."),
    click.option("--shell", default="/bin/sh", show_default=True, help="The shell."),
    click.option("-e", "--env", multiple=True, metavar="K=V", help="Environment variable "
                 "(a bare K copies the host's value)."),
    click.option("--replace", is_flag=True, help="Replace a sandbox of the same name."),
    click.option("--entrypoint", default=None, help="Override the image ENTRYPOINT."),
    click.option("-H", "--hostname", default=None, help="Guest hostname (default: the name)."),
    click.option("-u", "--user", default=None, metavar="USER[:GROUP]", help="User to run as."),
    click.option("--pull", type=click.Choice(["always", "if-missing", "never"]),
                 default="if-missing", show_default=True, help="When to pull the image."),
    click.option("-p", "--port", "ports", multiple=True, metavar="HOST:GUEST[/udp|/tcp]",
                 help="Publish a guest port on 127.0.0.1 of the host."),
    click.option("--no-net", is_flag=True, help="No network at all."),
    click.option("--net", "net", default=None,
                 type=click.Choice(["none", "public", "private", "host", "all"]),
                 help="Network scope (default public)."),
    click.option("--net-rule", "net_rules", multiple=True, metavar="allow|deny@CIDR[:PROTO[:PORT]]",
                 help="Egress rule, checked in order before the scope."),
    click.option("--tmpfs", multiple=True, metavar="PATH[:SIZE]", help="Mount a tmpfs."),
    click.option("--max-duration", default=None, metavar="DUR",
                 help="Stop after DUR (30s, 5m, 1h)."),
    click.option("--idle-timeout", default=None, metavar="DUR",
                 help="Stop after DUR without an exec session."),
    click.option("-q", "--quiet", is_flag=True, help="No progress output."),
]
# Options that only shape a new sandbox: given for an existing one, they are ignored.
CREATION_OPTIONS = ("cpus", "memory", "volumes", "workdir", "shell", "env", "entrypoint",
                    "hostname", "user", "ports", "no_net", "net", "net_rules", "tmpfs",
                    "max_duration", "idle_timeout")


def shared_options(fn):
    for opt in reversed(SHARED_OPTIONS):
        fn = opt(fn)
    return fn


class DashDashCommand(click.Command):
    """A command whose arguments after `--` are the guest command, kept apart in
    ctx.meta["command"] (click would mix them into the positionals). With `--`, options
    may follow the name (`msb exec box -e A=1 -- env`); without it, everything after the
    first positional is the command (`msb run alpine ls -l`)."""

    def parse_args(self, ctx, args):
        if "--" in args:
            i = args.index("--")
            ctx.meta["command"], ctx.meta["dashdash"] = list(args[i + 1:]), True
            args = args[:i]
            ctx.allow_interspersed_args = True
        else:
            ctx.meta["command"], ctx.meta["dashdash"] = [], False
        return super().parse_args(ctx, args)


def _split(ctx, positionals):
    """(first positional, the command): `X -- CMD...` or `X CMD...`."""
    positionals = list(positionals)
    first = positionals.pop(0) if positionals else None
    if ctx.meta["dashdash"]:
        if positionals:
            raise click.UsageError(f"unexpected argument {positionals[0]!r} before '--'")
        return first, ctx.meta["command"]
    return first, positionals


def _manager():
    from ..sandbox import manager   # imported on use: `msb --version` stays fast
    return manager


def _config(image, command, o):
    from ..sandbox.config import SandboxConfig
    return SandboxConfig.build(
        image=image, cpus=o["cpus"], memory=o["memory"], env=o["env"], workdir=o["workdir"],
        shell=o["shell"], hostname=o["hostname"], user=o["user"], entrypoint=o["entrypoint"],
        command=command, ports=o["ports"], no_net=o["no_net"], net=o["net"],
        net_rules=o["net_rules"], max_duration=o["max_duration"],
        idle_timeout=o["idle_timeout"], tmpfs=o["tmpfs"], volumes=o["volumes"],
        engine=os.environ.get("MSB_ENGINE", "auto"), pull=o["pull"])


def _warn(text):
    click.echo(f"warning: {text}", err=True)


def _creation_flags_given(ctx):
    from click.core import ParameterSource
    return [k for k in CREATION_OPTIONS
            if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)]


def _ensure(ctx, name, image, command, o):
    """The sandbox `name` exists after this: made from the options, replaced (--replace),
    or reused as it is (with a warning when creation flags were given)."""
    m = _manager()
    cfg = _config(image, command, o)   # checked even when ignored: a bad value is an error
    row = m.find(name)
    if row is not None and o["replace"]:
        m.remove(name, force=True)
        row = None
    if row is None:
        return m.create(name, cfg, quiet=o["quiet"])
    ignored = _creation_flags_given(ctx) + (["IMAGE"] if _other_image(image, row.image) else [])
    if ignored:
        _warn(f"sandbox {name} exists; reusing it, so {', '.join(ignored)} "
              "(creation flags) are ignored (use --replace to recreate it)")
    return row


def _other_image(typed, stored):
    """Whether the IMAGE typed names another image than the sandbox's (`alpine` is
    `docker.io/library/alpine:latest`)."""
    if not typed:
        return False
    from ..images import BadReference, parse_reference
    try:
        return str(parse_reference(typed)) != stored
    except BadReference:
        return True


def _random_name():
    return f"msb-{os.urandom(4).hex()}"   # not `secrets`: it loads hashlib and hmac


@click.command("run", cls=DashDashCommand,
               context_settings={"allow_interspersed_args": False})
@shared_options
@click.option("-d", "--detach", is_flag=True, help="Leave it running; print its name.")
@click.option("-t", "--tty", is_flag=True, help="Attach through a PTY even without a terminal.")
@click.option("--timeout", default=None, metavar="DUR", help="Kill the command after DUR.")
@click.argument("args", nargs=-1, metavar="[IMAGE] [-- CMD...]")
@click.pass_context
def run_cmd(ctx, args, detach, tty, timeout, **o):
    """Create (or reuse) a sandbox, start it and run a command in it."""
    from ..sandbox.config import parse_duration
    image, command = _split(ctx, args)
    timeout = parse_duration(timeout, "--timeout")
    named = o["name"] is not None
    name = o["name"] or _random_name()
    m = _manager()
    row = _ensure(ctx, name, image, command, o)
    try:
        started_here = not m.is_running(row)
        m.start(name, quiet=o["quiet"], run_command=detach)
        if detach:
            click.echo(name)
            return 0
        return _exec_in(name, command, tty=tty or os.isatty(0), timeout=timeout,
                        quiet=o["quiet"])
    finally:
        if not detach:
            if not named:
                m.remove(name, force=True)
            elif started_here:
                m.stop(name)


@click.command("create")
@shared_options
@click.argument("image", required=False)
def create_cmd(image, **o):
    """Create a sandbox and boot it in the background; prints its name."""
    name = o["name"] or _random_name()
    m = _manager()
    if m.find(name) is not None:
        if not o["replace"]:   # said before any pull or volume is made for nothing
            from ..errors import VmmError
            raise VmmError(f"a sandbox named {name!r} already exists (msb start {name} "
                           "starts it; --replace recreates it)")
        m.remove(name, force=True)
    m.create(name, _config(image, (), o), quiet=o["quiet"])
    m.start(name, quiet=o["quiet"])
    click.echo(name)


@click.command("start")
@click.argument("name")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def start_cmd(name, quiet):
    """Start a stopped sandbox (its files are as it left them)."""
    m = _manager()
    if m.is_running(m.get(name)):
        if not quiet:
            click.echo(f"{name} is already running", err=True)
        return 0
    m.start(name, quiet=quiet)


@click.command("stop")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Kill at once (SIGKILL).")
@click.option("-t", "--timeout", type=float, default=10.0, show_default=True,
              help="Seconds of grace before killing.")
@click.option("-q", "--quiet", is_flag=True, help="No output.")
def stop_cmd(names, force, timeout, quiet):
    """Stop running sandboxes (their writable disks are kept)."""
    m = _manager()
    status = 0
    for name in names:   # one failure does not stop the others
        try:
            if not m.stop(name, timeout=timeout, force=force, quiet=quiet) and not quiet:
                click.echo(f"{name} is not running", err=True)
        except Exception as e:
            status = max(status, boundary.report(e))
    return status


@click.command("remove")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Stop running sandboxes first.")
@click.option("-q", "--quiet", is_flag=True, help="No output.")
def remove_cmd(names, force, quiet):
    """Remove sandboxes with their writable disks and logs."""
    m = _manager()
    status = 0
    for name in names:
        try:
            m.remove(name, force=force)
        except Exception as e:
            status = max(status, boundary.report(e))
            continue
        if not quiet:
            click.echo(f"Removed {name}", err=True)
    return status


@click.command("exec", cls=DashDashCommand, context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Environment variable.")
@click.option("-w", "--workdir", default=None, help="Working directory.")
@click.option("-u", "--user", default=None, metavar="USER[:GROUP]", help="User to run as.")
@click.option("-t", "--tty", is_flag=True, help="Attach through a PTY even without a terminal.")
@click.option("--timeout", default=None, metavar="DUR", help="Kill the command after DUR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.argument("args", nargs=-1, required=True, metavar="NAME [-- CMD...]")
@click.pass_context
def exec_cmd(ctx, args, env, workdir, user, tty, timeout, quiet):
    """Run a command in a sandbox (starting it first if it is stopped)."""
    from ..sandbox.config import check_user, parse_duration, parse_env
    from ..sandbox.checks import check_workdir
    name, command = _split(ctx, args)
    check_workdir(workdir)
    check_user(user)
    return _exec_in(name, command, env=parse_env(env), workdir=workdir, user=user,
                    tty=tty or os.isatty(0), timeout=parse_duration(timeout, "--timeout"),
                    quiet=quiet)


def _exec_in(name, command, **kw):
    from .exec_command import exec_in   # shared with the click-free `msb exec` fast path
    return exec_in(name, command, **kw)


def register(root):
    for cmd in (run_cmd, create_cmd, start_cmd, stop_cmd, exec_cmd, remove_cmd):
        root.add_command(cmd)
    root.add_command(_alias(remove_cmd, "rm"))


def _alias(cmd, name):
    return type(cmd)(name, callback=cmd.callback, params=cmd.params, help=cmd.help,
                     hidden=True, context_settings=cmd.context_settings)
