"""`msb list|ls`, `status|ps`, `inspect`, `metrics`: what the sandboxes are, as tables
(left-aligned, header row, on stdout) or JSON. An empty listing says so on stderr."""
import json

import click

from .output import format_bytes, format_time, print_json, print_table

FORMAT = click.option("--format", "fmt", type=click.Choice(["json"]), default=None,
                      help="Output format.")


def _manager():
    from ..sandbox import manager
    return manager


def _status(row):
    """What users see: running | stopped | crashed (a never-started sandbox is stopped)."""
    return "stopped" if row.status == "created" else row.status


def _describe(row):
    return {"name": row.name, "image": row.image, "status": _status(row),
            "config": json.loads(row.config), "created_at": row.created_at,
            "updated_at": row.updated_at}


def _command(row):
    from ..sandbox.command import resolve_command
    from ..sandbox.config import SandboxConfig
    cfg = SandboxConfig.from_json(row.config)
    argv = resolve_command(cfg, json.loads(row.image_config or "{}"), list(cfg.command), False)
    return " ".join(argv)


def _ports(row):
    """The ports a running sandbox published (a host port 0 became a real one), else
    the configured ones."""
    from ..net.ports import parse_ports
    if row.published is not None:
        return ", ".join(json.loads(row.published)) or "-"
    cfg = json.loads(row.config)
    return ", ".join(str(p) for p in parse_ports(cfg.get("ports") or [])) or "-"


def _empty():
    click.echo("No sandboxes found.", err=True)


def _show(rows, fmt, quiet, as_json, headers, as_row):
    """One listing in the shape asked for: JSON objects, names only, or a table (an empty
    listing says so on stderr)."""
    if fmt == "json":
        print_json([as_json(r) for r in rows])
    elif quiet:
        for r in rows:
            click.echo(r.name)
    elif not rows:
        _empty()
    else:
        print_table(headers, [as_row(r) for r in rows])


@click.command("list")
@click.option("--running", is_flag=True, help="Only running sandboxes.")
@click.option("--stopped", is_flag=True, help="Only stopped (or crashed) sandboxes.")
@FORMAT
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
def list_cmd(running, stopped, fmt, quiet):
    """List sandboxes."""
    rows = _manager().list_sandboxes()
    if running != stopped:   # both (or neither): every sandbox
        rows = [r for r in rows if (_status(r) == "running") == running]
    _show(rows, fmt, quiet, _describe, ["NAME", "IMAGE", "STATUS", "CREATED"],
          lambda r: [r.name, r.image, _status(r), format_time(r.created_at)])


@click.command("status")
@click.argument("name", required=False)
@click.option("-a", "--all", "show_all", is_flag=True, help="Stopped sandboxes too.")
@FORMAT
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
def status_cmd(name, show_all, fmt, quiet):
    """Show sandboxes with their command and published ports."""
    m = _manager()
    if name is not None:
        rows = [m.get(name)]
    else:
        rows = [r for r in m.list_sandboxes() if show_all or _status(r) == "running"]
    _show(rows, fmt, quiet, lambda r: dict(_describe(r), command=_command(r), ports=_ports(r)),
          ["NAME", "IMAGE", "COMMAND", "STATUS", "PORTS"],
          lambda r: [r.name, r.image, _command(r), _status(r), _ports(r)])


@click.command("inspect")
@click.argument("name")
@FORMAT
def inspect_cmd(name, fmt):
    """Show a sandbox's configuration and state."""
    row = _manager().get(name)
    info = _describe(row)
    info["mounts"] = _mounts(info["config"])
    if fmt == "json":
        print_json(info)
        return
    cfg = info["config"]
    pairs = [("Name", row.name), ("Image", row.image), ("Status", info["status"]),
             ("Created", format_time(row.created_at)), ("Updated", format_time(row.updated_at)),
             ("Command", _command(row)), ("CPUs", cfg["cpus"]),
             ("Memory", f"{cfg['memory_mib']} MiB"), ("Ports", _ports(row)),
             ("Network", cfg["net_scope"]), ("Workdir", cfg["workdir"] or "-"),
             ("Supervisor", row.pid if row.pid else "-")]
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        click.echo(f"{key + ':':<{width}} {value}")
    mounts = [f"{m['source']} -> {m['destination']} ({m['mode']}, {m['kind']}"
              + (f", size {m['size']})" if m.get("size") else ")") for m in info["mounts"]]
    if mounts:
        click.echo("Mounts:")
        for line in mounts:
            click.echo(f"  {line}")
    if cfg["env"]:
        click.echo("Env:")
        for k, v in cfg["env"].items():
            click.echo(f"  {k}={v}")


MOUNT_KINDS = {"named": "named volume", "host": "host directory"}


def _mounts(cfg):
    """The mounts a sandbox's config asks for, in the order given: source, destination,
    mode (rw|ro) and kind (named volume, host directory, tmpfs)."""
    out = [{"source": v["source"], "destination": v["dest"],
            "mode": "ro" if v["read_only"] else "rw",
            "kind": MOUNT_KINDS.get(v["kind"], v["kind"])} for v in cfg.get("volumes") or ()]
    out += [{"source": "tmpfs", "destination": t["path"], "mode": "rw", "kind": "tmpfs",
             "size": t["size"]} for t in cfg.get("tmpfs") or ()]
    return out


def _uptime(secs):
    h, rest = divmod(int(secs), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@click.command("metrics")
@click.argument("name", required=False)
@FORMAT
def metrics_cmd(name, fmt):
    """Show CPU, memory, disk and network figures of running sandboxes."""
    from ..errors import VmmError
    from ..sandbox.control import request
    m = _manager()
    if name is not None:
        row = m.get(name)
        if not m.is_running(row):
            raise VmmError(f"sandbox {name} is not running")
        rows = [row]
    else:
        rows = [r for r in m.list_sandboxes() if m.is_running(r)]
    samples = [request(r.control_socket, "metrics")["metrics"] for r in rows]
    if fmt == "json":
        print_json(samples[0] if name is not None else samples)
        return
    if not samples:
        return _empty()
    print_table(["NAME", "CPU", "MEMORY", "DISK READ", "DISK WRITE", "NET RX", "NET TX",
                 "UPTIME", "TIMESTAMP"],
                [[s["name"], f"{s['cpu_percent']:.1f}%",
                  f"{format_bytes(s['memory_bytes'])} / {format_bytes(s['memory_limit_bytes'])}",
                  format_bytes(s["disk_read_bytes"]), format_bytes(s["disk_write_bytes"]),
                  format_bytes(s["net_rx_bytes"]), format_bytes(s["net_tx_bytes"]),
                  _uptime(s["uptime_secs"]), format_time(s["timestamp"])] for s in samples])


def register(root):
    for cmd in (list_cmd, status_cmd, inspect_cmd, metrics_cmd):
        root.add_command(cmd)
    for cmd, alias in ((list_cmd, "ls"), (status_cmd, "ps")):
        root.add_command(click.Command(alias, callback=cmd.callback, params=cmd.params,
                                       help=cmd.help, hidden=True))
