"""Every command and flag of ../shared/docs/msb-cli.md, checked against the `msb` we ship:
names, short forms, defaults, hidden aliases, exit codes (2 usage, 1 msb's own errors)
and output shapes. The fast tests need no VM (rows are written to the database
directly); the one slow test checks, in real guests, the flags only a guest can show.
"""
import json
import os
import re
import subprocess
import sys

import click
import pytest

from vmm.cli.msb import msb as root
from vmm.home import Home
from vmm.sandbox.config import SandboxConfig
from vmm.sandbox.state import StateDB

# The root group loads a command's module on first lookup: listing them loads them all.
root.list_commands(click.Context(root))

from support.test_engine import engine_marks
from support.sandbox_image import have_busybox

SHARED = {"-n/--name", "-c/--cpus", "-m/--memory", "-v/--volume", "-w/--workdir", "--shell",
          "-e/--env", "--replace", "--entrypoint", "-H/--hostname", "-u/--user", "--pull",
          "-p/--port", "--no-net", "--tmpfs", "--max-duration", "--idle-timeout", "-q/--quiet",
          "--net", "--net-rule"}
FLAGS = {   # msb-cli.md's "Commands" table
    "run": SHARED | {"-d/--detach", "-t/--tty", "--timeout"},
    "create": SHARED,
    "start": {"-q/--quiet"},
    "stop": {"-f/--force", "-t/--timeout", "-q/--quiet"},
    "list": {"--running", "--stopped", "--format", "-q/--quiet"},
    "status": {"-a/--all", "--format", "-q/--quiet"},
    "metrics": {"--format"},
    "remove": {"-f/--force", "-q/--quiet"},
    "exec": {"-e/--env", "-w/--workdir", "-u/--user", "-t/--tty", "--timeout", "-q/--quiet"},
    "logs": {"--tail", "--since", "--until", "-f/--follow", "--timestamps", "--source", "--json"},
    "inspect": {"--format"},
    "pull": {"-f/--force", "-q/--quiet", "--insecure"},
}
ALIASES = {"ls": "list", "ps": "status", "rm": "remove", "images": None, "rmi": None}


def _flags(cmd):
    out = set()
    for p in cmd.params:
        if getattr(p, "opts", None) and p.param_type_name == "option" and "--help" not in p.opts:
            out.add("/".join(sorted(p.opts, key=lambda o: (o.startswith("--"), o))))
    return out


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_every_documented_flag_with_its_short_form(name):
    cmd = root.commands[name]
    assert FLAGS[name] <= _flags(cmd), FLAGS[name] - _flags(cmd)


def test_hidden_aliases():
    for alias, target in ALIASES.items():
        cmd = root.commands[alias]
        assert cmd.hidden, alias
        if target:
            assert cmd.callback is root.commands[target].callback
    assert {"ls", "inspect", "rm"} <= set(root.commands["image"].commands)


def test_defaults():
    run = {p.name: p.default for p in root.commands["run"].params}
    assert (run["cpus"], run["memory"], run["shell"], run["pull"]) == (1, "512", "/bin/sh",
                                                                      "if-missing")
    stop = {p.name: p.default for p in root.commands["stop"].params}
    assert stop["timeout"] == 10.0
    cfg = SandboxConfig.build()
    assert (cfg.cpus, cfg.memory_mib, cfg.shell, cfg.pull, cfg.net_scope) == \
        (1, 512, "/bin/sh", "if-missing", "public")
    assert cfg.guest_hostname("my_box") == "my-box"   # -H default: the name


# --- through the command line, no VM ----------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MSB_UNSET_FOR_TEST", raising=False)
    return Home(tmp_path / "home")


def msb(*args, **env):
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, **env))


