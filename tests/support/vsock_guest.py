"""A Python stand-in for a guest's virtio-vsock driver over synthetic memory: it feeds the
C device rx buffers and tx packets through the test transport and parses what comes back.
Connection logic (handshakes, credit) is the test's business: this only moves packets."""
from __future__ import annotations

import struct
import time

from support.virtio_driver import EVENT_IDX, VERSION_1, GuestMem, attach, notify, setup_queue

HDR = struct.Struct("<QQIIIHHIII")
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(1, 8)
HOST_CID = 2
RX_BUF = 4096 + HDR.size
TX_BUF = 65536 + HDR.size


class Packet:
    def __init__(self, raw: bytes):
        (self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len, self.type, self.op,
         self.flags, self.buf_alloc, self.fwd_cnt) = HDR.unpack_from(raw)
        self.payload = raw[HDR.size:HDR.size + self.len]

    def __repr__(self):
        return (f"Packet(op={self.op}, {self.src_cid}:{self.src_port} -> {self.dst_cid}:{self.dst_port}, "
                f"len={self.len}, flags={self.flags}, buf_alloc={self.buf_alloc}, fwd_cnt={self.fwd_cnt})")


class Guest:
    def __init__(self, dev, cid=3, nrx=64):
        self.dev, self.cid = dev, cid
        self.mem = GuestMem(size=4 << 20)
        attach(dev, self.mem, VERSION_1 | EVENT_IDX)
        self.rx = setup_queue(dev, self.mem, 0, 128)
        self.tx = setup_queue(dev, self.mem, 1, 16)
        self.ev = setup_queue(dev, self.mem, 2, 16)
        self.rx_bufs = [self.mem.alloc(RX_BUF) for _ in range(nrx)]
        self.tx_bufs = [self.mem.alloc(TX_BUF) for _ in range(16)]
        self.rx_head_buf = {}
        for b in self.rx_bufs:
            self._give_rx(b)
        notify(dev, 0)

    def _give_rx(self, addr):
        head = self.rx.add([(addr, RX_BUF, True)])
        self.rx_head_buf[head] = addr

    def send(self, op, src_port, dst_port, payload=b"", buf_alloc=1 << 20, fwd_cnt=0, flags=0, type_=1,
             src_cid=None, dst_cid=HOST_CID, length=None):
        hdr = HDR.pack(self.cid if src_cid is None else src_cid, dst_cid, src_port, dst_port,
                       len(payload) if length is None else length, type_, op, flags, buf_alloc, fwd_cnt)
        addr = self.tx_bufs[self.tx.free[0] % len(self.tx_bufs)]
        self.mem.write(addr, hdr + payload)
        self.tx.add([(addr, len(hdr) + len(payload), False)])
        rc = notify(self.dev, 1)
        assert self.tx.take_used(), "device did not consume the tx packet"
        return rc

    def poll(self, timeout=2.0, want=1):
        """Packets the device delivered, waiting up to timeout for at least `want`."""
        out = []
        end = time.monotonic() + timeout
        while True:
            for head, n in self.rx.take_used():
                addr = self.rx_head_buf.pop(head)
                out.append(Packet(self.mem.read(addr, n)))
                self._give_rx(addr)
            if out:
                notify(self.dev, 0)  # new rx buffers
            if len(out) >= want or time.monotonic() > end:
                return out
            time.sleep(0.002)
