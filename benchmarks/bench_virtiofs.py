"""Issue 14's host-directory benchmarks on the qemu engine (TCG), ratios in one run:

- sequential write of 256 MiB (`dd bs=1M conv=fsync`), sequential read of it (`dd bs=1M`
  after `drop_caches` in the guest), and `tar x` of 10,000 small files (100 directories of
  100 files of 0.5-2 KiB; the tarball sits in the same directory; timed up to a `sync`),
  each in a shared host directory:
  * ours: a vmm.Sandbox with HostDir(dir, "/share") (the engine's virtiofsd, QEMU's
    vhost-user-fs-device, the agent's mount), the command run through Sandbox.exec;
  * baseline: plain `qemu-system-x86_64 -M microvm` with `-device vhost-user-fs-device` on
    a virtiofsd we start by hand with the engine's options, the same guest kernel, the
    same machine options (support/virtiofs_baseline.py), the command sent on its console.
  Target: time ratio <= 1.11 (throughput >= 0.9).
- reference: the same three in the same sandbox on an ext4 named volume (our vhost-user
  virtio-blk), against our virtio-fs share: what a host directory costs next to a disk.

Both sides run the same script (support/virtiofs_baseline.OPS) with the same busybox, and
time it inside the guest (fs_probe now: CLOCK_MONOTONIC), so neither side's command
channel is in the numbers. The two guests stay up for the whole module and take turns
round by round (benchmarks/paired.py), the first round a warm-up.

    pytest benchmarks/bench_virtiofs.py --benchmark-only -s

Measured (2026-11-29, the 2-core development machine): at load ~2, ours/baseline 1.005
write, 1.011 read, 1.018 tar x (virtio-fs vs ext4: 0.83 write, 1.25 read, 18.7 tar x: each
create is a FUSE round trip through virtiofsd, an ext4 create is guest memory). At load
~8-10 from other runs the same benchmark gave 1.49 / 1.70 / 1.66 (cause not established:
the QEMU command lines differ only in ours' seccomp filter, its own uid and the sandbox's
idle blk and vsock back ends, which live in our process), so read ratios on a quiet machine.

The kvm engine (its vhost-user front end) vs QEMU -accel kvm, inside the nested tier's L1
(one TCG vCPU, load ~1-7; 3 rounds for r/w, 1 for tar): 0.997 write, 0.902 read, 0.763 tar x
of 10,000 files (0.735 with VMM_BENCH_VIRTIOFS_TAR_FILES=2000); the tar run alone takes
~40 min there:
    PYTHONPATH=$PWD:$PWD/tests VMM_NESTED_TIMEOUT=3600 python3 -m support.nested
        benchmarks/bench_virtiofs.py --benchmark-only -s --env VMM_TEST_ENGINE=kvm
        --env VMM_BENCH_VIRTIOFS_ROUNDS=3 --env VMM_BENCH_VIRTIOFS_TAR_ROUNDS=1
"""
import io
import os
import random
import shutil
import tarfile

import pytest

from support.hostdir_image import build_hostdir_image
from support.hostdir_sandbox import hostdir_sandbox
from support.sandbox_image import have_busybox
from support.virtiofs_baseline import (OPS, SEQ_MIB, BaselineGuest, VirtiofsdByHand,
                                       build_baseline_initramfs, elapsed)
from vmm.engines.options import QemuOptions
from vmm.engines.qemu import tb_size_mib
from vmm.engines.virtiofsd import CACHE_OPTIONS
from vmm.home import Home
from vmm.sandbox.volume_store import VolumeStore

pytestmark = [pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd"),
              # a tar round is 10,000 creates through FUSE under TCG: minutes on a busy host
              pytest.mark.timeout(7200)]

MEMORY_MIB = 512
# qemu (TCG) here; VMM_TEST_ENGINE=kvm in the nested tier's L1, where the baseline QEMU runs
# with -accel kvm:  PYTHONPATH=tests python3 -m support.nested benchmarks/bench_virtiofs.py
#                   --benchmark-only -s --env VMM_TEST_ENGINE=kvm
ENGINE = os.environ.get("VMM_TEST_ENGINE", "qemu")
ROUNDS = int(os.environ.get("VMM_BENCH_VIRTIOFS_ROUNDS", "5"))
TAR_ROUNDS = int(os.environ.get("VMM_BENCH_VIRTIOFS_TAR_ROUNDS", "3"))
# The nested tier may scale the tree down (VMM_BENCH_VIRTIOFS_TAR_FILES): each create is a
# FUSE round trip, and under nested TCG 10,000 of them outlast an L1 run; the ratio is the point.
TAR_FILES = int(os.environ.get("VMM_BENCH_VIRTIOFS_TAR_FILES", "10000"))
OP_TIMEOUT = 1200
# The engine's virtiofsd options for a read-write share (vmm/engines/virtiofsd.py), so the
# baseline's virtiofsd serves the same way.
VIRTIOFSD_OPTIONS = ("sandbox=namespace", "modcaps=-mknod", *CACHE_OPTIONS)
OPS_NAMES = {"write": f"seq write {SEQ_MIB} MiB", "read": f"seq read {SEQ_MIB} MiB",
             "tar": f"tar x {TAR_FILES} files"}
