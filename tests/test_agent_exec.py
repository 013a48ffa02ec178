"""exec through the guest agent, with the agent running as a host process (no VM)."""
import asyncio
import errno
import hashlib
import os
import resource
import threading
import time

import pytest

from support.agent_harness import (agent, client, needs_musl, process_alive,  # noqa: F401
                                   wait_until)
from vmm.agent import AsyncAgentClient, ExecFailed, OutputTooLarge, Timeout
from vmm.agent import protocol as P
from vmm.agent.process import DEFAULT_MAX_OUTPUT

pytestmark = needs_musl


def test_ready_reports_boot_timestamps(client):
    r = client.ready
    assert r.version == 1 and not r.pid1
    assert 0 < r.agent_start_ns <= r.ready_ns <= r.now_ns
    assert r.max_payload == 1 << 20


def test_echo_hello(client):
    r = client.exec(["echo", "hello"])
    assert (r.code, r.signal, r.stdout, r.stderr) == (0, None, b"hello\n", b"")
    assert r.pid > 0


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_codes(client, code):
    assert client.exec(["sh", "-c", f"exit {code}"]).code == code


def test_signal_killed(client):
    r = client.exec(["sh", "-c", "kill -TERM $$"])
    assert (r.code, r.signal, r.exit_code) == (None, 15, 143)


def test_not_found(client):
    with pytest.raises(ExecFailed) as e:
        client.exec(["no-such-command-xyz"])
    assert (e.value.errno, e.value.kind, e.value.exit_code) == (errno.ENOENT, "not_found", 127)


