"""vmm.research without booting anything: statistics, the bootstrap, phases from marks,
the guest's console (READY line, initcall_debug), results to and from JSON and CSV,
compare, the report, settings refused with their reason, baseline detection, plots."""
import json
import random
import statistics
import time

import pytest

from vmm.errors import ConfigError
from vmm.research import baselines, phases, results, samples, spawned, stats
from vmm.research.compare import compare, differences, render as render_compare
from vmm.research.report import exit_lines as render_exit_lines, render
from vmm.research.settings import BenchSettings

from support.bench_results import fake_result


# --- stats ------------------------------------------------------------------------------------

def test_percentiles_match_the_linear_definition():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert stats.median(values) == 3.0
    assert stats.percentile(values, 0) == 1.0 and stats.percentile(values, 100) == 5.0
    assert stats.percentile(values, 90) == pytest.approx(4.6)   # index 3.6
    assert stats.percentile([1.0, 2.0], 50) == 1.5
    rng = random.Random(1)
    data = [rng.expovariate(1) for _ in range(101)]
    assert stats.median(data) == statistics.median(data)
    # statistics.quantiles(method="inclusive") is the same linear definition
    assert stats.percentile(data, 90) == pytest.approx(
        statistics.quantiles(data, n=10, method="inclusive")[8])


def test_summary_and_errors():
    s = stats.summary([3.0, 1.0, 2.0])
    assert s == {"n": 3, "median": 2.0, "p90": pytest.approx(2.8), "p99": pytest.approx(2.98),
                 "min": 1.0, "max": 3.0}
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_bootstrap_is_seeded_and_covers_a_known_ratio():
    rng = random.Random(7)
    a = [100 + rng.gauss(0, 5) for _ in range(40)]
    b = [150 + rng.gauss(0, 5) for _ in range(40)]
    r1 = stats.bootstrap_ratio(a, b, seed=3)
    assert r1 == stats.bootstrap_ratio(a, b, seed=3)       # replayable
    assert r1 != stats.bootstrap_ratio(a, b, seed=4)       # and the seed matters
    ratio, lo, hi = r1
    assert ratio == pytest.approx(stats.median(b) / stats.median(a))
    assert lo < ratio < hi and lo < 1.5 < hi and hi - lo < 0.15
    # the same distribution on both sides: the interval holds 1
    _, lo, hi = stats.bootstrap_ratio(a, list(reversed(a)), seed=3)
    assert lo <= 1 <= hi


