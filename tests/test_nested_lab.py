"""The boot-latency lab (`python -m vmm bench boot`) on the kvm engine with a real Linux
guest, which only boots in the nested tier: one L1 (QEMU TCG, emulated AMD SVM, see
tests/support/nested) runs the lab's own command line with a small N for the test init
in-process, the agent (a Sandbox to its first exec) and the compiled launcher, writing
into the share that comes back to the host. The checks read what came back: every host
mark and guest phase of each kind of run, the kvm engine's exits by reason per phase
(ours and KVM's own counters), the CSV agreeing with the JSON, and real pictures.

Timings inside L1 are TCG's: nothing here asserts a duration beyond "positive".
"""
import os

import pytest

from support.nested.l1_kernel import L1Unavailable
from support.nested.runner import L1_OUT, prepare_host_caches, run_commands_in_l1
from vmm.research import read_json, samples_from_csv
from vmm.research.phases import GUEST_PHASES, TOTAL

pytestmark = [pytest.mark.nested, pytest.mark.slow,
              pytest.mark.timeout(int(os.environ.get("VMM_NESTED_TIMEOUT", "2400")) + 300)]

RUNS = 2
# name -> the lab's extra arguments; each writes boot.json/csv and pictures to L1_OUT/name.
KINDS = {"test": [], "agent": ["--init", "agent"], "launcher": ["--process", "launcher"]}
# Host marks each kind must have reached in every run (phases.MARKS), in boot order.
MARKS = {
    "test": ["vm_created", "kernel_loaded", "first_vcpu_entry", "boot_timer", "ready_line"],
    "agent": ["vm_created", "kernel_loaded", "first_vcpu_entry", "boot_timer", "agent_ready",
              "ready_received", "first_exec"],
    "launcher": ["machine_created", "vm_created", "kernel_loaded", "first_vcpu_entry",
                 "boot_timer", "ready_line"],
}
GUEST = {"test": ["guest_kernel_to_init"], "agent": list(GUEST_PHASES),
         "launcher": ["guest_kernel_to_init"]}
SYSTEM = {"test": "vmm-kvm", "agent": "vmm-kvm", "launcher": "vmm-kvm-launcher"}
# The exit phases each kind splits its kvm exits into (samples.py).
EXIT_PHASES = {"test": ["to_boot_timer", "after_boot_timer"],
               "agent": ["to_boot_timer", "boot_timer_to_ready", "ready_to_first_exec"],
               "launcher": ["to_boot_timer", "after_boot_timer"]}