def test_not_executable(client, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho no\n")
    script.chmod(0o644)
    with pytest.raises(ExecFailed) as e:
        client.exec([str(script)])
    assert (e.value.errno, e.value.kind, e.value.exit_code) == (errno.EACCES, "permission_denied", 126)


def test_exec_format_error_is_126(client, tmp_path):
    """PROTOCOL.md: ENOEXEC -> kind exec_format -> exit code 126 (no shell fallback)."""
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01\x02 not an executable format \xff" * 8)
    garbage.chmod(0o755)
    with pytest.raises(ExecFailed) as e:
        client.exec([str(garbage)])
    assert (e.value.errno, e.value.kind, e.value.exit_code) == (errno.ENOEXEC, "exec_format", 126)


def test_not_a_directory_on_the_path_is_127(client):
    """PROTOCOL.md: ENOTDIR (a file used as a directory) -> not_found -> 127."""
    with pytest.raises(ExecFailed) as e:
        client.exec(["/etc/passwd/x"])
    assert (e.value.errno, e.value.kind, e.value.exit_code) == (errno.ENOTDIR, "not_found", 127)


def test_exec_output_is_capped(client):
    """exec() collects at most max_output bytes: past it the command is killed and
    OutputTooLarge carries exactly the first max_output bytes."""
    marker = "2.7182818"
    cap = 300_000
    t0 = time.monotonic()
    with pytest.raises(OutputTooLarge) as e:
        client.exec(["sh", "-c", f"echo start >&2; yes; sleep {marker}"], max_output=cap,
                    timeout=60)
    assert time.monotonic() - t0 < 30
    assert (e.value.kind, e.value.limit) == ("output_too_large", cap)
    assert len(e.value.stdout) + len(e.value.stderr) == cap
    assert e.value.stderr == b"start\n" and set(e.value.stdout) == set(b"y\n")
    wait_until(lambda: not process_alive(marker), what="the capped command killed")
    # The cap is the documented default, and None lifts it.
    assert DEFAULT_MAX_OUTPUT == 64 << 20
    r = client.exec(["head", "-c", str(cap + 1), "/dev/zero"], max_output=None)
    assert len(r.stdout) == cap + 1
    r = client.exec(["head", "-c", str(cap), "/dev/zero"], max_output=cap)
    assert len(r.stdout) == cap


def test_process_wait_is_capped(client):
    with client.exec_stream(["yes"]) as p:
        with pytest.raises(OutputTooLarge):
            p.wait(30, max_output=100_000)
        assert p.ended


def test_bad_cwd_and_bad_user(client):
    with pytest.raises(ExecFailed) as e:
        client.exec(["true"], cwd="/no/such/dir")
    assert (e.value.kind, e.value.errno) == ("bad_cwd", errno.ENOENT)
    with pytest.raises(ExecFailed) as e:
        client.exec(["true"], user="no-such-user-xyz")
    assert e.value.kind == "bad_user"


def test_stdin_1mib_through_cat(client):
    data = os.urandom(1 << 20)
    r = client.exec(["cat"], stdin=data)
    assert r.code == 0
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_stdin_from_file(client, tmp_path):
    f = tmp_path / "in.bin"
    f.write_bytes(os.urandom(300_000))
    with open(f, "rb") as fh:
        r = client.exec(["sha256sum"], stdin=fh)
    assert r.stdout.split()[0].decode() == hashlib.sha256(f.read_bytes()).hexdigest()


def test_50mib_stdout_without_loss(client, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(50 << 20))
    t0 = time.monotonic()
    r = client.exec(["cat", str(big)], timeout=60)
    elapsed = time.monotonic() - t0
    assert len(r.stdout) == 50 << 20
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(big.read_bytes()).digest()
    print(f"50 MiB stdout in {elapsed:.2f}s ({50 / elapsed:.0f} MiB/s)")


def test_stdout_and_stderr_kept_apart(client):
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"
    r = client.exec(["sh", "-c", script])
    assert r.stdout == b"".join(b"out%d\n" % i for i in range(1, 6))
    assert r.stderr == b"".join(b"err%d\n" % i for i in range(1, 6))


def test_env_and_cwd(client, tmp_path):
    r = client.exec(["sh", "-c", 'echo "$GREETING"; pwd; echo "$PATH"'],
                    env={"GREETING": "hi there"}, cwd=str(tmp_path))
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "hi there"
    assert os.path.realpath(lines[1]) == os.path.realpath(tmp_path)
    assert "/usr/bin" in lines[2]


def test_config_defaults_env_and_workdir(agent, tmp_path):
    c = agent.client()  # CONFIG is agent-wide: run it last in spirit, values unique
    c.wait_ready(5)
    c.configure(env={"SANDBOX_WIDE": "yes"}, workdir=str(tmp_path))
    r = c.exec(["sh", "-c", 'echo "$SANDBOX_WIDE"; pwd'])
    assert r.stdout.decode().split() == ["yes", str(tmp_path)]
    r = c.exec(["sh", "-c", 'echo "$SANDBOX_WIDE"'], env={"SANDBOX_WIDE": "override"})
    assert r.stdout == b"override\n"
    c.configure(workdir="/")
    c.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_user_switch_to_nobody(client):
    r = client.exec(["sh", "-c", "id -u; id -g; echo $HOME"], user="nobody")
    uid, gid, home = r.stdout.decode().split()
    assert int(uid) == 65534 and int(gid) == 65534
    r = client.exec(["id", "-u"], user="1234:1234")
    assert r.stdout == b"1234\n"


def test_rlimits(client):
    r = client.exec(["sh", "-c", "ulimit -n"], rlimits={resource.RLIMIT_NOFILE: (64, 64)})
    assert r.stdout == b"64\n"


def test_pty_tty_and_resize(client):
    r = client.exec(["tty"], tty=True)
    assert r.code == 0 and r.stdout.startswith(b"/dev/pts/")
    assert client.exec(["tty"]).code != 0  # without a tty: "not a tty"
    with client.exec_stream(["sh", "-c", "stty size; read x; stty size"],
                            tty=True, rows=24, cols=80) as p:
        seen = b""
        while b"24 80" not in seen:
            seen += p.next_event(time.monotonic() + 10)[1]
        p.resize(40, 120)
        p.write(b"\n")
        for _, data in p:
            seen += data
    assert b"40 120" in seen and p.result.code == 0


def test_exec_stream_yields_before_exit(client):
    with client.exec_stream(["sh", "-c", "echo first; read x; echo second $x"]) as p:
        stream, data = p.next_event(time.monotonic() + 10)
        assert (stream, data) == ("stdout", b"first\n")
        assert p.result is None  # still running: it waits for our input
        p.write(b"go\n")
        p.close_stdin()
        rest = b"".join(d for _, d in p)
    assert rest == b"second go\n" and p.result.code == 0


def test_backpressure_blocks_the_writer(client):
    # Output nobody consumes must stall the producer, not pile up in the agent.
    p = client.exec_stream(["head", "-c", str(20 << 20), "/dev/zero"])
    # Once a full window has reached us unread, the writer must be stuck far short of
    # its 20 MiB (window + the agent's backlog + one pipe buffer), still running.
    wait_until(lambda: client.queued_bytes() >= P.WINDOW, what="a full window received")
    with open(f"/proc/{p.pid}/io") as f:
        written = int(dict(line.split(": ") for line in f.read().splitlines())["wchar"])
    with open(f"/proc/{p.pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state in ("S", "D") and written < 4 << 20, \
        f"writer state {state}, {written} bytes written: not blocked by the window"
    total = sum(len(d) for _, d in p)
    assert total == 20 << 20 and p.result.code == 0


def test_20_concurrent_execs(client):
    results = {}

    def run(i):
        results[i] = client.exec(["sh", "-c", f"sleep 0.3; echo job{i}"])

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - t0
    assert sorted(results) == list(range(20))
    for i, r in results.items():
        assert r.stdout == f"job{i}\n".encode() and r.code == 0
    assert elapsed < 20 * 0.3 / 2, f"20 x 0.3 s took {elapsed:.1f}s: not concurrent"


def test_timeout_kills_the_process_group(client):
    marker = "31.4159"
    t0 = time.monotonic()
    with pytest.raises(Timeout) as e:
        client.exec(["sh", "-c", f"echo started; sleep {marker}; echo never"], timeout=1)
    assert time.monotonic() - t0 < 5
    assert e.value.stdout == b"started\n"
    wait_until(lambda: not process_alive(marker), timeout=5,
               what="the timed-out command's child killed")


def test_asyncio_flavour(agent):
    async def main():
        c = await AsyncAgentClient.connect(str(agent.sock), port=None)
        await c.wait_ready(5)
        results = await asyncio.gather(*(c.exec(["sh", "-c", f"echo {i}"]) for i in range(8)))
        chunks = [ev async for ev in c.exec_stream(["sh", "-c", "echo a; echo b >&2"])]
        await c.close()
        return results, chunks

    results, chunks = asyncio.run(main())
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]
    assert sorted(chunks) == [("stderr", b"b\n"), ("stdout", b"a\n")]
