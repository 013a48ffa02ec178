"""The virtqueue walker over guest memory in four regions with unmapped guard pages between
them (one pair contiguous for the guest, not for the host), queue sizes 1..256, while a
second thread rewrites descriptors, indirect tables and the available ring. A stray access
is a SIGSEGV on a guard page (or an ASan report in the fuzz tier): the child dies and the
test fails with the seed. Replay: VMM_FUZZ_SEED, VMM_FUZZ_ROUNDS, VMM_FUZZ_MUTATOR=0."""
import pytest

from support import fuzz_run


@pytest.mark.fuzz
def test_queue_walker_multi_region_fuzz(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    st = fuzz_run.run("multi-region queue walker fuzz", "fuzz_guest_memory", disk)
    # It did real work: requests served, broken queues reset, the mutator raced the walks.
    assert int(st["rounds"]) > 50 and int(st["requests"]) > 0 and int(st["broken"]) > 0
    if fuzz_run.mutator_on():
        assert int(st["mutations"]) > 0