@pytest.mark.parametrize("args,fragment", [
    (["run", "-e", "MSB_UNSET_FOR_TEST", "--", "true"], "MSB_UNSET_FOR_TEST is not set"),
    (["exec", "-e", "MSB_UNSET_FOR_TEST", "box", "--", "true"], "MSB_UNSET_FOR_TEST is not set"),
    (["run", "-m", "10"], "below the minimum"),
    (["run", "-m", "lots"], "not a size"),
    (["run", "-c", "0"], "cpus"),
    (["run", "--pull", "sometimes"], "'sometimes'"),
    (["run", "--tmpfs", "rel"], "tmpfs 'rel'"),
    (["run", "--tmpfs", "/t:huge"], "size 'huge'"),
    (["run", "--max-duration", "0"], "--max-duration"),
    (["run", "--idle-timeout", "soon"], "--idle-timeout"),
    (["run", "--timeout", "x", "--", "true"], "--timeout"),
    (["exec", "--timeout", "0", "box", "--", "true"], "--timeout"),
    (["run", "--entrypoint", ""], "--entrypoint is empty"),
    (["run", "-u", "a b"], "USER[:GROUP]"),
    (["run", "-u", "root:"], "USER[:GROUP]"),
    (["exec", "-u", "x y", "box", "--", "true"], "USER[:GROUP]"),
    (["run", "-H", "bad_host!"], "hostname"),
    (["run", "-w", "rel"], "workdir"),
    (["exec", "-w", "rel", "box", "--", "true"], "workdir"),
    (["run", "--shell", "sh"], "shell"),
    (["run", "--no-net", "-p", "1:2"], "contradict"),
    (["run", "-p", "99999:1"], "port"),
    (["run", "-v", "./no-such-src:/app"], "no-such-src does not exist"),
    (["create", "-n", "bad name"], "bad sandbox name"),
    (["stop", "-t", "soon", "x"], "'soon'"),
    (["ls", "--format", "xml"], "'xml'"),
    (["exec"], "Missing argument"),
    (["stop"], "Missing argument"),
    (["logs", "box", "--source", "nope"], "nope"),
])
def test_usage_errors_exit_2_before_anything_boots(home, args, fragment):
    r = msb(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert fragment in r.stderr and r.stdout == ""
    assert not home.sandboxes.exists() or not list(home.sandboxes.iterdir())


@pytest.mark.parametrize("args", [["stop", "nosuch"], ["rm", "nosuch"], ["start", "nosuch"],
                                  ["inspect", "nosuch"], ["exec", "nosuch", "--", "true"],
                                  ["ps", "nosuch"], ["metrics", "nosuch"], ["logs", "nosuch"],
                                  ["run", "--pull", "never", "no-such-image:1"]])
def test_msb_errors_exit_1(home, args):
    r = msb(*args)
    assert r.returncode == 1 and r.stderr.startswith("error: "), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def _insert(home, name, status="created", image="docker.io/library/busybox:test", **cfg):
    with StateDB(home) as db:
        db.insert(name, image, SandboxConfig.build(image=image, **cfg).to_json())
        if status != "created":
            db.update(name, status=status)
            if status == "running":   # "alive": this test process stands in as its supervisor
                assert db.claim(name, os.getpid())
    home.sandbox(name).mkdir(parents=True, exist_ok=True)


def test_empty_listings_say_so_on_stderr(home):
    for args in (["ls"], ["ls", "--running"], ["ps"], ["ps", "-a"], ["metrics"]):
        r = msb(*args)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "No sandboxes found.\n"), args
    for args in (["ls", "--format", "json"], ["ps", "--format", "json"],
                 ["metrics", "--format", "json"]):
        assert json.loads(msb(*args).stdout) == []
    assert msb("ls", "-q").stdout == ""


