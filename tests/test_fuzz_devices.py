"""Each virtio device end to end with its host peer, random but checked byte for byte:
virtio-blk against its file (a model of the disk), virtio-net against a socketpair
backend, virtio-vsock against its Unix socket host side. Seeds and budgets as in
tests/support/fuzz_run.py; each runs in a child, under ASan/UBSan in the fuzz tier."""
import pytest

from support import fuzz_run


@pytest.mark.fuzz
def test_blk_against_its_file(tmp_path):
    st = fuzz_run.run("blk end-to-end fuzz", "fuzz_blk_file", tmp_path)
    assert int(st["ok"]) > 0 and int(st["ioerr"]) > 0 and int(st["unsupp"]) > 0


@pytest.mark.fuzz
def test_net_against_a_socketpair_peer():
    st = fuzz_run.run("net end-to-end fuzz", "fuzz_net_peer")
    assert int(st["frames_out"]) > 0 and int(st["frames_in"]) > 0


@pytest.mark.fuzz
def test_vsock_against_its_unix_socket_host_side(tmp_path):
    st = fuzz_run.run("vsock end-to-end fuzz", "fuzz_vsock_peer", tmp_path)
    assert int(st["opened"]) > 0 and int(st["bytes"]) > 0
