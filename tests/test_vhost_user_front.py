"""The C core's vhost-user front end (csrc/virtio/vhost_user_front.c) without a VM: its
negotiation and its DRIVER_OK / reset sequences (vmm_vhost_user_front_test_cycle), against
our own back end (vhost_user.c) and against a Python back end that misbehaves
(support/fake_vhost_backend.py), plus a fuzzer of the replies."""
import fcntl
import os
import struct
import time

import pytest

from vmm.devices import Disk
from vmm.engines.vhost_user_front import blk_config, fs_config, open_vhost_user_device
from vmm.engines.vhost_user_server import VhostUserServer
from vmm.engines.virtio_device import open_device
from vmm.errors import ConfigError

from support import fuzz_run
from support.fake_vhost_backend import (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_VRING_BASE,
                                        NEED_REPLY, REPLY, SET_FEATURES, SET_MEM_TABLE,
                                        SET_VRING_ADDR, SET_VRING_CALL, SET_VRING_ENABLE,
                                        SET_VRING_KICK, VERSION, VERSION_1, FakeBackend, header)

MEM = 1 << 20
TIMEOUT_MS = 300     # the cases where the back end's silence is the point wait this long
PATIENT_MS = 3000    # the rest: a fake back end is a Python thread, and on a loaded machine
                     # it may answer later than 300 ms; that must not read as silence


def reply_timeout_ms(reason: str) -> int:
    """TIMEOUT_MS when the expected failure is a missing reply, else PATIENT_MS."""
    return TIMEOUT_MS if ("no reply" in reason or "within" in reason) else PATIENT_MS


def memfd():
    fd = os.memfd_create("guest", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, MEM)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def cycle(dev, fd, queue_size=16):
    """DRIVER_OK then reset, as the transport would drive them: None, or why it broke."""
    from vmm._core import ffi, lib
    err = ffi.new("char[]", 512)
    rc = lib.vmm_vhost_user_front_test_cycle(dev.ptr, fd, MEM, VERSION_1, queue_size, err, 512)
    return None if rc == 0 else ffi.string(err).decode()


