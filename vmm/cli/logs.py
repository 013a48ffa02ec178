"""`msb logs NAME`: what commands in a sandbox printed, from its log files on the host
(vmm/sandbox/logs.py), so it works on a stopped sandbox too.

Output choices (msb 0.4.6 does the same): every entry goes to stdout, stderr output
included, so `msb logs NAME | grep` sees it all in the order it was written; the default
sources are the commands' output (stdout and stderr), `--source system` or `all` adds
msb's own entries (start, stop, the guest console). By default the text is printed as
the command printed it; `--timestamps` puts the entry's time before each line; `--json`
prints the log's lines themselves.
"""
import json
import sys

import click

from . import boundary


@click.command("logs")
@click.argument("name")
@click.option("--tail", "tail", type=click.IntRange(min=0), default=None, metavar="N",
              help="Show only the last N entries.")
@click.option("--since", default=None, metavar="T",
              help="Entries from T on: a UTC time (2026-11-29T10:00:00Z) or a duration ago (10m, 1h).")
@click.option("--until", default=None, metavar="T", help="Entries up to T (as --since).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing entries as they are written.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with its UTC time.")
@click.option("--source", "source", default="output", metavar="LIST", show_default=True,
              help="Comma-separated: stdout, stderr, output (both), system, all.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON lines as stored.")
def logs_cmd(name, tail, since, until, follow, timestamps, source, as_json):
    """Show a sandbox's logs."""
    from ..home import Home
    from ..sandbox.log_reader import LogQueryError, LogReader, parse_sources, parse_time
    try:
        sources = parse_sources(source)
        since_t = parse_time(since) if since is not None else None
        until_t = parse_time(until) if until is not None else None
    except LogQueryError as e:
        raise boundary.UsageError(str(e)) from None
    sandbox_dir = Home().sandbox(name)
    if not sandbox_dir.is_dir():
        raise boundary.Failure(f"no sandbox named {name!r}")
    reader = LogReader(sandbox_dir / "logs", sources, since_t, until_t)
    entries = reader.follow(tail) if follow else reader.entries(tail)
    printer = _Printer(sys.stdout.buffer, timestamps, as_json, flush_each=follow)
    try:
        for entry in entries:
            printer.print(entry)
        printer.finish()
    except BrokenPipeError:
        # `msb logs NAME | head`: the reader went away, which is not an error.
        _silence_stdout()
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how a follow ends: not an error.
        printer.finish()
    return 0


class _Printer:
    def __init__(self, out, timestamps, as_json, flush_each):
        self.out = out
        self.timestamps = timestamps
        self.as_json = as_json
        self.flush_each = flush_each
        self.at_line_start = True

    def print(self, entry):
        if self.as_json:
            text = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        else:
            text = entry["d"]
            # msb's own entries are whole lines; a command's output is printed as it was.
            if entry["s"] == "system" and not text.endswith("\n"):
                text += "\n"
            if self.timestamps:
                text = self._stamped(entry["t"], text)
        self.out.write(text.encode("utf-8", "replace"))
        if self.flush_each:
            self.out.flush()

    def _stamped(self, stamp, text):
        """The stamp before every line that starts in this entry (a line the command
        wrote in pieces keeps the stamp of its first piece)."""
        pieces, i = [], 0
        while i < len(text):
            j = text.find("\n", i)
            end = len(text) if j < 0 else j + 1
            pieces.append(f"{stamp} " if self.at_line_start else "")
            pieces.append(text[i:end])
            self.at_line_start = j >= 0
            i = end
        return "".join(pieces)

    def finish(self):
        self.out.flush()


def _silence_stdout():
    import os
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def register(group):
    group.add_command(logs_cmd)
