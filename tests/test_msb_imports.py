"""What a short-lived `msb` call loads: every module costs each call its import time, so the
exec path stays lean (benchmarks/bench_msb.py measures the effect). A fresh interpreter
per check, so nothing this test session imported counts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmm.cli.exec_command import fast_form

ROOT = Path(__file__).resolve().parent.parent

# Never on the way to running a command in a sandbox that is up: the VM side, the image
# store, asyncio, and the click-only CLI modules.
EXEC_FORBIDDEN = ("click", "vmm.sandbox.config", "vmm._core", "vmm.machine", "vmm.engines",
                  "vmm.images", "vmm.net", "vmm.sandbox.sandbox", "vmm.cli.msb", "vmm.cli.images",
                  "vmm.cli.sandbox_views", "asyncio", "subprocess", "hashlib", "cffi", "logging",
                  "dataclasses", "inspect")


def _imported(argv, tmp_path):
    """The modules `python -X importtime ARGV...` loaded (whatever its exit status)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MSB_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env,
                         capture_output=True, text=True, timeout=60)
    mods = {line.split("|")[-1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    return mods, out


def _forbidden(mods, names):
    return sorted(m for m in mods if any(m == n or m.startswith(n + ".") for n in names))


def test_exec_path_imports_stay_lean(tmp_path):
    # Everything `msb exec` loads on its way to a running sandbox's agent (connect() needs
    # a live sandbox, so the modules are imported here as exec_in() imports them).
    code = ("from vmm.cli import exec_command; import vmm.sandbox.manager, "
            "vmm.sandbox.command, vmm.cli.sandbox_attach, vmm.agent, vmm.sandbox.logs, "
            "vmm.sandbox.control")
    mods, out = _imported(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "vmm.agent.client" in mods   # the probe saw the imports at all
    assert _forbidden(mods, EXEC_FORBIDDEN) == []


def test_plain_exec_runs_without_click(tmp_path):
    mods, out = _imported(["-m", "vmm.cli", "exec", "nosuch", "--", "true"], tmp_path)
    assert out.returncode == 1
    assert "error: no sandbox named 'nosuch'" in out.stderr
    assert "vmm.sandbox.manager" in mods
    assert _forbidden(mods, EXEC_FORBIDDEN) == []


def test_version_loads_no_command_module(tmp_path):
    mods, out = _imported(["-m", "vmm.cli", "--version"], tmp_path)
    assert out.returncode == 0 and out.stdout.strip().startswith("msb ")
    assert _forbidden(mods, ("vmm.cli.sandboxes", "vmm.cli.images", "vmm.cli.volumes",
                             "vmm.cli.logs", "vmm.sandbox", "vmm.images", "vmm.machine")) == []


@pytest.mark.parametrize("args,form", [
    (["exec", "box", "--", "true"], ("box", ["true"], set())),
    (["exec", "-q", "box", "-t", "--", "ls", "-l", "--", "x"],
     ("box", ["ls", "-l", "--", "x"], {"quiet", "tty"})),
    (["exec", "box", "--", "-q"], ("box", ["-q"], set())),
])
def test_fast_form_takes_the_plain_form(args, form):
    assert fast_form(args) == form


@pytest.mark.parametrize("args", [
    [], ["exec"], ["exec", "box"], ["exec", "box", "true"],     # no `--`: click splits it
    ["exec", "box", "--"],                                      # no command: click's error
    ["exec", "--", "true"], ["exec", "a", "b", "--", "true"],   # not exactly one name
    ["exec", "-e", "A=1", "box", "--", "env"],                  # options the fast path lacks
    ["exec", "-h", "box", "--", "x"], ["exec", "--timeout", "5", "box", "--", "x"],
    ["--debug", "exec", "box", "--", "true"], ["run", "box", "--", "true"],
])
def test_fast_form_leaves_the_rest_to_click(args):
    assert fast_form(args) is None