def open_fds():
    """This process's open fds with what each names. A leak check compares the fds that are
    new since before, not counts: threads left by earlier tests in the same process may
    close one of theirs meanwhile."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add((name, os.readlink(f"/proc/self/fd/{name}")))
        except OSError:
            pass   # the listing's own fd, or one closed meanwhile
    return out


def new_fds(before):
    return open_fds() - before


@pytest.fixture
def guest_mem():
    fd = memfd()
    yield fd
    os.close(fd)


@pytest.fixture
def own_backend(tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(64 << 10))
    dev = open_device(Disk(str(img)))
    srv = VhostUserServer(dev, str(tmp_path / "blk.sock"))
    yield srv
    srv.stop()
    dev.close()


def test_negotiates_with_our_own_back_end_and_runs_its_rings(own_backend, guest_mem):
    with open_vhost_user_device("blk", own_backend.path, config=blk_config(128), num_queues=1) as dev:
        assert dev.features & VERSION_1
        assert not dev.features & (1 << 30), "VHOST_USER_F_PROTOCOL_FEATURES is not a virtio feature"
        assert dev.config(0, 8) == struct.pack("<Q", 128)
        for _ in range(3):  # start, stop, start again: the back end accepts each
            assert cycle(dev, guest_mem) is None
        assert own_backend.error is None and dev.broken is None


def test_the_sequence_a_back_end_sees(tmp_path, guest_mem):
    with FakeBackend(tmp_path / "fake.sock") as be:
        with open_vhost_user_device("fs", be.path, config=fs_config("tag"), num_queues=2) as dev:
            assert cycle(dev, guest_mem) is None
        codes = [r[0] for r in be.requests]
    # Negotiation, then DRIVER_OK: features, memory, each ring; then the reset stops both.
    assert codes[:4] == [GET_FEATURES, GET_PROTOCOL_FEATURES, 16, 3]
    ring = [8, 10, SET_VRING_ADDR, SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE]
    assert codes[4:] == [SET_FEATURES, SET_MEM_TABLE] + ring * 2 + [GET_VRING_BASE] * 2
    by_code = {r[0]: r for r in be.requests}
    assert struct.unpack("<Q", by_code[16][2])[0] == 1 << 3, "REPLY_ACK only"
    assert struct.unpack("<Q", by_code[SET_FEATURES][2])[0] == VERSION_1 | (1 << 30)
    mem = by_code[SET_MEM_TABLE]
    assert mem[3] == 1 and struct.unpack_from("<I", mem[2])[0] == 1
    gpa, size, _, offset = struct.unpack_from("<QQQQ", mem[2], 8)
    assert (gpa, size, offset) == (0, MEM, 0)
    assert all(r[1] & NEED_REPLY for r in be.requests if r[0] not in
               (GET_FEATURES, GET_PROTOCOL_FEATURES, 16, GET_VRING_BASE))


def test_config_and_limits_are_checked():
    with pytest.raises(ConfigError, match="tag"):
        fs_config("x" * 37)
    with pytest.raises(ConfigError, match="kind"):
        open_vhost_user_device("net", "/nonexistent", config=b"", num_queues=1)
    with pytest.raises(ConfigError, match="out of range"):
        open_vhost_user_device("fs", "/nonexistent", config=b"", num_queues=5)
    with pytest.raises(ConfigError, match="out of range"):
        open_vhost_user_device("fs", "/nonexistent", config=b"", num_queues=1, queue_size=100)
    with pytest.raises(ConfigError, match="cannot connect to the vhost-user back end at /nonexistent"):
        open_vhost_user_device("fs", "/nonexistent", config=b"", num_queues=1)


def test_a_back_end_without_version_1_is_refused(tmp_path):
    with FakeBackend(tmp_path / "fake.sock", features=1 << 30) as be:
        with pytest.raises(ConfigError, match="does not offer VIRTIO_F_VERSION_1"):
            open_vhost_user_device("fs", be.path, config=b"", num_queues=1)


# --- hostile back ends ---------------------------------------------------------------------------

def at(code, action):
    """misbehave() that does action on the first request with this code."""
    done = []

    def misbehave(n, request, reply):
        if request == code and not done:
            done.append(n)
            return action(reply) if callable(action) else action
        return None
    return misbehave


HOSTILE_OPEN = [
    ("silent", GET_FEATURES, ("silence",), f"no reply for request 1 within {TIMEOUT_MS} ms"),
    ("hang-up", GET_FEATURES, ("close",), "closed the connection"),
    ("wrong request", GET_FEATURES, ("reply", header(2, 8) + bytes(8)),
     "sent request 1, the back end answered request 2"),
    ("not a reply", GET_FEATURES, ("reply", header(1, 8, flags=VERSION) + bytes(8)), "not a version-1 reply"),
    ("too long", GET_FEATURES, ("reply", header(1, 4096) + bytes(4096)), "has 4096 payload bytes, expected 8"),
    ("truncated", GET_FEATURES, ("reply", header(1, 8) + bytes(3)), f"within {TIMEOUT_MS} ms"),
    ("short header", GET_FEATURES, ("reply", b"\1\0"), f"within {TIMEOUT_MS} ms"),
    ("refused ack", 3, ("reply", header(3, 8) + struct.pack("<Q", 1)), "refused request 3"),
]


@pytest.mark.parametrize("what,code,action,reason", HOSTILE_OPEN, ids=[h[0] for h in HOSTILE_OPEN])
def test_a_hostile_reply_at_open_is_a_clear_error(tmp_path, what, code, action, reason):
    before = open_fds()
    with FakeBackend(tmp_path / "fake.sock", at(code, action)) as be:
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="vhost-user back end .*fake.sock: ") as e:
            open_vhost_user_device("fs", be.path, config=b"", num_queues=1,
                                   reply_timeout_ms=reply_timeout_ms(reason))
        assert reason in str(e.value)
        assert time.monotonic() - t0 < 5
    assert not new_fds(before)


def test_fds_in_a_reply_are_closed_and_refused(tmp_path):
    r, w = os.pipe()
    try:
        before = open_fds()
        action = ("reply", header(1, 8) + struct.pack("<Q", VERSION_1), [r, w])
        with FakeBackend(tmp_path / "fake.sock", at(GET_FEATURES, action)) as be:
            with pytest.raises(ConfigError, match="carried file descriptors"):
                open_vhost_user_device("fs", be.path, config=b"", num_queues=1)
        assert not new_fds(before), "the fds that came with the reply must be closed"
    finally:
        os.close(r)
        os.close(w)


HOSTILE_RUN = [
    ("mem table refused", SET_MEM_TABLE, lambda reply: ("reply", header(5, 8) + struct.pack("<Q", 7)),
     "refused request 5 (status 7)"),
    ("hang-up at start", SET_FEATURES, ("close",), "closed the connection"),
    ("silent at stop", GET_VRING_BASE, ("silence",), "no reply for request 11"),
    ("wrong ring at stop", GET_VRING_BASE, ("reply", header(11, 8) + struct.pack("<II", 3, 0)),
     "stopping ring 0, the back end answered for ring 3"),
    ("unasked request", SET_VRING_ENABLE, lambda reply: ("unasked", header(1, 0, flags=VERSION)),
     "sent a message nobody asked for"),
]


@pytest.mark.parametrize("what,code,action,reason", HOSTILE_RUN, ids=[h[0] for h in HOSTILE_RUN])
def test_a_hostile_reply_while_running_breaks_the_device(tmp_path, guest_mem, what, code, action, reason):
    before = open_fds()
    with FakeBackend(tmp_path / "fake.sock", at(code, action)) as be:
        with open_vhost_user_device("fs", be.path, config=fs_config("t"), num_queues=1,
                                    reply_timeout_ms=reply_timeout_ms(reason)) as dev:
            why = cycle(dev, guest_mem)
            assert why is not None and reason in why, why
            # For good: the next DRIVER_OK finds the connection gone.
            assert "connection" in cycle(dev, guest_mem) or reason in cycle(dev, guest_mem)
    assert not new_fds(before)


# --- fuzz ---------------------------------------------------------------------------------------

@pytest.mark.fuzz
def test_fuzz_back_end_replies(tmp_path):
    """support/fuzz_vhost_front.py in a child: random, truncated and wrong replies at a
    random point of the negotiation, start or stop; no crash, no hang, no leaked fd."""
    st = fuzz_run.run("vhost-user front end replies", "fuzz_vhost_front", tmp_path)
    assert int(st["rounds"]) > 0 and int(st["broken"]) > 0