def test_bootstrap_refuses_what_has_no_ratio():
    with pytest.raises(ValueError, match="both sides"):
        stats.bootstrap_ratio([], [1.0])
    with pytest.raises(ValueError, match="baseline median is 0"):
        stats.bootstrap_ratio([0.0, 0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_ratio([1.0], [1.0], confidence=1.5)


# --- phases and the guest's console --------------------------------------------------------------

def test_host_phases_from_marks():
    ms = 1_000_000
    marks = {"request": 100 * ms, "vm_created": 103 * ms, "boot_timer": 900 * ms,
             "ready_line": 910 * ms, "process_start": 1}   # not a bench mark: ignored
    p = phases.host_phases(marks)
    assert p == {"vm_created": 3.0, "boot_timer": 797.0, "ready_line": 10.0, "total": 810.0}
    # an agent run ends at its first exec
    marks.update(agent_ready=950 * ms, ready_received=960 * ms, first_exec=1000 * ms)
    assert phases.host_phases(marks)["total"] == 900.0
    assert phases.host_phases({"vm_created": 5}) == {}   # no request: nothing to measure from


def test_guest_side_from_the_console():
    console = b"[    0.5] x\r\nREA" + b"DY boottime_ns=712345678 cpus=1\n"
    assert phases.ready_boottime_ns(console) == 712345678
    assert phases.ready_boottime_ns(b"no ready here") is None
    assert phases.guest_phases(init_boottime_ns=712345678) == {"guest_kernel_to_init": 712.345678}
    g = phases.guest_phases(agent_start_ns=700_000_000, agent_ready_ns=758_000_000)
    assert g == {"guest_kernel_to_init": 700.0, "guest_init_to_ready": 58.0}


def test_agent_steps_from_the_console():
    console = ("[    0.2] x\nagent: mounted /dev/vda (erofs) on /mnt/image\n"
               "agent: steps early_mounts=12000 image=20500 ready=41000 dialed=42000\n")
    steps = phases.agent_steps(console)
    assert steps == {"agent:early_mounts": 12.0, "agent:image": 8.5, "agent:ready": 20.5,
                     "agent:dialed": 1.0}
    assert phases.agent_steps("no steps line") == {}
    # after the guest phases, in the agent's own order (not by name)
    names = ["total", "agent:ready", "guest_init_to_ready", "agent:early_mounts", "boot_timer"]
    assert sorted(names, key=phases.metric_order) == [
        "boot_timer", "total", "guest_init_to_ready", "agent:ready", "agent:early_mounts"]


def test_ready_line_watch_across_chunk_boundaries():
    clock = iter(range(1, 100))
    w = phases.ReadyLineWatch(lambda: next(clock))
    for chunk in (b"boot...\nRE", b"ADY boot", b"time_ns=5\n", b"READY boottime_ns=6"):
        w.feed(chunk)
    assert w.seen_ns == 3   # the chunk that completed the marker, not a later one


def test_initcalls_parsed_and_ranked():
    console = ("[    0.100000] calling  inet_init+0x0/0x2a4 @ 1\n"
               "[    0.116000] initcall inet_init+0x0/0x2a4 returned 0 after 16000 usecs\n"
               "[    0.117000] initcall kswapd_init+0x0/0x7c returned 0 after 4000 usecs\n"
               "[    0.118000] initcall virtio_blk_init+0x0/0x90 returned -19 after 28000 usecs\n")
    calls = phases.parse_initcalls(console)
    assert calls == [("inet_init", 16.0), ("kswapd_init", 4.0), ("virtio_blk_init", 28.0)]
    assert phases.slowest_initcalls(calls, 2) == [("virtio_blk_init", 28.0), ("inet_init", 16.0)]


# --- results: JSON, CSV, compare, report --------------------------------------------------------

def test_exits_split_at_the_boot_timer_and_at_the_agents_ready():
    total = {"io": 100, "mmio": 7, "hlt": 3}
    at_init = {"io": 60, "mmio": 5}
    assert samples.split_exits(total, {}) == {"whole_run": total}
    assert samples.split_exits(total, at_init) == {
        "to_boot_timer": {"io": 60, "mmio": 5, "hlt": 0},
        "after_boot_timer": {"io": 40, "mmio": 2, "hlt": 3}}
    # An agent run: the exits after the mark split again where the agent's READY was in;
    # a reason seen only at READY still appears, with zeros, in every phase.
    at_ready = {"io": 90, "mmio": 6, "hlt": 1, "shutdown": 0}
    split = samples.split_exits(total, at_init, at_ready)
    assert list(split) == ["to_boot_timer", "boot_timer_to_ready", "ready_to_first_exec"]
    assert split["boot_timer_to_ready"] == {"io": 30, "mmio": 1, "hlt": 1, "shutdown": 0}
    assert split["ready_to_first_exec"] == {"io": 10, "mmio": 1, "hlt": 2, "shutdown": 0}
    assert split["to_boot_timer"]["shutdown"] == 0
    for reason in total:
        assert sum(phase[reason] for phase in split.values()) == total[reason]


def test_kvm_counters_read_from_debugfs_and_split(tmp_path):
    from vmm.research import kvm_counters
    vm = tmp_path / "4242-11"
    vm.mkdir()
    (vm / "exits").write_text("1970\n")
    (vm / "io_exits").write_text("215\n")
    (vm / "halt_exits").write_text("0\n")
    (vm / "vcpu0").mkdir()                     # a directory, not a counter
    (vm / "mmu_log").write_text("not a number\n")
    (vm / "halt_poll_success_hist").write_text("3 0 1 0\n")   # a histogram, not a counter
    (tmp_path / "77-11").mkdir()               # another process's VM
    assert kvm_counters.read(4242, tmp_path) == {"exits": 1970, "io_exits": 215, "halt_exits": 0}
    assert kvm_counters.read(99, tmp_path) == {}
    (tmp_path / "4242-12").mkdir()             # two VMs: which is ours would be a guess
    assert kvm_counters.read(4242, tmp_path) == {}
    assert kvm_counters.read(4242, tmp_path / "absent") == {}
    split = kvm_counters.split({"to_ready": {"exits": 100, "io_exits": 10, "halt_exits": 0},
                                "ready_to_first_exec": {"exits": 130, "io_exits": 10,
                                                        "halt_exits": 0, "pf_fixed": 4,
                                                        "halt_wait_ns": 9000000}})
    assert split == {"to_ready": {"exits": 100, "io_exits": 10, "pf_fixed": 0, "halt_wait_ns": 0},
                     "ready_to_first_exec": {"exits": 30, "io_exits": 0, "pf_fixed": 4,
                                             "halt_wait_ns": 9000000}}
    sample = dict(samples.new_sample("vmm-kvm"), kvm_counters=split)
    text = "\n".join(render_exit_lines([sample]))
    assert "KVM's own counters to_ready (median per run, largest 8): exits=100, io_exits=10" in text
    # Nanoseconds are not ranked among counts (they would crowd them out).
    assert "ready_to_first_exec (median per run, largest 8): exits=30, pf_fixed=4\n" in text + "\n"


def test_json_round_trip(tmp_path):
    r = fake_result()
    path = tmp_path / "boot.json"
    results.write_json(r, path)
    assert results.read_json(path) == json.loads(json.dumps(r))


def test_csv_round_trip(tmp_path):
    r = fake_result()
    path = tmp_path / "boot.csv"
    results.write_csv(r, path)
    back = results.samples_from_csv(path.read_text())
    assert len(back) == len(r["samples"])
    for orig, got in zip(r["samples"], back):
        assert (got["config"], got["system"], got["round"], got["warmup"], got["ok"]) == \
            (orig["config"], orig["system"], orig["round"], orig["warmup"], orig["ok"])
        assert got["metrics"] == samples.metrics(orig)   # repr(float) keeps every bit
    with pytest.raises(results.ResultFileError, match="header"):
        results.samples_from_csv("a,b\n1,2\n")


@pytest.mark.parametrize("content, message", [
    (None, "result file not found"),
    ("{not json", "is not JSON"),
    ('{"format": "something-else"}', "is not a `bench boot` result"),
    ('{"format": "vmm-bench-boot/1"}', "no samples list"),
])
def test_bad_result_files(tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(results.ResultFileError, match=message):
        results.read_json(path)


def test_compare_finds_a_real_difference_and_not_a_fake_one():
    a, b, same = fake_result(seed=1), fake_result(scale=1.5, seed=2), fake_result(seed=3)
    rows = {(r["system"], r["metric"]): r for r in compare(a, b, seed=5)}
    tot = rows[("qemu-tcg", "total")]
    assert tot["ratio"] == pytest.approx(1.5, rel=0.05) and tot["ci_low"] > 1.3
    assert tot["n_a"] == tot["n_b"] == 12              # the warm-up round left out
    assert ("vmm-qemu", "vm_created") in rows
    assert not any(m.startswith("initcall:") for _, m in rows)
    rows_same = compare(a, same, seed=5)
    t = next(r for r in rows_same if r["system"] == "qemu-tcg" and r["metric"] == "total")
    assert t["ci_low"] <= 1 <= t["ci_high"]
    assert compare(a, b, seed=5) == compare(a, b, seed=5)
    text = render_compare(compare(a, b, seed=5), "a.json", "b.json", 5)
    assert "B / A per phase" in text and " *" in text


def test_compare_names_what_differs_besides_the_samples():
    a, b = fake_result(), fake_result(seed=2)
    assert differences(a, b) == []
    b["settings"]["memory"] = [256]
    b["machine"]["git_revision"] = "abc"
    b["machine"]["load_average_at_start"] = [9.0]   # expected to differ: not listed
    assert differences(a, b) == ["settings memory: [128] vs [256]",
                                 "machine git_revision: None vs 'abc'"]
    text = render_compare(compare(a, b), "a", "b", 13, differences(a, b))
    assert text.startswith("A and B differ in settings memory: [128] vs [256]\n")


def test_compare_matches_single_configs_under_different_labels():
    a = fake_result(config="kernel=/a")
    b = fake_result(scale=2, config="kernel=/b")
    rows = compare(a, b)
    assert rows and {r["config"] for r in rows} == {"*"}


def test_report_tables_and_ratios():
    r = fake_result()
    r["settings"]["initcalls"] = 2
    r["samples"][3].update(ok=False, error="no READY line")
    text = render(r)
    assert "baseline firecracker: not found" in text
    assert "[default] vmm-qemu: 11 runs counted, 1 failed (first: no READY line)" in text or \
        "[default] qemu-tcg: 11 runs counted, 1 failed (first: no READY line)" in text
    assert "phase (ms)" in text and "median" in text and "p99" in text
    assert "vmm-qemu / qemu-tcg total:" in text
    assert "slowest initcalls" in text and "inet_init" in text
    lines = [line.split() for line in text.splitlines() if line.strip().startswith("total ")]
    assert lines and all(float(x) > 0 for x in lines[0][2:])


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"runs": 0}, "runs must be at least 1"),
    ({"warmup": -1}, "warmup must be 0 or more"),
    ({"memory": [8]}, "memory must be at least 16"),
    ({"cpus": [0]}, "cpus must be between"),
    ({"root": ["nfs"]}, "root 'nfs' is not one of"),
    ({"init": ["systemd"]}, "init 'systemd' is not one of"),
    ({"engine": ["xen"]}, "engine 'xen' is not one of"),
    ({"kernel": ["/no/such/vmlinux"]}, "kernel not found: /no/such/vmlinux"),
    ({"init": ["agent"], "root": ["disk"]}, "root=disk needs init=test"),
    ({"init": ["agent"], "hugepages": [True]}, "hugepages needs init=test"),
    ({"baselines": ["vmware"]}, "unknown baseline 'vmware'"),
    ({"timeout": 0}, "timeout must be positive"),
    ({"process": ["fork"]}, "process 'fork' is not one of in, fresh, launcher"),
    ({"process": ["fresh"], "root": ["disk"]}, "process=fresh runs `python -m vmm boot`"),
    ({"process": ["in", "fresh"], "init": ["agent"]}, "process=fresh runs"),
])
def test_settings_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        BenchSettings(**kwargs).check()


