"""A fake engine whose guest floods its console: hundreds of MiB of lines, then a kernel
panic line and a few more, then a reset. It hands console bytes over as the real engines
do (64 KiB reads, the panic watch fed first, on_console from a reader thread), so a Machine
on it shows what a flooding guest costs the host without booting anything.

    python3 tests/support/flood_engine.py KERNEL OUTDIR MIB
runs one flood in a fresh process (so its peak RSS is the flood's alone) and prints JSON:
the Machine's console_stats, its status, the console file sizes and its peak RSS.
"""
import json
import os
import sys
import threading

from vmm.cmdline import KernelCmdline
from vmm.engines import EngineChoice
from vmm.engines.base import Engine, ExitStatus
from vmm.engines.panic_watch import PanicWatch

READ = 65536  # what the engines read from the console at a time
PANIC = b"[   99.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009"
AFTER = b"[   99.1] ---[ end Kernel panic - not syncing ]---\n"


def flood_lines(i: int) -> bytes:
    """One 64 KiB read of the flood: numbered lines (so a test can tell which survived)."""
    line = b"flood %010d " % i + b"x" * 40 + b"\n"
    return (line * (READ // len(line) + 1))[:READ]


class FloodEngine(Engine):
    name = "flood"
    flood_bytes = 256 << 20

    @classmethod
    def kernel_cmdline(cls, spec):
        return KernelCmdline().append(str(spec.cmdline), "your command line")

    def __init__(self, spec):
        super().__init__(spec)
        self._panic = PanicWatch()
        self._thread = None
        self._status = None

    def start(self, on_console):
        self._thread = threading.Thread(target=self._run, args=(on_console,), daemon=True)
        self._thread.start()

    def _deliver(self, on_console, data):
        self._panic.feed(data)
        try:
            on_console(data)
        except Exception:
            pass

    def _run(self, on_console):
        for i in range(self.flood_bytes // READ):
            self._deliver(on_console, flood_lines(i))
        self._deliver(on_console, b"\n" + PANIC + b"\n" + AFTER)
        self._panic.feed(b"", at_eof=True)
        msg = self._panic.message()
        self._status = ExitStatus("error", msg) if msg else ExitStatus("shutdown", "guest reset")

    def wait(self, timeout):
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self._status

    def stop(self):
        pass

    def close(self):
        pass

    def timeline(self):
        return {}

    def inspect(self):
        raise NotImplementedError


class FloodChoice(EngineChoice):
    def engine_class(self):
        return FloodEngine


def flooding_machine(monkeypatch, kernel, **kwargs):
    """A vmm.Machine on the flood engine (vmm.engines.choose patched to pick it)."""
    import vmm
    import vmm.engines
    monkeypatch.setattr(vmm.engines, "choose", lambda engine="auto": FloodChoice("flood", "test"))
    return vmm.Machine(kernel, **kwargs)


def main(kernel, outdir, mib):
    from vmm.console_limits import ConsoleLimits
    import vmm
    import vmm.engines
    vmm.engines.choose = lambda engine="auto": FloodChoice("flood", "test")
    FloodEngine.flood_bytes = int(mib) << 20
    path = os.path.join(outdir, "console.log")
    with vmm.Machine(kernel, console=path, console_limits=ConsoleLimits()) as m:
        m.start()
        status = m.wait(600)
        stats = m.console_stats
        console = m.console
    files = {name: os.path.getsize(os.path.join(outdir, name)) for name in os.listdir(outdir)}
    print(json.dumps({
        "stats": stats, "kind": status.kind, "message": status.message,
        "console_len": len(console), "console_ends_with_panic": console.endswith(AFTER),
        "files": files, "peak_rss_kib": peak_rss_kib(),
    }))


def peak_rss_kib() -> int:
    """This process's peak RSS since its exec (VmHWM). Not ru_maxrss: that also counts
    the RSS of the process this one was forked from (a big pytest) before the exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main(*sys.argv[1:])
