"""`msb volume create|ls|rm` (aliases `list`, `remove`): named volumes, ext4 disks under
MSB_HOME that sandboxes mount with `-v NAME:/path` (vmm/sandbox/volume_store.py)."""
import click

from . import boundary
from .output import format_bytes, format_time, print_json, print_table


def _store():
    # Imported on use: `msb --version` should not pay for it.
    from ..sandbox.volume_store import VolumeStore
    return VolumeStore()


@click.group("volume", no_args_is_help=False)  # bare `msb volume`: one usage line (msb.py)
def volume_group():
    """Manage named volumes."""


@click.command("create")
@click.argument("name")
@click.option("--size", default="4G", show_default=True, metavar="SIZE",
              help="Capacity, like 512M or 4G (the file is sparse: space is used as written).")
def create_cmd(name, size):
    """Create an empty named volume (ext4)."""
    info = _store().create(name, size)
    click.echo(info["name"])


@click.command("ls")
@click.option("--format", "fmt", type=click.Choice(["json"]), default=None, help="Output format.")
@click.option("-q", "--quiet", is_flag=True, help="Show only names.")
def ls_cmd(fmt, quiet):
    """List named volumes."""
    rows = _store().list()
    if fmt == "json":
        print_json(rows)
        return
    if quiet:
        for r in rows:
            click.echo(r["name"])
        return
    if not rows:
        click.echo("No volumes found.", err=True)
        return
    print_table(["NAME", "SIZE", "ON DISK", "IN USE", "CREATED"],
                [[r["name"], format_bytes(r["size_bytes"]), format_bytes(r["disk_bytes"]),
                  r["in_use"] or "-", format_time(r["created_at"])] for r in rows])


@click.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True,
              help="No error for a volume that does not exist (one in use is never removed).")
def rm_cmd(names, force):
    """Remove named volumes and their data."""
    from ..sandbox.volume_store import VolumeError
    from ..errors import ConfigError
    store = _store()
    status = 0
    for name in names:  # one failure does not stop the others; each gets its line
        try:
            removed = store.remove(name, missing_ok=force)
        except (VolumeError, ConfigError) as e:
            status = max(status, boundary.report(e))
            continue
        if removed:
            click.echo(f"Removed {name}", err=True)
    return status


def register(root):
    """Add `volume` (with `list` and `remove` as hidden aliases) to the root group."""
    for cmd in (create_cmd, ls_cmd, rm_cmd):
        volume_group.add_command(cmd)
    volume_group.add_command(_alias(ls_cmd, "list"))
    volume_group.add_command(_alias(rm_cmd, "remove"))
    root.add_command(volume_group)


def _alias(cmd, name):
    return click.Command(name, callback=cmd.callback, params=cmd.params, help=cmd.help, hidden=True)
