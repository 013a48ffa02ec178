"""A hostile vhost-user front end against our back end (issue 12, findings 1, 3, 4): memory
table swaps while rings run, front ends that do not read replies or close with replies
unread, memfds that are not sealed against shrinking, kick and call fds that are not
eventfds, never drain or cannot be written. Each test fails on the back end before its
fix (named in its docstring). Attacks that would kill or hang a broken back end run it in
a child process (support/vhost_user_child.py)."""
import os
import socket
import struct
import time

import pytest

from support.vhost_user_child import ChildServer
from support.vhost_user_client import (GET_FEATURES, NEED_REPLY, SET_MEM_TABLE, SET_SLAVE_REQ_FD, SET_VRING_CALL, SET_VRING_KICK,
                                       SET_VRING_NUM, SET_VRING_ADDR, Client, MemfdMem, kick, wait_call, wait_until)
from support.virtio_driver import VERSION_1
from vmm.devices import Disk
from vmm.engines.vhost_user_server import VhostUserServer
from vmm.engines.virtio_device import open_device


@pytest.fixture
def servers(tmp_path):
    """A blk server under attack and a canary: another server on the same event loop,
    which must keep answering whatever the attacker does."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(range(256)) * 2 * 64)
    devs = [open_device(Disk(str(img))), open_device(Disk(str(img), read_only=True))]
    srvs = [VhostUserServer(d, str(tmp_path / f"s{i}.sock")) for i, d in enumerate(devs)]
    yield srvs[0], srvs[1], img
    for s in srvs:
        s.stop()
    for d in devs:
        d.close()


def answers(path, timeout=5.0) -> bool:
    """Whether a fresh front end on path gets GET_FEATURES answered within timeout."""
    c = Client(path, timeout=timeout)
    try:
        return c.u64(GET_FEATURES) & VERSION_1 != 0
    except (socket.timeout, ConnectionError):
        return False
    finally:
        c.close()


def blk_read(mem, q, sector):
    hdr = mem.put(struct.pack("<IIQ", 0, 0, sector))
    data, status = mem.alloc(512), mem.alloc(1)
    mem.write(status, b"\xff")
    q.add([(hdr, 16, False), (data, 512, True), (status, 1, True)])
    return data, status


def running(c, mem, size=16):
    c.negotiate(VERSION_1)
    assert c.set_mem(mem) == 0
    return c.start_ring(mem, 0, size)


# finding 1: SET_MEM_TABLE while rings run, replies nobody reads ---------------------------

def test_swap_that_keeps_the_rings_valid_keeps_them_running(servers):
    srv, _, img = servers
    c = Client(srv.path)
    mem = MemfdMem()
    q, kfd, cfd = running(c, mem)
    # The same RAM plus a second region: the ring translates into the new table.
    extra = MemfdMem(size=1 << 16, gpa=0x10000000, uva_base=0x7F3400000000)
    table = struct.pack("<II", 2, 0) + mem.region() + extra.region()
    assert c.ack(SET_MEM_TABLE, table, [mem.fd, extra.fd]) == 0
    data, status = blk_read(mem, q, 3)
    kick(kfd)
    assert wait_call(cfd) >= 1
    assert mem.read(status, 1) == b"\0" and mem.read(data, 512) == img.read_bytes()[3 * 512:4 * 512]
    assert srv.connected and srv.error is None
    c.close()


def test_swap_that_drops_a_running_ring_stops_it_and_closes(servers):
    srv, canary, img = servers
    c = Client(srv.path)
    mem = MemfdMem()
    q, kfd, cfd = running(c, mem)
    other = MemfdMem(uva_base=0x7F3400000000)  # the ring's addresses are not in it
    assert c.ack(SET_MEM_TABLE, struct.pack("<II", 1, 0) + other.region(), [other.fd]) != 0
    assert c.closed_by_peer()
    assert "new memory table while rings run" in srv.error and "ring 0" in srv.error
    # Nothing was served from either table after the refusal, and the server carries on.
    blk_read(mem, q, 1)
    kick(kfd)
    assert wait_call(cfd, 0.3) == 0 and q.take_used() == []
    assert answers(canary.path) and answers(srv.path)


def test_front_end_that_does_not_read_replies_cannot_stall_the_loop(servers):
    """Old code: the loop thread blocked forever in sendmsg, with every server of the
    process (the canary here) and every kick of their devices behind it."""
    srv, canary, img = servers
    c = Client(srv.path, timeout=1)
    mem = MemfdMem()
    running(c, mem)
    try:  # thousands of requests, no reply read: the back end's send buffer fills up
        c.s.sendall(struct.pack("<III", GET_FEATURES, 1 | NEED_REPLY, 0) * 20000)
    except (socket.timeout, OSError):
        pass
    t = time.monotonic()
    assert answers(canary.path, timeout=5), "the event loop is stuck sending to a front end that does not read"
    wait_until(lambda: not srv.connected, 5, "the back end to drop the front end that does not read")
    assert "cannot send a reply" in srv.error
    assert time.monotonic() - t < 4
    c.close()
    assert answers(srv.path)


def test_a_failed_read_closes_no_fd_of_the_process(servers):
    """Found by the fuzz test under ASan: after a failed recvmsg (a front end closing with
    a reply unread gets the back end ECONNRESET) the old code parsed the control buffer's
    leftovers from the previous message and closed those fd numbers again, by then handed
    out to someone else in the process (here, the files this test opens)."""
    srv, _, _ = servers
    c = Client(srv.path)
    c.send(GET_FEATURES, flags=1 | NEED_REPLY)  # its reply stays unread
    a, b = socket.socketpair()
    c.send(SET_SLAVE_REQ_FD, b"", [a.fileno()])  # the back end closes the fd it gets
    a.close()
    b.settimeout(5)
    assert b.recv(1) == b"", "the back end kept the fd"  # EOF once its copy of a is closed too
    b.close()
    mine = [os.open(os.devnull, os.O_RDONLY) for _ in range(50)]  # reuse the freed numbers
    try:
        c.close()  # with a reply unread: the back end's next read fails
        wait_until(lambda: not srv.connected, 5, "the back end to see the front end go")
        closed = []
        for fd in mine:
            try:
                os.fstat(fd)
            except OSError:
                closed.append(fd)
        assert closed == [], f"the back end closed fds {closed} it did not own"
        assert "cannot read a message" in srv.error
    finally:
        for fd in mine:
            try:
                os.close(fd)
            except OSError:
                pass


# finding 3: guest memory the front end could shrink under us -------------------------------

def test_unsealed_memfd_is_refused(servers):
    srv, _, _ = servers
    c = Client(srv.path)
    c.negotiate(VERSION_1)
    mem = MemfdMem(seal=False)
    assert c.set_mem(mem) != 0
    assert c.closed_by_peer()
    assert "F_SEAL_SHRINK" in srv.error and "memory region 0" in srv.error


def test_memory_that_is_not_a_memfd_is_refused(servers, tmp_path):
    srv, _, _ = servers
    f = tmp_path / "ram"
    f.write_bytes(bytes(1 << 16))
    fd = os.open(f, os.O_RDWR)
    c = Client(srv.path)
    c.negotiate(VERSION_1)
    table = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 1 << 16, 0x7F0000000000, 0)
    assert c.ack(SET_MEM_TABLE, table, [fd]) != 0
    os.close(fd)
    assert c.closed_by_peer()
    assert "not a memfd" in srv.error


def test_shrinking_guest_memory_cannot_kill_the_back_end(tmp_path):
    """Old code: the back end mapped an unsealed memfd; truncating it and kicking a ring
    killed the whole back-end process with SIGBUS."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(64 * 512))
    child = ChildServer(str(tmp_path / "s.sock"), str(img))
    try:
        mem = MemfdMem(seal=False)
        c = Client(child.path, timeout=2)
        try:
            q, kfd, cfd = running(c, mem)
            blk_read(mem, q, 1)
            os.ftruncate(mem.fd, 0)  # the attack: the pages under the ring are gone
            kick(kfd)
            wait_call(cfd, 0.5)
        except (AssertionError, ConnectionError, OSError):
            pass  # refused along the way: what we want
        c.close()
        assert child.alive(), f"the back end died: rc {child.p.returncode} {child.stderr()[-500:]}"
        assert "F_SEAL_SHRINK" in child.command("error")
        assert answers(child.path)
        # A sealed memfd (what QEMU sends) cannot be shrunk at all.
        sealed = MemfdMem()
        with pytest.raises(PermissionError):
            os.ftruncate(sealed.fd, 0)
    finally:
        child.close()