def test_listing_shapes_and_filters(home):
    _insert(home, "alpha", "running", ports=["4324:4321"], volumes=["data:/data:ro"])
    _insert(home, "beta", "stopped")
    _insert(home, "gamma", "created")
    ls = msb("ls").stdout.splitlines()
    assert re.fullmatch(r"NAME +IMAGE +STATUS +CREATED", ls[0])
    assert [line.split()[:3] for line in ls[1:]] == [
        ["alpha", "docker.io/library/busybox:test", "running"],
        ["beta", "docker.io/library/busybox:test", "stopped"],
        ["gamma", "docker.io/library/busybox:test", "stopped"]]   # never started: stopped
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", ls[1])   # created, UTC
    assert ls[0].index("STATUS") == ls[1].index("running")        # left-aligned columns
    assert msb("ls", "-q").stdout == "alpha\nbeta\ngamma\n"
    assert msb("ls", "-q", "--running").stdout == "alpha\n"
    assert msb("ls", "-q", "--stopped").stdout == "beta\ngamma\n"
    assert msb("ls", "-q", "--running", "--stopped").stdout == "alpha\nbeta\ngamma\n"
    ps = msb("ps").stdout.splitlines()
    assert re.fullmatch(r"NAME +IMAGE +COMMAND +STATUS +PORTS", ps[0])
    assert len(ps) == 2 and ps[1].startswith("alpha ")
    assert ps[1].endswith("running   127.0.0.1:4324->4321/tcp")
    assert msb("ps", "-a", "-q").stdout == "alpha\nbeta\ngamma\n"
    info = json.loads(msb("inspect", "alpha", "--format", "json").stdout)
    assert {"name", "status", "config", "created_at", "updated_at"} <= set(info)
    assert info["config"]["volumes"][0] == {"source": "data", "dest": "/data", "kind": "named",
                                            "read_only": True}
    text = msb("inspect", "alpha").stdout
    assert "Mounts:\n  data -> /data (ro, named volume)\n" in text and "Status:" in text
    r = msb("create", "-n", "beta", "--pull", "never", "no-such-image:1")
    assert r.returncode == 1 and "already exists" in r.stderr   # said before any pull


def test_flags_for_an_existing_sandbox_are_still_checked(home):
    _insert(home, "kept", "stopped")
    r = msb("run", "--name", "kept", "-m", "lots", "--", "true")
    assert r.returncode == 2 and "not a size" in r.stderr   # not "ignored" with a warning


def test_pull_always_pulls_even_a_stored_image(home, tmp_path):
    if not have_busybox():
        pytest.skip("no /bin/busybox (busybox-static)")
    from test_msb_volumes import make_home
    other = make_home(tmp_path / "h2")
    # a reference whose registry is a closed port on loopback: pulling it must fail
    ref = "127.0.0.1:9/busybox:test"
    r = msb("image", "load", "-i", str(tmp_path / "h2" / "image" / "layout"), "-t", ref,
            MSB_HOME=str(other))
    assert r.returncode == 0, r.stderr
    r = msb("create", "-q", "-n", "p", "--pull", "always", ref, MSB_HOME=str(other))
    assert r.returncode == 1 and "127.0.0.1:9" in r.stderr, r.stderr
    assert msb("ls", "-q", MSB_HOME=str(other)).stdout == ""


# --- slow: what only a guest shows --------------------------------------------------------------
def real_guest(fn):
    for mark in (pytest.mark.slow, *engine_marks(),
                 pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)")):
        fn = mark(fn)
    return fn


@real_guest
def test_flags_in_a_guest(kernel_path, tmp_path):
    from test_msb_lifecycle import IMAGE, msb_in
    from test_msb_volumes import make_home
    h = make_home(tmp_path)
    try:
        r = msb_in(h, "run", "--name", "f", "-d", "-q", "-H", "other-host", "-u", "nobody",
                   "-w", "/tmp", "--shell", "/bin/ash", IMAGE)
        assert (r.returncode, r.stdout, r.stderr) == (0, "f\n", ""), r.stderr
        r = msb_in(h, "exec", "f", "--", "sh", "-c", "hostname; id -u; pwd")
        assert r.stdout == "other-host\n65534\n/tmp\n", r.stderr
        # no command, no image CMD, stdin not a terminal: the shell reads it
        r = msb_in(h, "exec", "f", input="echo shell=$0\n")
        assert r.stdout == "shell=/bin/ash\n", r.stderr
        # --entrypoint prefixes the command; --timeout kills it (124)
        r = msb_in(h, "run", "-q", "--pull", "never", "--timeout", "2s", "--entrypoint",
                   "sh -c", IMAGE, "--", "echo via-entrypoint; sleep 30")
        assert (r.returncode, r.stdout) == (124, "via-entrypoint\n"), r.stderr
        assert "did not finish within 2s" in r.stderr
    finally:
        for name in msb_in(h, "ls", "-q").stdout.split():
            msb_in(h, "rm", "-f", name)
