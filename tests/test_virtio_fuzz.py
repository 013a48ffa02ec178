"""Bounded fuzz runs in child processes: the virtqueue walker (random descriptors,
indirect tables, ring indices) must neither crash, hang, nor write outside guest RAM; the
vsock device must survive random packets and host clients and still work afterwards.

Seeds and budgets as in tests/support/fuzz_run.py: replay a failure exactly with the
VMM_FUZZ_SEED=<seed> VMM_FUZZ_ROUNDS=<n> its message names; VMM_FUZZ_SECONDS sets the time
budget otherwise."""
import pytest

from support import fuzz_run


@pytest.mark.fuzz
def test_queue_walker_fuzz(tmp_path):
    disk = tmp_path / "fuzz.img"
    disk.write_bytes(bytes(64 * 512))
    stats = fuzz_run.run("queue walker fuzz", "fuzz_queue", disk, secs=fuzz_run.seconds(5))
    # The run did real work: requests served, bad chains rejected, broken queues reset
    # (unless it replays a given number of rounds, maybe a few).
    if not fuzz_run.rounds():
        assert int(stats["rounds"]) > 100 and int(stats["requests"]) > 0


@pytest.mark.fuzz
def test_vsock_packet_fuzz(tmp_path):
    stats = fuzz_run.run("vsock packet fuzz", "fuzz_vsock", tmp_path, secs=fuzz_run.seconds(3))
    if not fuzz_run.rounds():
        assert int(stats["packets"]) > 100
