"""`python -m vmm bench boot` and `bench compare` as the user runs them: a fresh process.

Bad input is one `error:` line and exit 2 before anything boots. The slow test boots the
project's kernel for real on the qemu engine, with the plain-QEMU baseline alternated.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

from vmm.engines import qemu_binary
from vmm.research import results

from support.bench_results import fake_result
from test_research_cli import ROOT, assert_bad_input, vmm_cli


@pytest.mark.parametrize("args, fragments", [
    (["bench"], ["required: bench_command"]),
    (["bench", "boot", "-n", "0"], ["runs must be at least 1, got 0"]),
    (["bench", "boot", "--warmup", "-2"], ["warmup must be 0 or more"]),
    (["bench", "boot", "--memory", "128,lots"], ["--memory: 'lots' is not an integer"]),
    (["bench", "boot", "--memory", "128,,256"], ["--memory: empty value"]),
    (["bench", "boot", "--engine", "xen"], ["--engine: 'xen' is not one of auto, kvm, qemu"]),
    (["bench", "boot", "--root", "nfs"], ["--root: 'nfs' is not one of initramfs, disk"]),
    (["bench", "boot", "--hugepages", "maybe"], ["--hugepages: 'maybe' is not one of on, off"]),
    (["bench", "boot", "--baseline", "vmware"], ["--baseline: 'vmware' is not one of"]),
    (["bench", "boot", "--kernel", "/no/such/vmlinux"], ["kernel not found: /no/such/vmlinux"]),
    (["bench", "boot", "--init", "agent", "--root", "disk"], ["root=disk needs init=test"]),
    (["bench", "boot", "--timeout", "0"], ["timeout must be positive"]),
    (["bench", "boot", "--process", "fresh", "--root", "disk"], ["process=fresh runs"]),
    (["bench", "boot", "--process", "spawn"], ["--process: 'spawn' is not one of in, fresh, launcher"]),
    (["bench", "compare", "/no/a.json", "/no/b.json"], ["result file not found: /no/a.json"]),
    (["bench", "compare", "only-one.json"], ["the following arguments are required: B.json"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments):
    assert_bad_input(vmm_cli(*args), *fragments)


def test_bad_out_dir_creates_nothing(tmp_path):
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert_bad_input(vmm_cli("bench", "boot", "--out", not_dir, "--baseline", "none"),
                     f"--out {not_dir} exists and is not a directory")
    # settings are checked before --out is made
    assert_bad_input(vmm_cli("bench", "boot", "-n", "0", "--out", tmp_path / "new"), "runs must")
    assert not (tmp_path / "new").exists()


def test_compare_from_files_without_click_or_matplotlib(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    results.write_json(fake_result(seed=1), a)
    results.write_json(fake_result(scale=1.5, seed=2), b)
    code = ("import sys; from vmm.cli import research; rc = research.main(sys.argv[1:]); "
            "assert 'click' not in sys.modules and 'matplotlib' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('click', 'matplotlib'))]; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "bench", "compare", str(a), str(b)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "qemu-tcg" in x and " total " in x)
    ratio = float(line.split()[5])
    assert 1.4 < ratio < 1.6 and line.endswith("*"), line
    # --json: the same rows, machine-readable; the same seed gives the same numbers
    j1 = json.loads(vmm_cli("bench", "compare", a, b, "--json", "--seed", "3").stdout)
    j2 = json.loads(vmm_cli("bench", "compare", a, b, "--json", "--seed", "3").stdout)
    assert j1 == j2 and {"ratio", "ci_low", "ci_high"} <= set(j1[0])


def test_compare_draws_side_by_side(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    results.write_json(fake_result(seed=1), a)
    results.write_json(fake_result(scale=1.2, seed=2), b)
    r = vmm_cli("bench", "compare", a, b, "--out", tmp_path / "pics")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "pics")) == ["compare.png", "compare.svg"]


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(qemu_binary() is None, reason="no qemu-system-x86_64")
def test_real_bench_boot_on_qemu_with_the_qemu_baseline(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    r = vmm_cli("bench", "boot", "-n", 3, "--warmup", 1, "--engine", "qemu", "--baseline", "qemu",
                "--initcalls", 5, "--out", out, "--note", "test run, machine under load",
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    # progress on stderr: the skipped baselines said why, rounds alternate
    assert "firecracker" not in r.stderr or "skipped" in r.stderr
    progress = [x for x in r.stderr.splitlines() if x.startswith("[default] ")]
    assert [p.split()[-4] for p in progress[:4]] == ["vmm-qemu:", "qemu-tcg:", "qemu-tcg:",
                                                     "vmm-qemu:"], progress
    assert "[default] vmm-qemu: 3 runs counted" in r.stdout, r.stdout
    assert "[default] qemu-tcg: 3 runs counted" in r.stdout, r.stdout
    assert "vmm-qemu / qemu-tcg total:" in r.stdout and "slowest initcalls" in r.stdout

    result = results.read_json(out / "boot.json")
    m = result["machine"]
    assert m["qemu"].startswith("QEMU emulator version") and m["kvm_backing"] and m["cpu_model"]
    assert result["note"] == "test run, machine under load"
    ours = [s for s in result["samples"] if s["system"] == "vmm-qemu"]
    base = [s for s in result["samples"] if s["system"] == "qemu-tcg"]
    assert len(ours) == len(base) == 4 and [s["warmup"] for s in ours] == [True] + [False] * 3
    for s in ours + base:
        assert s["ok"], s
        assert 0 < s["guest_ms"]["guest_kernel_to_init"] < s["phases_ms"]["total"]
        assert s["initcalls"] and s["initcalls_seen"] > 20
    for s in ours:
        marks = s["marks_ms"]
        assert list(marks) == ["request", "vm_created", "boot_timer", "ready_line"], marks
        assert sum(v for k, v in s["phases_ms"].items() if k != "total") == \
            pytest.approx(s["phases_ms"]["total"])

    with open(out / "boot.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r_["system"] for r_ in rows} == {"vmm-qemu", "qemu-tcg"}
    assert len(results.samples_from_csv((out / "boot.csv").read_text())) == 8
    for name in ("waterfall_default", "distribution"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(qemu_binary() is None, reason="no qemu-system-x86_64")
def test_agent_and_disk_root_through_the_api():
    """The other two sweep values that change what boots: the agent to a first exec, and
    the test init from an ext4 root disk (ours over vhost-user, plain QEMU's own virtio-blk)."""
    from vmm.research import BenchSettings, run_bench

    from support.sandbox_image import have_busybox
    inits = ["test", "agent"] if have_busybox() else ["test"]
    lines = []
    result = run_bench(BenchSettings(runs=1, warmup=0, engine=["qemu"], init=inits,
                                     baselines=["qemu"], timeout=120),
                       progress=lines.append)
    assert len(result["samples"]) == 2 * len(inits) and all(s["ok"] for s in result["samples"])
    assert len([x for x in lines if x.startswith("[init=")]) == 2 * len(inits)  # one per run
    agent = [s for s in result["samples"]
             if s["params"]["init"] == "agent" and s["system"] == "vmm-qemu"]
    for s in agent:
        assert list(s["marks_ms"]) == ["request", "vm_created", "boot_timer", "agent_ready",
                                       "ready_received", "first_exec"], s["marks_ms"]
        assert s["guest_ms"]["guest_init_to_ready"] > 0
    result = run_bench(BenchSettings(runs=1, warmup=0, engine=["qemu"], root=["disk"],
                                     baselines=["qemu"], timeout=120))
    by_system = {s["system"]: s for s in result["samples"]}
    assert set(by_system) == {"vmm-qemu", "qemu-tcg"}
    for s in by_system.values():
        assert s["ok"] and s["params"]["root"] == "disk", s
        assert s["guest_ms"]["guest_kernel_to_init"] > 0
