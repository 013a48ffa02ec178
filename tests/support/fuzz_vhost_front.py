"""Random, truncated and wrong replies from a vhost-user back end against the C core's
front end (csrc/virtio/vhost_user_front.c).

    python -m support.fuzz_vhost_front SECONDS ROUNDS SEED DIR

Each round is one connection to a Python back end (support/fake_vhost_backend.py) that
answers correctly except for one request, picked at random among the first 24, whose
reply it replaces with silence, a hang-up, an unasked message, a truncated or random
one, or a header with a wrong code, flags or size. The front end then opens (features
random too), and runs DRIVER_OK and a reset twice. Every outcome must be a clean one: a
ConfigError naming the back end, or a cycle that works or reports why the device broke;
never a crash or a hang (replies wait 50 ms). At the end no fd may leak. Round n draws
from random.Random(SEED * 1000003 + n), so ROUNDS replays a run exactly.
Prints "rounds=N broken=B ok=K".
"""
from __future__ import annotations

import fcntl
import os
import random
import sys

from support.fake_vhost_backend import REPLY, VERSION, VERSION_1, FakeBackend, header
from support.fuzz_run import Budget
from vmm._core import ffi, lib
from vmm.engines.vhost_user_front import fs_config, open_vhost_user_device
from vmm.errors import ConfigError

MEM = 1 << 20


def random_reply(rng: random.Random, request: int, reply):
    """A reply a broken or hostile back end could send instead of the right one."""
    choice = rng.randrange(9)
    if choice == 0:
        return ("silence",)
    if choice == 1:
        return ("close",)
    if choice == 2:
        return ("unasked", header(rng.randrange(64), rng.randrange(16), rng.randrange(16)))
    if choice == 3 and reply:
        return ("reply", reply[:rng.randrange(len(reply))])
    if choice == 4:
        return ("reply", rng.randbytes(rng.randrange(1, 64)))
    size = rng.choice([0, 4, 8, 12, 16, 4096, 4097, 0xFFFFFFFF])
    flags = rng.choice([VERSION | REPLY, VERSION, 0, 2 | REPLY, rng.randrange(1 << 32)])
    code = rng.choice([request, request + 1, 0, rng.randrange(1 << 32)])
    return ("reply", header(code, size, flags) + rng.randbytes(min(size, 64)))


def cycle(dev, fd) -> bool:
    err = ffi.new("char[]", 512)
    rc = lib.vmm_vhost_user_front_test_cycle(dev.ptr, fd, MEM, VERSION_1, 16, err, 512)
    why = ffi.string(err).decode()
    assert rc == 0 or why, "a broken cycle must say why"
    return rc == 0


def round_(rng: random.Random, path: str, fd: int, counts: dict) -> None:
    target = rng.randrange(24)
    features = VERSION_1 | rng.choice([0, 1 << 30]) | rng.randrange(1 << 24)
    be = FakeBackend(path, lambda n, request, reply: random_reply(rng, request, reply) if n == target else None,
                     features=features, protocol=rng.choice([0, 1 << 3, rng.randrange(1 << 64)]))
    try:
        try:
            dev = open_vhost_user_device("fs", be.path, config=fs_config("f"), num_queues=2,
                                         reply_timeout_ms=50)
        except ConfigError as e:
            assert "vhost-user back end" in str(e), e
            counts["broken"] += 1
            return
        with dev:
            for _ in range(2):
                counts["ok" if cycle(dev, fd) else "broken"] += 1
    finally:
        be.close()
        os.unlink(path)


def main(budget: Budget, seed: int, d: str) -> None:
    fd = os.memfd_create("guest", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, MEM)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    before = len(os.listdir("/proc/self/fd"))
    counts = {"broken": 0, "ok": 0}
    while budget.more():
        n = budget.rounds - 1
        try:
            round_(random.Random(seed * 1000003 + n), os.path.join(d, "fake.sock"), fd, counts)
        except AssertionError as e:
            raise AssertionError(f"round {n}: {e}") from e
    after = len(os.listdir("/proc/self/fd"))
    assert after == before, f"{after - before} fds leaked"
    print(f"rounds={budget.rounds} broken={counts['broken']} ok={counts['ok']}")


if __name__ == "__main__":
    main(Budget.from_argv(sys.argv[1:3]), int(sys.argv[3]), sys.argv[4])
