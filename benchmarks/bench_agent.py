"""Guest agent round trips, with the agent as a host process on a Unix socket (no VM):
the protocol's and the agent's own share of an exec, apart from any transport.

    pytest benchmarks/bench_agent.py -s          # or: python benchmarks/bench_agent.py

Reports median and p99 over 200 runs of exec(["true"]) and of a PING, and the
throughput of 50 MiB of stdout. Baseline in the same run: subprocess.run(["true"])
on the host (what a fork+exec costs here without any agent).
"""
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from support.agent_harness import AgentProcess, needs_musl  # noqa: E402

RUNS = 200


def _stats(samples):
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.99))]


def _time(fn, runs=RUNS):
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return _stats(out)


def measure() -> dict:
    with tempfile.TemporaryDirectory() as d:
        agent = AgentProcess(Path(d))
        try:
            c = agent.client()
            c.wait_ready(10)
            for _ in range(20):  # warm up
                c.exec(["true"])
            res = {
                "exec_true": _time(lambda: c.exec(["true"])),
                "ping": _time(c.ping),
                "host_subprocess_true": _time(lambda: subprocess.run(["true"])),
            }
            big = Path(d) / "big"
            big.write_bytes(os.urandom(50 << 20))
            t0 = time.perf_counter()
            r = c.exec(["cat", str(big)])
            res["stdout_50mib_s"] = time.perf_counter() - t0
            assert len(r.stdout) == 50 << 20
            c.close()
        finally:
            agent.stop()
    return res


def report(res: dict) -> str:
    lines = []
    for key in ("exec_true", "ping", "host_subprocess_true"):
        med, p99 = res[key]
        lines.append(f"{key:22s} median {med * 1e6:8.0f} us   p99 {p99 * 1e6:8.0f} us   ({RUNS} runs)")
    s = res["stdout_50mib_s"]
    lines.append(f"{'stdout 50 MiB':22s} {s:.2f} s ({50 / s:.0f} MiB/s)")
    ratio = res["exec_true"][0] / res["host_subprocess_true"][0]
    lines.append(f"exec(true) via agent / host subprocess.run(true): {ratio:.2f}")
    return "\n".join(lines)


@needs_musl
def test_bench_agent_round_trip():
    res = measure()
    print("\n" + report(res))
    med, p99 = res["exec_true"]
    assert med > 0 and p99 >= med


if __name__ == "__main__":
    print(report(measure()))