# finding 4: kick and call fds ------------------------------------------------------------

def _set_ring_fd(c, mem, req, fd):
    """A ring set up as QEMU does, with fd as its kick or call fd."""
    c.negotiate(VERSION_1)
    c.set_mem(mem)
    c.send(SET_VRING_NUM, struct.pack("<II", 0, 16))
    c.send(SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, mem.uva(mem.gpa), mem.uva(mem.gpa + 0x1000),
                                        mem.uva(mem.gpa + 0x2000), 0))
    c.send(req, struct.pack("<Q", 0), [fd])


def _cpu_seconds(interval):
    t = time.process_time()
    time.sleep(interval)
    return time.process_time() - t


def test_kick_fd_must_be_an_eventfd(servers):
    """Old code: a socket was accepted as kick fd; once its peer closed, the epoll set
    reported it readable forever and the loop thread spun at 100% CPU."""
    srv, canary, _ = servers
    ours, theirs = socket.socketpair()
    c = Client(srv.path)
    _set_ring_fd(c, MemfdMem(), SET_VRING_KICK, ours.fileno())
    ours.close()
    theirs.close()  # the kick fd hangs up
    assert c.closed_by_peer()
    assert "kick fd is not an eventfd" in srv.error
    assert _cpu_seconds(0.5) < 0.25, "the back end spins on a hung-up kick fd"
    assert answers(canary.path)


