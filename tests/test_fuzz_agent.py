"""The agent protocol fuzzed in both directions: the host client against a hostile fake
agent, and the guest agent's frame handling (built natively with ASan/UBSan) against a
hostile host. Seeds and budgets as in tests/support/fuzz_run.py."""
import subprocess
import sys

import pytest

from support import fuzz_run, sanitized_core


def _confinement() -> str | None:
    """Why the native agent cannot be confined here (it runs as this user), or None."""
    r = subprocess.run(["unshare", "-m", "-u", "-n", "-p", "-f", "--mount-proc", "true"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"cannot make namespaces to confine the agent: {r.stderr.strip()}"


@pytest.mark.fuzz
def test_agent_client_against_a_hostile_agent():
    st = fuzz_run.run("agent client fuzz", "fuzz_agent_client")
    assert int(st["rounds"]) >= 1 and int(st["agent_bytes"]) > 0


@pytest.mark.fuzz
def test_guest_agent_against_a_hostile_host(tmp_path):
    """The agent's own C (frame reader, TLV parser, sessions, exec and fs requests) under
    ASan/UBSan, natively on the host, confined to namespaces and a read-only root."""
    why = sanitized_core.available() or _confinement()
    if why:
        pytest.skip(why)
    st = fuzz_run.run("guest agent fuzz", "fuzz_agent_native", tmp_path)
    assert int(st["rounds"]) >= 5 and int(st["frames_received"]) > 0


FLOOD_MIB = 256


@pytest.mark.parametrize("mode", ["live", "timed_out"])
def test_agent_client_memory_stays_bounded_under_a_flood(mode):
    """Issue 12, finding 2: frames the window does not cover (STARTED, 1 MiB each) for a
    session whose owner is not reading, or whose exec() timed out, must not pile up in the
    host process. Run in a child so its RSS is the client's alone."""
    r = subprocess.run([sys.executable, "-m", "support.agent_flood", mode, str(FLOOD_MIB)],
                       capture_output=True, text=True, timeout=120, env=fuzz_run.child_env())
    assert r.returncode == 0, r.stderr[-3000:]
    grew = int(fuzz_run.stats(r.stdout)["grew_mib"])
    assert grew < 64, f"the client kept {grew} MiB of a {FLOOD_MIB} MiB flood ({mode} session)"
