"""Output shapes shared by msb commands: tables on stdout, JSON, sizes and times."""
import json
from datetime import datetime, timezone

import click


def print_table(headers, rows):
    """Left-aligned columns separated by spaces, header first (msb's table shape)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row)]
    for row in [headers] + [list(map(str, r)) for r in rows]:
        click.echo("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def print_json(obj):
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def format_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_time(iso):
    """`2024-01-02T03:04:05Z` -> `2024-01-02 03:04:05` (UTC), '-' when unknown."""
    if not iso:
        return "-"
    try:
        dt = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return iso
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def short_digest(digest):
    if not digest:
        return "-"
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}"