def test_kick_eventfd_that_never_drains_breaks_its_ring(servers):
    """Old code: a semaphore-mode eventfd with a huge count reads 1 at a time and stays
    readable, so the loop thread spun on it at 100% CPU."""
    srv, canary, _ = servers
    c = Client(srv.path)
    mem = MemfdMem()
    q, kfd, cfd = running(c, mem)
    sem = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
    os.eventfd_write(sem, 1 << 62)
    c.send(SET_VRING_KICK, struct.pack("<Q", 0), [sem])
    wait_until(lambda: srv.device.broken is not None, 5, "the ring to break")
    assert "kick fd never drains" in srv.device.broken
    assert _cpu_seconds(0.5) < 0.25, "the back end spins on a kick fd that never drains"
    assert answers(canary.path) and srv.connected
    c.close()
    os.close(sem)


def test_call_fd_must_be_an_eventfd(servers):
    srv, _, _ = servers
    r, w = os.pipe()  # a pipe fills up after 8192 interrupts and then blocks the writer
    c = Client(srv.path)
    _set_ring_fd(c, MemfdMem(), SET_VRING_CALL, w)
    os.close(r)
    os.close(w)
    assert c.closed_by_peer()
    assert "call fd is not an eventfd" in srv.error


def test_a_call_eventfd_that_cannot_take_a_signal_blocks_nothing(tmp_path):
    """Old code: the call eventfd stayed blocking; with its counter at the maximum the
    interrupt write blocked the loop thread under the device lock, and stop() with it."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(range(256)) * 2 * 64)
    child = ChildServer(str(tmp_path / "s.sock"), str(img))
    try:
        c = Client(child.path, timeout=5)
        mem = MemfdMem()
        q, kfd, _ = running(c, mem)
        full = os.eventfd(0)  # blocking, as a front end may hand it over
        os.eventfd_write(full, 0xFFFFFFFFFFFFFFFE)  # the counter's maximum
        c.send(SET_VRING_CALL, struct.pack("<Q", 0), [full])
        data, status = blk_read(mem, q, 2)
        kick(kfd)
        wait_until(lambda: mem.read(status, 1) == b"\0", 5, "the request to complete")
        assert mem.read(data, 512) == img.read_bytes()[1024:1536]
        assert c.u64(GET_FEATURES) & VERSION_1, "the back end no longer answers"
        answer = child.command("stop", timeout=10)
        assert answer is not None and answer.startswith("stopped"), "stop() hangs"
        assert float(answer.split()[1]) < 2
        c.close()
        os.close(full)
    finally:
        child.close()
