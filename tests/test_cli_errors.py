"""One error boundary for both command lines (vmm/cli/boundary.py): `msb` and
`python -m vmm` exit 2 for usage errors and 1 for runtime errors, each as exactly one
`error: <message>` line on stderr and never a traceback.

Run as real processes, as a user runs them (`python -m vmm.cli` is the `msb` entry point).
"""
import os
import subprocess
import sys

import pytest

from vmm.cli import boundary
from vmm.errors import ConfigError, EngineUnavailable, GuestError, VmmError
from vmm.images.errors import BadReference, ImageNotFound, RegistryError


def run(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})), timeout=60)


def msb(*args, **kw):
    return run("vmm.cli", *args, **kw)


def vmm(*args, **kw):
    return run("vmm", *args, **kw)


def assert_one_error(p, status, *fragments):
    assert p.returncode == status, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert p.stdout == ""


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "home"))


# --- both CLIs, side by side ------------------------------------------------------------------

@pytest.mark.parametrize("cli, args, fragment", [
    (msb, [], "Missing command"),
    (msb, ["image"], "Missing command"),
    (vmm, [], "command"),
    (msb, ["no-such-command"], "no-such-command"),
    (vmm, ["no-such-command"], "no-such-command"),
    (msb, ["image", "ls", "--bogus"], "--bogus"),
    (vmm, ["info", "--bogus"], "--bogus"),
    (msb, ["image", "ls", "--format", "xml"], "'xml'"),
    (vmm, ["boot", "--engine", "xen"], "'xen'"),
    (msb, ["image", "load", "-i", "/no/such/layout"], "/no/such/layout"),
    (vmm, ["boot", "--kernel", "/no/such/vmlinux"], "/no/such/vmlinux"),
    (msb, ["pull", "Not/A Ref"], "invalid image reference"),
])
def test_usage_errors_exit_2(cli, args, fragment):
    assert_one_error(cli(*args), 2, fragment)


def test_runtime_errors_exit_1(tmp_path):
    # An image the store does not have.
    assert_one_error(msb("image", "inspect", "nothere:1"), 1, "no image 'nothere:1'")
    assert_one_error(msb("image", "rm", "nothere:1"), 1, "no image 'nothere:1'")
    # A guest kernel that cannot be found or built: the environment, not the arguments.
    p = vmm("boot", env={"VMM_GUEST_DIR": str(tmp_path / "nowhere"), "VMM_KERNEL": ""})
    assert_one_error(p, 1, "VMM_GUEST_DIR", "nowhere")


# --- the rule itself, in process ----------------------------------------------------------------

@pytest.mark.parametrize("error, status", [
    (boundary.UsageError("bad flag"), 2),
    (ConfigError("memory too small"), 2),
    (BadReference("Not/A Ref"), 2),
    (EngineUnavailable("no /dev/kvm"), 2),
    (ImageNotFound("no image"), 1),
    (RegistryError("refused"), 1),
    (GuestError("triple fault"), 1),
    (VmmError("anything else of ours"), 1),
    (OSError(28, "No space left on device"), 1),
    (boundary.Failure("click could not open it"), 1),
    (ZeroDivisionError("a bug"), 1),
    (KeyboardInterrupt(), 130),
])
def test_exit_status_rule(error, status):
    assert boundary.exit_status(error) == status


def test_a_bug_is_one_line_with_its_type(capsys, monkeypatch):
    monkeypatch.delenv("MSB_TRACEBACK", raising=False)

    def buggy():
        return {}["missing"]

    assert boundary.run(buggy) == 1
    assert capsys.readouterr().err == "error: internal error (KeyError): 'missing'\n"


def test_msb_traceback_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("MSB_TRACEBACK", "1")
    assert boundary.run(lambda: 1 / 0) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: internal error (ZeroDivisionError): "
                                               "division by zero\n")


def test_results_pass_through():
    assert boundary.run(lambda: None) == 0
    assert boundary.run(lambda: 3) == 3
    with pytest.raises(SystemExit):   # --help and --version end the parser this way
        boundary.run(sys.exit, 0)
