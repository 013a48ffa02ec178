"""The fuzz tier: every `@pytest.mark.fuzz` test again, in a child pytest whose C core is
built with AddressSanitizer + UBSan (tests/support/sanitized_core.py), so an out-of-bounds
access or undefined behaviour that does not happen to crash still fails the run, with the
sanitizer's report quoted.

Budget: about two minutes in all in CI (VMM_FUZZ_TIER_TOTAL, default 120 s), shared out
among however many fuzz tests there are; VMM_FUZZ_TIER_SECONDS sets each fuzzer's budget
instead. A longer local run: `VMM_FUZZ_TIER_SECONDS=300 python3 -m pytest
tests/test_fuzz_tier.py -s`, or `scripts/build-sanitized-core.sh fuzz 300`.
"""
import os
import subprocess
import sys
import time

import pytest

from support import sanitized_core

TIER_TOTAL = float(os.environ.get("VMM_FUZZ_TIER_TOTAL") or 120)
TIER_SECONDS = float(os.environ.get("VMM_FUZZ_TIER_SECONDS") or 0)   # 0: shared out of TIER_TOTAL
# Room for fixed costs under ASan on a loaded machine: CI's tier must end, not eat the run.
TIER_TIMEOUT = 600 + 40 * max(TIER_SECONDS, TIER_TOTAL / 4)

pytestmark = pytest.mark.skipif(sanitized_core.available() is not None,
                                reason=sanitized_core.available() or "")


@pytest.fixture(scope="module")
def sanitized():
    return sanitized_core.build()


def test_sanitized_core_is_instrumented_and_is_what_the_tier_imports(sanitized):
    syms = subprocess.run(["nm", "-D", str(sanitized)], capture_output=True, text=True, check=True).stdout
    assert "__asan_report_store" in syms and "__ubsan_handle" in syms, "the core is not instrumented"
    r = subprocess.run([sys.executable, "-c", "import vmm, vmm._core; print(vmm._core.__file__); "
                        "print(vmm.__file__)"], env=sanitized_core.env(sanitized),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    core, package = r.stdout.split()
    assert core == str(sanitized)
    # The rest of vmm is the checkout's own code, not a copy.
    assert os.path.dirname(package) == os.path.join(sanitized_core.ROOT, "vmm")


CANARY_TEST = """
from support import fuzz_run

def test_canary(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    fuzz_run.run("canary", "fuzz_canary", disk)
"""


def test_a_sanitizer_report_fails_the_run_and_is_quoted(sanitized, tmp_path):
    """The canary writes one byte past a heap buffer through virtio-blk (a lie told to the
    test transport, not a product bug), run the way the tier runs a fuzzer (a child pytest,
    a fuzzer process under it): the run must fail, quoting ASan's report."""
    test = tmp_path / "test_canary.py"
    test.write_text(CANARY_TEST)
    with pytest.raises(AssertionError) as failed:
        sanitized_core.check(sanitized, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                         str(test)], "canary", timeout=120)
    message = str(failed.value)
    assert "AddressSanitizer: heap-buffer-overflow" in message, message
    assert "blk_handle" in message and "vmm_vdev_test_notify" in message, message   # the stack


@pytest.mark.slow
@pytest.mark.timeout(TIER_TIMEOUT)
def test_fuzz_tier_under_sanitizers(sanitized):
    start = time.monotonic()
    tests = sanitized_core.fuzz_tests()
    assert tests, "no @pytest.mark.fuzz tests collected"
    secs = TIER_SECONDS or sanitized_core.per_fuzzer_seconds(TIER_TOTAL - (time.monotonic() - start), len(tests))
    out = sanitized_core.fuzz_tier(sanitized, secs, timeout=TIER_TIMEOUT - 60)
    took = time.monotonic() - start
    # The statistics line of each fuzzer: how many iterations the budget bought.
    print("\n".join(line for line in out.splitlines() if "replay:" in line and "=" in line))
    print(f"fuzz tier: {len(tests)} fuzz tests, {secs:.1f} s per fuzzer, {took:.0f} s in all")