def _command(kind):
    return ["python", "-m", "vmm", "bench", "boot", "--engine", "kvm", "-n", str(RUNS),
            "--warmup", "0", "--baseline", "none", *KINDS[kind], "--out", f"{L1_OUT}/{kind}"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("nested-lab")
    try:
        prepare_host_caches()
        done = run_commands_in_l1([_command(k) for k in KINDS], out,
                                  timeout=float(os.environ.get("VMM_NESTED_TIMEOUT", "2400")))
    except L1Unavailable as e:
        pytest.skip(f"no L1 here: {e}")
    print(f"\nnested lab: L1 ran {len(KINDS)} lab commands in {done.seconds:.0f} s; "
          f"exit codes {done.returncodes}")
    return done


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def _result(lab, kind):
    i = list(KINDS).index(kind)
    if lab.returncodes[i] != 0:
        pytest.fail(f"`bench boot` ({kind}) inside L1 exited {lab.returncodes[i]}:\n"
                    f"{lab.tail(60)}", pytrace=False)
    return read_json(lab.out / kind / "boot.json")


def test_every_run_reached_ready_on_the_kvm_engine(lab, kind):
    result = _result(lab, kind)
    assert result["machine"]["kvm_backing"] == "hardware", result["machine"]
    samples = result["samples"]
    assert [s["system"] for s in samples] == [SYSTEM[kind]] * RUNS
    assert [s["round"] for s in samples] == list(range(RUNS))
    for s in samples:
        assert s["ok"], s["error"]
        assert s["params"]["engine"] == "kvm"


def test_every_host_mark_and_guest_phase_is_present(lab, kind):
    for s in _result(lab, kind)["samples"]:
        marks = s["marks_ms"]
        assert list(marks)[0] == "request" and marks["request"] == 0
        missing = [m for m in MARKS[kind] if m not in marks]
        assert not missing, f"{kind}: marks {missing} missing from {sorted(marks)}"
        # In boot order, each after the one before (the agent's READY comes from the guest's
        # clock, converted; it may land a little after ready_received is read, never long).
        ordered = [marks[m] for m in MARKS[kind] if m not in ("agent_ready",)]
        assert ordered == sorted(ordered), f"{kind}: marks out of order: {marks}"
        for m in MARKS[kind]:
            assert s["phases_ms"][m] >= 0 or m == "agent_ready", (m, s["phases_ms"])
        assert s["phases_ms"][TOTAL] == pytest.approx(marks[MARKS[kind][-1]], abs=1e-6)
        for g in GUEST[kind]:
            assert 0 < s["guest_ms"][g] < s["phases_ms"][TOTAL], (g, s["guest_ms"])


def test_kvm_exits_are_split_by_phase(lab, kind):
    for s in _result(lab, kind)["samples"]:
        exits = s.get("exits")
        assert exits and list(exits) == EXIT_PHASES[kind], exits
        before = exits["to_boot_timer"]
        # The boot-timer write is itself a port write, counted before the mark; a Linux boot
        # makes many (serial console, PIC, PIT) and touches its MMIO devices.
        assert before.get("io", 0) > 10, before
        for phase, counts in exits.items():
            assert set(counts) == set(before), f"{phase} lists other reasons than to_boot_timer"
            assert all(isinstance(n, int) and n >= 0 for n in counts.values()), (phase, counts)
        # After the mark the init still prints its READY line (or the agent its READY and the
        # exec's output travels): every later phase has exits too.
        for phase in EXIT_PHASES[kind][1:]:
            assert sum(exits[phase].values()) > 0, (phase, exits)


# KVM's own counters (debugfs, which L1 mounts), read by in-process runs only.
KVM_PHASES = {"test": ["whole_run"], "agent": ["to_ready", "ready_to_first_exec"]}
OURS = ("io", "mmio", "hlt", "shutdown", "internal_error", "fail_entry", "system_event",
        "intr", "other")   # exit reasons that are exits (not the unclaimed_* sub-counts)


@pytest.mark.parametrize("kind", list(KVM_PHASES))   # not the launcher: a process of its own
def test_kvm_own_counters_cover_every_exit_we_saw(lab, kind):
    for s in _result(lab, kind)["samples"]:
        counters = s.get("kvm_counters")
        assert counters and list(counters) == KVM_PHASES[kind], counters
        total = {k: sum(phase.get(k, 0) for phase in counters.values())
                 for k in ("exits", "io_exits", "mmio_exits")}
        ours = {r: sum(phase.get(r, 0) for phase in s["exits"].values()) for r in OURS}
        # KVM counts every exit, those it handled itself too: never fewer than reached us.
        assert total["exits"] >= sum(ours.values()) > 0, (total, ours)
        assert total["io_exits"] >= ours["io"], (total, ours)
        assert total["mmio_exits"] >= ours["mmio"], (total, ours)
        for phase in counters.values():
            assert phase["exits"] > 0 and all(n >= 0 for n in phase.values()), counters


def test_csv_carries_the_same_numbers_as_the_json(lab, kind):
    result = _result(lab, kind)
    rows = samples_from_csv((lab.out / kind / "boot.csv").read_text())
    assert len(rows) == RUNS
    for row, s in zip(sorted(rows, key=lambda r: r["round"]), result["samples"]):
        expected = dict(s["phases_ms"], **s["guest_ms"])
        assert row["metrics"] == pytest.approx(expected), (row, expected)


def test_pictures_were_drawn(lab, kind):
    out = lab.out / kind
    for stem in ("waterfall_default", "distribution"):
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, stem
        svg = (out / f"{stem}.svg").read_text()
        assert "<svg" in svg and SYSTEM[kind] in svg, stem


def test_the_printed_table_names_each_phase_and_the_exits(lab, kind):
    i = list(KINDS).index(kind)
    section = lab.log.split(f"### command {i}:")[1].split("### command")[0]
    assert f"[default] {SYSTEM[kind]}: {RUNS} runs counted" in section, section[-3000:]
    for m in MARKS[kind] + GUEST[kind] + [TOTAL]:
        assert f"\n  {m} " in section, (m, section[-3000:])
    for phase in EXIT_PHASES[kind]:
        assert f"exits {phase} (median per run): " in section, (phase, section[-3000:])
    for phase in KVM_PHASES.get(kind, []):
        head = f"KVM's own counters {phase} (median per run, largest 8): "
        line = next((x for x in section.splitlines() if head in x), None)
        assert line is not None, (phase, section[-3000:])
        shown = [x.split("=")[0] for x in line.split(head)[1].split(", ")]
        # Counts only (no *_ns), the largest 8, and KVM's total of exits is among them.
        assert "exits" in shown and len(shown) <= 8, line
        assert not [n for n in shown if n.endswith("_ns")], line