def test_sweep_is_a_cartesian_product_with_short_labels():
    s = BenchSettings(memory=[128, 256], cpus=[1, 2], hugepages=[False])
    labels = [c.label for c in s.configs()]
    assert labels == ["memory=128 cpus=1", "memory=128 cpus=2", "memory=256 cpus=1",
                      "memory=256 cpus=2"]
    assert BenchSettings().configs()[0].label == "default"


# --- baselines ---------------------------------------------------------------------------------

def test_baselines_detected_or_skipped_with_a_reason():
    on_path = {"qemu-system-x86_64": "/usr/bin/qemu-system-x86_64"}
    found, skipped = baselines.available(["qemu", "firecracker", "cloud-hypervisor"], "pvm",
                                         which=on_path.get)
    assert [b.name for b in found] == ["qemu-tcg"]
    assert skipped == ["qemu-kvm: /dev/kvm is pvm, not hardware-backed, skipped",
                       "firecracker: not found on PATH, skipped",
                       "cloud-hypervisor: not found on PATH, skipped"]
    on_path["firecracker"] = "/opt/fc/firecracker"
    found, skipped = baselines.available(["qemu", "firecracker"], "hardware", which=on_path.get)
    assert [b.name for b in found] == ["qemu-tcg", "qemu-kvm", "firecracker"] and skipped == []
    found, skipped = baselines.available(["firecracker"], "pvm", which=on_path.get)
    assert found == [] and "found at /opt/fc/firecracker, but /dev/kvm is pvm" in skipped[0]


