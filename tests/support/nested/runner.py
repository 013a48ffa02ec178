"""Run a pytest selection inside an L1 Linux under QEMU TCG, where /dev/kvm is KVM on
emulated AMD SVM, and bring back each test's outcome.

L1 sees the host's root read-only over 9p (with a tmpfs overlay on top, see init.sh), so it
runs this very checkout with the host's Python and packages and the host's guest-kernel
cache; a second, writable 9p share carries the job in and the results out. L1's only NIC
is QEMU's user network with restrict=on: it reaches nothing, inside or outside the host.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .l1_initramfs import l1_initramfs
from .l1_kernel import L1Unavailable, l1_kernel

L1_MEMORY_MIB = 4096
# -smp 1: on two host cores a second TCG vCPU slows L1 down (docs/platform.md).
L1_CPUS = 1
# Where the writable results share is mounted inside L1 (init.sh); it is `out` on the host.
L1_OUT = "/nested-out"
# Environment the inner run inherits from the host run (paths and the project's knobs).
PASSED_ENV = ("PATH", "HOME", "PYTHONPATH", "VMM_CACHE", "VMM_GUEST_DIR", "VMM_KERNEL",
              "VMM_FUZZ_SECONDS", "LANG")


@dataclass
class InnerResult:
    nodeid: str
    outcome: str          # passed | failed | skipped | xfailed | missing
    text: str = ""        # skip reason or the inner failure's traceback
    duration: float = 0.0


@dataclass
class L1Run:
    results: Dict[str, InnerResult]
    returncodes: List[Optional[int]]  # each inner pytest's exit code; None if it never ended
    console: str                  # L1's serial console
    pytest_log: str               # the inner pytest's own output
    seconds: float

    def tail(self, n=40) -> str:
        lines = (self.pytest_log or self.console).splitlines()
        return "\n".join(lines[-n:])


def qemu() -> str:
    path = shutil.which("qemu-system-x86_64")
    if not path:
        raise L1Unavailable("no qemu-system-x86_64 (apt-get install qemu-system-x86)")
    return path


def l1_argv(kernel: Path, initrd: Path, out: Path) -> List[str]:
    return [qemu(), "-accel", "tcg", "-M", "q35", "-cpu", "max",
            "-smp", str(L1_CPUS), "-m", str(L1_MEMORY_MIB),
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={out},mount_tag=nestedout,security_model=none,"
                       "multidevs=remap",
            "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0"]


# One pytest invocation inside L1: its arguments and the environment it adds.
Run = Tuple[Sequence[str], Dict[str, str]]


def job_script(runs: Sequence[Run], cwd: str, env: Dict[str, str]) -> str:
    """A shell script running each pytest invocation in turn; invocation i writes its output
    to pytest.log and its exit code to rc.i."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    lines = ["#!/bin/sh", "# Written by the host's nested runner; run as L1's PID 1 after switch_root.",
             exports.rstrip("\n"), f"cd {shlex.quote(cwd)} || exit 97"]
    for i, (args, run_env) in enumerate(runs):
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                "-p", "support.nested.report", "-rs", *args]
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(run_env.items()))
        lines.append(f"echo '### run {i}: {' '.join(args)}' >> /nested-out/pytest.log")
        lines.append(f"{prefix}{' '.join(shlex.quote(a) for a in argv)} >> /nested-out/pytest.log 2>&1")
        lines.append(f"echo $? > /nested-out/rc.{i}")
    return "\n".join(lines) + "\n"


def prepare_host_caches() -> None:
    """Build the guest kernel, test initramfs and agent on the host first: inside L1 (TCG)
    a build would take many times longer, and L1's writes vanish with it."""
    from vmm.guest import kernel
    kernel.guest_kernel()
    kernel.test_initramfs()
    from vmm.guest.agent import agent_initramfs
    agent_initramfs()


def _inner_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    inner_env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    inner_env.update(env or {})
    inner_env["VMM_NESTED_REPORT"] = f"{L1_OUT}/report.jsonl"
    inner_env["VMM_IN_L1"] = "1"   # tests that check the platform know where they are
    inner_env["PYTHONDONTWRITEBYTECODE"] = "1"   # the host's tree is read-only in L1
    return inner_env


def _checkout() -> str:
    return str(Path(__file__).resolve().parents[3])


