"""`msb pull`, `msb image ls|inspect|rm|load`, and the hidden aliases `images` and `rmi`."""
import os

import click

from . import boundary
from .output import format_bytes, format_time, print_json, print_table, short_digest

FORMAT = click.option("--format", "fmt", type=click.Choice(["json"]), default=None,
                      help="Output format.")


def _images():
    from .. import images  # imported on use: `msb --version` should not pay for it
    return images


def _check_platform(ctx, param, value):
    """A malformed --platform is a usage error, found before any registry is contacted."""
    if value is not None:
        from ..images.manifest import parse_platform
        try:
            parse_platform(value)
        except _images().ImageError as e:
            raise click.BadParameter(str(e), ctx, param) from None
    return value


@click.command("pull")
@click.argument("reference")
@click.option("-f", "--force", is_flag=True, help="Pull again even if the image is cached.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--insecure", is_flag=True, help="Talk plain HTTP to the registry.")
@click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]", callback=_check_platform,
              help="Platform to pull from a multi-platform image (default: the host's).")
def pull_cmd(reference, force, quiet, insecure, platform):
    """Download an image from a registry."""
    images = _images()
    result = images.pull(reference, insecure=insecure, platform=platform, force=force,
                         progress=False if quiet else None)
    if not quiet:
        note = " (already cached)" if result.get("cached") else ""
        click.echo(f"Pulled {result['reference']} {short_digest(result['digest'])}{note}", err=True)
        _warn_about(result)


def _warn_about(info):
    """What the store learnt about an image that the user should know (stderr)."""
    for text in info.get("warnings", ()):
        click.echo(f"warning: {info['reference']}: {text}", err=True)
    if not info.get("usable", True):
        click.echo(f"warning: {info['reference']} is unusable: {info['unusable_reason']}",
                   err=True)


def _status(row):
    if not row["usable"]:
        return f"unusable: {row['unusable_reason']}"
    return f"ok ({len(row['warnings'])} warning{'s' if len(row['warnings']) > 1 else ''})" \
        if row["warnings"] else "ok"


@click.group("image", no_args_is_help=False)  # bare `msb image`: one usage line (msb.py)
def image_group():
    """Manage OCI images."""


@click.command("ls")
@FORMAT
@click.option("-q", "--quiet", is_flag=True, help="Show only references.")
def ls_cmd(fmt, quiet):
    """List cached images."""
    rows = _images().list()
    if fmt == "json":
        print_json(rows)
        return
    if quiet:
        for r in rows:
            click.echo(r["reference"])
        return
    if not rows:
        click.echo("No images found.", err=True)
        return
    print_table(["REFERENCE", "DIGEST", "SIZE", "CREATED", "STATUS"],
                [[r["reference"], short_digest(r["digest"]), format_bytes(r["size_bytes"]),
                  format_time(r["created_at"]), _status(r)] for r in rows])


@click.command("inspect")
@click.argument("reference")
@FORMAT
def inspect_cmd(reference, fmt):
    """Show an image's details and runtime config."""
    info = _images().inspect(reference)
    if fmt == "json":
        print_json(info)
        return
    cfg = info["config"]
    pairs = [("Reference", info["reference"]), ("Digest", info["digest"]),
             ("Platform", "/".join(p for p in (info["os"], info["architecture"], info["variant"]) if p)),
             ("Size", format_bytes(info["size_bytes"])), ("Created", format_time(info["created_at"])),
             ("Image created", info["image_created"] or "-"), ("Source", info["source"]),
             ("Entrypoint", " ".join(cfg["entrypoint"]) if cfg["entrypoint"] else "-"),
             ("Cmd", " ".join(cfg["cmd"]) if cfg["cmd"] else "-"),
             ("WorkingDir", cfg["working_dir"] or "-"), ("User", cfg["user"] or "-"),
             ("StopSignal", cfg["stop_signal"] or "-"),
             ("ExposedPorts", ", ".join(cfg["exposed_ports"]) or "-"),
             ("Root disk", info["root_disk"] or "- (built on first run)"),
             ("Status", _status(info))]
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        click.echo(f"{key + ':':<{width}} {value}")
    for title, items in (("Env", cfg["env"]), ("Labels", [f"{k}={v}" for k, v in cfg["labels"].items()]),
                         ("Warnings", info["warnings"])):
        if items:
            click.echo(f"{title}:")
            for item in items:
                click.echo(f"  {item}")
    click.echo(f"Layers ({len(info['layers'])}):")
    for layer in info["layers"]:
        click.echo(f"  {layer['position'] + 1:<3} {short_digest(layer['digest']):<20} "
                   f"{format_bytes(layer['size_bytes']):>10}  {layer['media_type']}")


@click.command("rm")
@click.argument("references", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove every reference sharing a digest.")
@click.option("-q", "--quiet", is_flag=True, help="No output.")
def rm_cmd(references, force, quiet):
    """Remove cached images (layers no other image uses are freed)."""
    images = _images()
    status = 0
    for ref in references:  # one failure does not stop the others; each gets its line
        try:
            removed = images.remove(ref, force=force)
        except images.ImageError as e:
            status = max(status, boundary.report(e))
            continue
        if not quiet:
            for name in removed:
                click.echo(f"Removed {name}", err=True)
    return status


@click.command("load")
@click.option("-i", "--input", "path", required=True, type=click.Path(exists=True),
              help="An OCI layout directory or a `docker save` tar archive.")
@click.option("-t", "--tag", default=None, help="Reference to store the image under.")
@click.option("-q", "--quiet", is_flag=True, help="No output.")
def load_cmd(path, tag, quiet):
    """Import an image from an OCI layout directory or a docker-save archive."""
    images = _images()
    if os.path.isdir(path):
        info = images.import_layout(path, tag)
    else:
        info = images.import_archive(path, tag)
    if not quiet:
        click.echo(f"Loaded {info['reference']} {short_digest(info['digest'])}", err=True)
        _warn_about(info)


def register(root):
    """Add `pull`, `image` and the hidden aliases `images` and `rmi` to the root group."""
    for cmd in (pull_cmd, ls_cmd, inspect_cmd, rm_cmd, load_cmd):
        image_group.add_command(cmd)
    image_group.add_command(_alias(ls_cmd, "list"))
    image_group.add_command(_alias(rm_cmd, "remove"))
    root.add_command(pull_cmd)
    root.add_command(image_group)
    root.add_command(_alias(ls_cmd, "images"))
    root.add_command(_alias(rm_cmd, "rmi"))


def _alias(cmd, name):
    """The same command under another, hidden name."""
    return click.Command(name, callback=cmd.callback, params=cmd.params, help=cmd.help, hidden=True)