def test_baseline_command_lines(tmp_path):
    launch = baselines.Launch(kernel="/k", initrd="/i", root_disk=None, root_cmdline="root=/dev/vda",
                              memory=256, cpus=2, hugepages=False, cmdline="quiet",
                              workdir=str(tmp_path))
    found, _ = baselines.available(["qemu", "firecracker", "cloud-hypervisor"], "hardware",
                                   which=lambda n: "/bin/" + n)
    argv = {b.name: b.argv(b, launch) for b in found}
    tcg = argv["qemu-tcg"]
    assert tcg[tcg.index("-accel") + 1] == "tcg" and tcg[tcg.index("-cpu") + 1] == "max"
    assert tcg[tcg.index("-M") + 1].startswith("microvm,")
    assert tcg[tcg.index("-initrd") + 1] == "/i" and tcg[tcg.index("-smp") + 1] == "2"
    assert tcg[tcg.index("-append") + 1] == "console=ttyS0 reboot=t panic=-1 no_timer_check noapictimer quiet"
    assert argv["qemu-kvm"][argv["qemu-kvm"].index("-accel") + 1] == "kvm"
    kvm = argv["qemu-kvm"]
    assert kvm[kvm.index("-append") + 1] == "console=ttyS0 reboot=t panic=-1 no_timer_check quiet"
    fc = json.loads((tmp_path / "firecracker.json").read_text())
    assert fc["boot-source"]["initrd_path"] == "/i" and fc["machine-config"]["mem_size_mib"] == 256
    assert "--initramfs" in argv["cloud-hypervisor"]
    disk = baselines.Launch(**{**launch.__dict__, "root_disk": "/d.ext4", "initrd": "/i"})
    tcg = found[0].argv(found[0], disk)
    assert "-initrd" not in tcg and "root=/dev/vda" in tcg[tcg.index("-append") + 1]
    assert any("file=/d.ext4" in a for a in tcg)


