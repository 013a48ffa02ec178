"""`python -m vmm bench density`, fast tier: /proc parsing, the report's arithmetic and
text, the outputs, the clean-up of what a run started, and argument errors (exit 2, one
`error:` line). The real run is tests/test_research_density_vm.py (slow)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmm.errors import ConfigError
from vmm.research import density
from vmm.research.proc_memory import (ProcMemory, children, memory_from, parent_and_state,
                                      parse_smaps_rollup, parse_status, read_memory)

ROOT = Path(__file__).resolve().parents[1]

# A real smaps_rollup (Linux 6.1) of a qemu-system-x86_64 with a 256 MiB guest.
ROLLUP = """\
55d1c2a3b000-7ffd5d1f8000 ---p 00000000 00:00 0                          [rollup]
Rss:              109660 kB
Pss:               76112 kB
Pss_Dirty:         58004 kB
Pss_Anon:          41716 kB
Pss_File:           3924 kB
Pss_Shmem:         30472 kB
Shared_Clean:      33248 kB
Shared_Dirty:        832 kB
Private_Clean:      3864 kB
Private_Dirty:     71716 kB
Referenced:       109660 kB
Anonymous:         41716 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
"""
STATUS = """\
Name:\tqemu-system-x86
Umask:\t0022
State:\tS (sleeping)
Pid:\t21786
PPid:\t21700
VmRSS:\t  109660 kB
RssAnon:\t   41716 kB
RssFile:\t   36432 kB
RssShmem:\t   31512 kB
Threads:\t3
voluntary_ctxt_switches:\t8
"""


def test_smaps_rollup_parsed_in_kib():
    r = parse_smaps_rollup(ROLLUP)
    assert r == {"Rss": 109660, "Pss": 76112, "Pss_Anon": 41716, "Pss_File": 3924,
                 "Pss_Shmem": 30472, "Anonymous": 41716, "Swap": 0}


def test_smaps_rollup_of_an_older_kernel_has_no_pss_split():
    old = "\n".join(line for line in ROLLUP.splitlines() if not line.startswith("Pss_"))
    r = parse_smaps_rollup(old)
    assert r["Pss"] == 76112 and r["Pss_Anon"] == r["Pss_Shmem"] == 0


@pytest.mark.parametrize("text", ["", "not a rollup\n", "Rss: 5 kB\n",
                                  "Name:\tqemu\nThreads:\t3\n"])
def test_what_is_not_a_smaps_rollup_is_refused(text):
    with pytest.raises(ValueError, match="smaps_rollup"):
        parse_smaps_rollup(text)


def test_a_size_in_another_unit_is_refused_not_misread():
    with pytest.raises(ValueError, match="unit"):
        parse_smaps_rollup(ROLLUP.replace("Pss:               76112 kB", "Pss: 76 MB"))


def test_status_and_rollup_make_one_process_memory():
    assert parse_status(STATUS) == {"VmRSS": 109660, "RssAnon": 41716, "RssFile": 36432,
                                    "RssShmem": 31512, "Threads": 3}
    m = memory_from(ROLLUP, STATUS)
    assert (m.rss, m.pss, m.pss_shmem, m.rss_shmem, m.threads) == (109660, 76112, 30472, 31512, 3)
    assert m.rss_beyond_shmem == 41716 + 36432
    assert m.pss_beyond_shmem == 76112 - 30472
    assert (m + m).pss == 2 * 76112


def test_read_memory_of_this_process_and_of_none():
    me = read_memory(os.getpid())
    assert me.rss > 0 and 0 < me.pss <= me.rss and me.threads >= 1
    with pytest.raises(ProcessLookupError):
        read_memory(2 ** 22 + 12345)   # above pid_max's ceiling: never a process


def test_parent_and_state_read_past_a_command_name_with_parentheses():
    assert parent_and_state("42 (a (b) c) S 7 42 42 0 -1") == (7, "S")


def test_children_lists_live_children_only():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert proc.pid in children(os.getpid())
        proc.kill()
        deadline = time.monotonic() + 5
        while proc.pid in children(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.02)   # a zombie until waited for: not listed
        assert proc.pid not in children(os.getpid())
    finally:
        proc.kill()
        proc.wait()


# --- the report ---------------------------------------------------------------------------

def _mem(**kw):
    return ProcMemory(**{k: v * 1024 for k, v in kw.items()})   # MiB -> KiB


def test_summary_per_sandbox_splits_qemu_ours_helpers_and_guest_ram():
    before = _mem(rss=40, pss=30)
    after = _mem(rss=44, pss=32, pss_shmem=1)          # the two sandboxes added 2 MiB PSS
    qemu = [_mem(rss=100, rss_anon=30, rss_file=36, pss=60, pss_shmem=29)] * 2
    helpers = [_mem(rss=6, pss=3)] * 2
    s = density.summarize(before, after, qemu, helpers, 2)
    p = s["per_sandbox_mib"]
    assert p["qemu"]["pss"] == 60 and p["qemu"]["rss_beyond_guest_ram"] == 66
    assert p["ours"]["pss"] == 1 and p["ours"]["rss"] == 2 and p["helpers"]["pss"] == 3
    assert p["total"] == {"pss": 64.0, "guest_ram": 29.5, "beyond_guest_ram": 34.5}
    assert s["ours_base_mib"] == {"pss": 30, "rss": 40}
    assert (s["qemu_processes"], s["helper_processes"]) == (2, 2)


def _report(ready_seq=3, count=3):
    mem = density.summarize(_mem(rss=40, pss=30), _mem(rss=41, pss=31),
                            [_mem(rss=90, pss=55, pss_shmem=30)] * count, [], count)
    modes = {"sequential": {"ready": ready_seq, "ready_at_s": [1.0, 2.0, 3.0][:ready_seq],
                            "create_s": [1.0] * ready_seq,
                            "time_to_all_ready_s": 3.0 if ready_seq == count else None,
                            "starts_per_s": 1.0 if ready_seq == count else None,
                            "starts_per_s_per_core": 0.5 if ready_seq == count else None,
                            "errors": [] if ready_seq == count else ["BootFailed: no agent"],
                            "engine": "qemu", "memory": mem},
             "concurrent": {"ready": 3, "ready_at_s": [1.5, 1.6, 2.0], "create_s": [1.5, 1.6, 2.0],
                            "time_to_all_ready_s": 2.0, "starts_per_s": 1.5,
                            "starts_per_s_per_core": 0.75, "errors": [], "engine": "qemu",
                            "memory": mem}}
    return {"config": {"count": count, "engine": "auto", "memory_mib": 256,
                       "modes": list(modes), "settle_s": 3, "network": False, "image": "x"},
            "host": {"cores": 2}, "engine": "qemu", "warmup_s": 1.2,
            "target_pss_mib": density.QEMU_TARGET_MIB, "modes": modes}


def test_text_report_names_rates_and_memory():
    text = density.format_report(_report())
    assert "sequential: all 3 ready in 3.00 s, 1.00 starts/s (0.50 per core)" in text
    assert "concurrent: all 3 ready in 2.00 s, 1.50 starts/s (0.75 per core)" in text
    assert "QEMU                        55.0     90.0" in text
    assert "(guest RAM 30.0, beyond it 25.3)" in text
    assert density.failures(_report()) == []


def test_a_mode_where_not_all_started_is_a_failure():
    report = _report(ready_seq=2)
    assert "sequential: only 2/3 ready; first error: BootFailed: no agent" in \
        density.format_report(report)
    assert density.failures(report) == ["sequential: 2/3 sandboxes ready (BootFailed: no agent)"]


def test_outputs_json_png_svg(tmp_path):
    pytest.importorskip("matplotlib")
    paths = density.write_outputs(_report(), str(tmp_path / "out"))
    assert sorted(Path(p).name for p in paths) == ["density.json", "density.png", "density.svg"]
    assert json.loads((tmp_path / "out" / "density.json").read_text())["modes"]["concurrent"]["ready"] == 3
    assert (tmp_path / "out" / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "out" / "density.svg").read_bytes()[:2000]


def test_plot_stack_adds_up_to_the_total():
    from vmm.research.density_plot import stack
    per = _report()["modes"]["concurrent"]["memory"]["per_sandbox_mib"]
    assert sum(mib for _, mib in stack(per)) == pytest.approx(per["total"]["pss"], abs=0.05)


# --- clean-up -----------------------------------------------------------------------------

class _FakeSandbox:
    def __init__(self):
        self.stopped = 0

    def stop(self, timeout):
        self.stopped += 1


def test_cleanup_stops_sandboxes_and_kills_children_started_since():
    before = subprocess.Popen(["sleep", "30"])        # not the fleet's: left alone
    try:
        fleet = density.Fleet()
        sandboxes = [_FakeSandbox() for _ in range(3)]
        for sb in sandboxes:
            assert fleet.add(sb)
        booting = subprocess.Popen(["sleep", "30"])   # a QEMU whose create() is in flight
        density.cleanup(fleet, boot_timeout=1)
        assert [sb.stopped for sb in sandboxes] == [1, 1, 1]
        assert booting.wait(5) == -9
        assert before.poll() is None
        late = _FakeSandbox()
        assert not fleet.add(late)                    # closing: the creator stops it itself
    finally:
        before.kill()
        before.wait()


# --- configuration and the command line ---------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"count": 0}, "--count must be between 1 and"),
    ({"count": 10_000}, "--count must be between 1 and"),
    ({"memory_mib": 16}, "--memory must be at least 64 MiB"),
    ({"settle_s": -1.0}, "--settle must be 0 or more"),
    ({"boot_timeout": 0.0}, "--boot-timeout must be more than 0"),
    ({"modes": ("parallel",)}, "--mode must be one of"),
    ({"engine": "xen"}, "--engine must be auto, kvm or qemu"),
    ({"image": "/nonexistent/image.erofs"}, "image disk not found"),
])
def test_config_refused_before_anything_starts(kw, message):
    with pytest.raises(ConfigError, match=message):
        density.DensityConfig(**{"count": 3, **kw}).check()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vmm", "bench", "density", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "--count must be between 1 and 512, not 0"),
    (["--count", "many"], "argument --count: invalid int value: 'many'"),
    (["--memory", "8"], "--memory must be at least 64 MiB, not 8"),
    (["--mode", "parallel"], "argument --mode: invalid choice: 'parallel' "
                             "(choose from 'both', 'sequential', 'concurrent')"),
    (["--settle", "-2"], "--settle must be 0 or more seconds, not -2.0"),
    (["--image", "/nonexistent/disk"], "image disk not found: /nonexistent/disk"),
    (["--out", "/etc/hostname"], "--out /etc/hostname: exists and is not a directory"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2_with_one_error_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"error: {message}"], r.stderr
    assert r.stdout == ""


def test_bench_without_what_to_measure_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "vmm", "bench"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_the_command_line_maps_to_the_config_and_a_failed_start_exits_1(monkeypatch, capsys):
    from vmm.cli import research
    seen = {}

    def fake_run(cfg, progress):
        seen["cfg"] = cfg
        return _report(ready_seq=2)
    monkeypatch.setattr(density, "run_density", fake_run)
    rc = research.main(["bench", "density", "--count", "3", "--mode", "sequential",
                        "--memory", "128", "--cmdline", "no_timer_check", "--settle", "0.5"])
    cfg = seen["cfg"]
    assert (cfg.count, cfg.modes, cfg.memory_mib, cfg.cmdline, cfg.settle_s) == \
        (3, ("sequential",), 128, "no_timer_check", 0.5)
    out, err = capsys.readouterr()
    assert rc == 1 and "sequential: only 2/3 ready" in out
    assert err.splitlines()[-1] == ("error: not every sandbox started: "
                                    "sequential: 2/3 sandboxes ready (BootFailed: no agent)")
