"""Guest agent round trips, with the agent as a host process on a Unix socket (no VM):
the protocol's and the agent's own share of an exec, apart from any transport.

    pytest benchmarks/bench_agent.py --benchmark-only -s

- exec(["true"]) through the agent against subprocess.run(["true"]) from this process (what
  a fork+exec costs here without any agent): both spawn `true` and wait for it, the two
  alternating round by round over 200 rounds after 20 warm-up rounds each.
- a PING round trip: median and p99 over 200 runs (no baseline: nothing else speaks it).
- 50 MiB of stdout from `cat` through the agent: throughput, and every byte arrived.
"""
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support.agent_harness import AgentProcess, needs_musl  # noqa: E402

pytestmark = needs_musl

RUNS = 200
WARMUP = 20
STDOUT_MIB = 50


@pytest.fixture(scope="module")
def agent():
    with tempfile.TemporaryDirectory() as d:
        proc = AgentProcess(Path(d))
        try:
            c = proc.client()
            c.wait_ready(10)
            yield Path(d), c
            c.close()
        finally:
            proc.stop()


def _timed(fn):
    def run():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


def _exec_true(client):
    r = client.exec(["true"])
    assert r.code == 0, r


def _host_true():
    assert subprocess.run(["true"]).returncode == 0


def test_agent_exec_vs_host_spawn(benchmark, alternate, agent):
    _, c = agent
    alternate(benchmark, "agent exec(['true']) (no VM)",
              ours=("exec via the agent", _timed(lambda: _exec_true(c))),
              baseline=("subprocess.run(['true'])", _timed(_host_true)),
              rounds=RUNS, warmup=WARMUP)


def test_agent_ping(benchmark, agent, capsys):
    _, c = agent
    for _ in range(WARMUP):
        c.ping()
    samples = []
    benchmark.pedantic(lambda: samples.append(_timed(c.ping)()), rounds=RUNS, iterations=1)
    samples.sort()
    med, p99 = statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    benchmark.extra_info.update(median_us=round(med * 1e6, 1), p99_us=round(p99 * 1e6, 1),
                                runs=len(samples))
    with capsys.disabled():
        print(f"\nagent PING: median {med * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us ({RUNS} runs)")


def test_agent_stdout_throughput(benchmark, agent, capsys):
    d, c = agent
    big = d / "big"
    big.write_bytes(os.urandom(STDOUT_MIB << 20))
    got = []
    benchmark.pedantic(lambda: got.append(c.exec(["cat", str(big)])), rounds=1, iterations=1)
    r, = got
    assert r.code == 0 and r.stdout == big.read_bytes()
    s = benchmark.stats.stats.median
    benchmark.extra_info.update(mib=STDOUT_MIB, mib_per_s=round(STDOUT_MIB / s, 1))
    with capsys.disabled():
        print(f"\nagent stdout {STDOUT_MIB} MiB: {s:.2f} s ({STDOUT_MIB / s:.0f} MiB/s)")