def test_a_baseline_that_never_prints_ready_fails_with_its_reason():
    s = spawned.run_process("fake", ["sh", "-c", "echo booting; echo oops >&2; exit 3"],
                              initcalls=0, timeout=10)
    assert not s["ok"] and s["status"] == "exit 3" and s["error"] == "no READY line (exit 3): oops"
    s = spawned.run_process("fake", ["sh", "-c", "echo 'READY boottime_ns=5000000 cpus=1'"],
                              initcalls=0, timeout=10)
    assert s["ok"] and s["guest_ms"] == {"guest_kernel_to_init": 5.0}
    assert s["phases_ms"]["total"] == s["marks_ms"]["ready_line"] > 0
    s = spawned.run_process("fake", ["/no/such/binary"], initcalls=0, timeout=10)
    assert not s["ok"] and "/no/such/binary" in s["error"]
    # marks the process reported itself join the ones taken here, in MARKS order
    before = time.monotonic_ns()
    s = spawned.run_process("fake", ["sh", "-c", "sleep 0.05; echo 'READY boottime_ns=1 cpus=1'"],
                            initcalls=0, timeout=10,
                            more_marks=lambda _tail: {"machine_created": before + 20_000_000})
    assert list(s["marks_ms"]) == ["request", "machine_created", "ready_line"]
    assert 0 < s["marks_ms"]["machine_created"] <= 20 < s["marks_ms"]["ready_line"]
    assert s["phases_ms"]["machine_created"] + s["phases_ms"]["ready_line"] == \
        pytest.approx(s["phases_ms"]["total"])


# --- plots -------------------------------------------------------------------------------------

def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    from vmm.research import plots
    paths = plots.all_plots(fake_result(), str(tmp_path))
    names = sorted(p.split("/")[-1] for p in paths)
    assert names == ["distribution.png", "distribution.svg", "waterfall_default.png",
                     "waterfall_default.svg"]
    for p in paths:
        data = open(p, "rb").read()
        assert data.startswith(b"\x89PNG") if p.endswith(".png") else b"<svg" in data[:2000]
    rows = compare(fake_result(), fake_result(scale=1.2, seed=9))
    cpaths = plots.compare_plot(rows, str(tmp_path), "a", "b")
    assert sorted(p.split("/")[-1] for p in cpaths) == ["compare.png", "compare.svg"]


def test_no_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    import builtins
    from vmm.research import plots
    real_import = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(plots.PlotError, match="pictures need matplotlib"):
        plots.all_plots(fake_result(), str(tmp_path))