def _boot_l1(script: str, out: Path, stale: Sequence[str], timeout: float) -> Tuple[str, float]:
    """Boot L1 with `script` as its job (out/job.sh) and wait for it to power off; returns
    L1's console and the seconds it ran. Raises L1Unavailable when L1 cannot start or has
    no KVM."""
    kernel = l1_kernel()
    initrd = l1_initramfs(kernel)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.sh").write_text(script)
    for name in stale:
        (out / name).unlink(missing_ok=True)
    start = time.monotonic()
    with open(out / "console.log", "wb") as console:
        proc = subprocess.Popen(l1_argv(kernel.vmlinuz, initrd, out), stdin=subprocess.DEVNULL,
                                stdout=console, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    seconds = time.monotonic() - start
    console_text = (out / "console.log").read_text(errors="replace")
    for line in console_text.splitlines():
        if line.startswith(("nested: no-kvm", "nested: no-svm", "nested: no-hostroot",
                            "nested: no-overlay", "nested: no-out")):
            raise L1Unavailable(f"L1 could not run the tests: {line[len('nested: '):]}")
    return console_text, seconds


def _returncodes(out: Path, n: int) -> List[Optional[int]]:
    rcs = []
    for i in range(n):
        rc_file = out / f"rc.{i}"
        rcs.append(int(rc_file.read_text().strip()) if rc_file.exists() else None)
    return rcs


def run_in_l1(runs: Sequence[Run], out: Path, *, env: Optional[Dict[str, str]] = None,
              timeout: float = 1800, cwd: Optional[str] = None) -> L1Run:
    """Boot L1, run each pytest invocation of `runs` in `cwd` (default: this checkout)
    inside it, and return every test's outcome. Raises L1Unavailable when L1 cannot start
    or has no KVM."""
    script = job_script(runs, cwd or _checkout(), _inner_env(env))
    stale = ["report.jsonl", "pytest.log"] + [f"rc.{i}" for i in range(len(runs))]
    console_text, seconds = _boot_l1(script, out, stale, timeout)

    results: Dict[str, InnerResult] = {}
    report = out / "report.jsonl"
    if report.exists():
        for line in report.read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue   # a line cut off by a dying L1
            results[d["nodeid"]] = InnerResult(d["nodeid"], d["outcome"], d.get("text", ""),
                                               d.get("duration", 0.0))
    log = (out / "pytest.log").read_text(errors="replace") if (out / "pytest.log").exists() else ""
    return L1Run(results, _returncodes(out, len(runs)), console_text, log, seconds)


@dataclass
class L1Commands:
    """What a run_commands_in_l1 job left: each command's exit code (None if it never
    ended), their combined output, L1's console, and the host directory L1's files are in."""
    returncodes: List[Optional[int]]
    log: str
    console: str
    out: Path
    seconds: float

    def tail(self, n=40) -> str:
        return "\n".join((self.log or self.console).splitlines()[-n:])


def run_commands_in_l1(commands: Sequence[Sequence[str]], out: Path, *,
                       env: Optional[Dict[str, str]] = None, timeout: float = 1800,
                       cwd: Optional[str] = None) -> L1Commands:
    """Boot L1 and run each command (an argv; "python" means this interpreter) in turn in
    `cwd` (default: this checkout). A command writes what it should bring back under
    L1_OUT (/nested-out inside L1), which is `out` on the host: e.g. `python -m vmm bench
    boot --out /nested-out/boot` leaves its JSON, CSV and pictures in out/boot. Output of
    every command goes to out/commands.log, command i's exit code to out/rc.i."""
    lines = ["#!/bin/sh", "# Written by the host's nested runner; run as L1's PID 1 after switch_root."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(_inner_env(env).items())]
    lines.append(f"cd {shlex.quote(cwd or _checkout())} || exit 97")
    for i, argv in enumerate(commands):
        argv = [sys.executable if a == "python" else a for a in argv]
        shown = " ".join(shlex.quote(a) for a in argv)
        lines.append(f"echo {shlex.quote('### command ' + str(i) + ': ' + shown)} "
                     f">> {L1_OUT}/commands.log")
        lines.append(f"{shown} >> {L1_OUT}/commands.log 2>&1")
        lines.append(f"echo $? > {L1_OUT}/rc.{i}")
    stale = ["commands.log"] + [f"rc.{i}" for i in range(len(commands))]
    console_text, seconds = _boot_l1("\n".join(lines) + "\n", out, stale, timeout)
    log_file = out / "commands.log"
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    return L1Commands(_returncodes(out, len(commands)), log, console_text, out, seconds)


def collect(runs: Sequence[Run]) -> List[str]:
    """The node ids the runs select, collected on the host (same checkout, same environment
    as inside L1), so each becomes one visible test in the host's run."""
    cwd = _checkout()
    ids: List[str] = []
    for args, env in runs:
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                            "--collect-only", "-q", *args], cwd=cwd, capture_output=True,
                           text=True, env=dict(os.environ, **env), timeout=300)
        if r.returncode not in (0, 5):   # 5: nothing selected
            raise RuntimeError(f"collecting the nested selection {list(args)} failed "
                               f"(rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        ids += [line.strip() for line in r.stdout.splitlines()
                if "::" in line and " " not in line.strip() and line.strip() not in ids]
    return ids