TARGET = "target ratio <= 1.11"


def small_tar() -> bytes:
    """TAR_FILES files of 512-2048 bytes in 100 directories (fixed seed)."""
    rng = random.Random(14)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(TAR_FILES):
            if i % 100 == 0:
                info = tarfile.TarInfo(f"d{i // 100:02}")
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            data = rng.randbytes(rng.randint(512, 2048))
            info = tarfile.TarInfo(f"d{i // 100:02}/f{i % 100:02}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-virtiofs")
    tar = small_tar()
    for side in ("ours", "baseline"):
        (d / side).mkdir()
        (d / side / "small.tar").write_bytes(tar)
    return d


@pytest.fixture(scope="module")
def ours(workdir, guest_kernel):
    """The sandbox: /share on virtio-fs, /vol an ext4 volume (the reference)."""
    image = build_hostdir_image(workdir / "image", with_git=False)
    store = VolumeStore(Home(workdir / "home"))
    store.create("bench", "1G")
    sb = hostdir_sandbox(image, [(workdir / "ours", "/share", False)], engine=ENGINE,
                         kernel=guest_kernel, memory_mib=MEMORY_MIB, network=None,
                         volumes=[store.mount("bench", "/vol")], boot_timeout=120)
    try:
        r = sb.exec(["cp", "/share/small.tar", "/vol/small.tar"], timeout=120)
        assert r.code == 0, r
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="module")
def baseline(workdir, ours):
    initrd = build_baseline_initramfs(workdir, workdir / "image" / "fs_probe")
    sock = workdir / "baseline-fs.sock"
    with VirtiofsdByHand(workdir / "baseline", sock, VIRTIOFSD_OPTIONS), \
            BaselineGuest(sock, initrd, memory_mib=MEMORY_MIB,
                          tb_size_mib=tb_size_mib(QemuOptions()),
                          accel="kvm" if ENGINE == "kvm" else "tcg") as guest:
        yield guest


def run_ours(sb, op, directory):
    r = sb.exec(["sh", "-c", OPS, "sh", op, directory], timeout=OP_TIMEOUT)
    out = r.stdout.decode(errors="replace")
    assert r.code == 0 and "OP_FAIL" not in out, r
    if op == "tar":
        assert f"FILES {TAR_FILES}" in out, out
    return elapsed(out)


def _mib_per_s(benchmark, op, result):
    if op != "tar":
        benchmark.extra_info.update(ours_mib_per_s=round(SEQ_MIB / result.ours_median, 1),
                                    baseline_mib_per_s=round(SEQ_MIB / result.baseline_median, 1))
        print(f"  ours {SEQ_MIB / result.ours_median:.1f} MiB/s, baseline "
              f"{SEQ_MIB / result.baseline_median:.1f} MiB/s")
    else:
        benchmark.extra_info.update(ours_files_per_s=round(TAR_FILES / result.ours_median),
                                    baseline_files_per_s=round(TAR_FILES / result.baseline_median))
        print(f"  ours {TAR_FILES / result.ours_median:.0f} files/s, baseline "
              f"{TAR_FILES / result.baseline_median:.0f} files/s")


@pytest.mark.parametrize("op", list(OPS_NAMES))
def test_virtiofs_vs_qemu_vhost_user_fs(benchmark, alternate, ours, baseline, op):
    rounds = TAR_ROUNDS if op == "tar" else ROUNDS
    result = alternate(benchmark, f"virtio-fs {OPS_NAMES[op]}",
                       ours=("Sandbox + HostDir (virtio-fs)", lambda: run_ours(ours, op, "/share")),
                       baseline=("QEMU microvm vhost-user-fs", lambda: baseline.run(op)),
                       rounds=rounds, target=TARGET)
    _mib_per_s(benchmark, op, result)


@pytest.mark.parametrize("op", list(OPS_NAMES))
def test_virtiofs_vs_ext4_volume(benchmark, alternate, ours, op):
    rounds = TAR_ROUNDS if op == "tar" else ROUNDS
    result = alternate(benchmark, f"virtio-fs vs ext4 {OPS_NAMES[op]}",
                       ours=("HostDir (virtio-fs)", lambda: run_ours(ours, op, "/share")),
                       baseline=("ext4 volume (virtio-blk, reference)",
                                 lambda: run_ours(ours, op, "/vol")),
                       rounds=rounds, target="reference, no target")
    _mib_per_s(benchmark, op, result)
