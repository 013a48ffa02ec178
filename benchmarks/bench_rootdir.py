"""Sandbox.create(root_dir=): boot with a host directory over virtio-fs as the root's lower
layer, against the same tree as an EROFS image disk (issue 14's benchmark), in the same
run, alternating round by round.

    pytest benchmarks/bench_rootdir.py --benchmark-only -s

Both sides are the busybox test image's layer tar (tests/support/sandbox_image.py): once
unpacked into a directory (tests/support/rootfs_dir.py), once written as image.erofs by
the project's image code. Same engine (qemu), kernel, guest RAM, ephemeral (tmpfs upper).

- create to ready: Sandbox.create() until the agent's READY and configuration; the root
  directory adds a virtiofsd process and the virtio-fs mount where the EROFS side mounts
  a virtio-blk disk.
- create to the first exec(["true"]): the first command also looks up and maps /bin/true
  (busybox, ~2 MiB) through the lower layer, FUSE requests against block reads.
- work on the root in a booted sandbox: 200 runs of /bin/true from a shell loop and a
  `find / -xdev` walk of the tree, both sandboxes booted once and the two alternating;
  the root's virtiofsd runs with cache=always (the guest keeps data and names across
  opens; with the shared dirs' cache=auto, timeout=0 each exec re-read busybox over FUSE
  and this was ~10x the EROFS side), the other side reads the EROFS disk.
Ratio: root_dir / EROFS (lower is better for root_dir).
"""
import shutil
import time

import pytest

from sandbox_timing import sandbox_boot_seconds
from support.rootfs_dir import unpack_busybox_rootfs
from support.sandbox_image import have_busybox

import vmm

pytestmark = [pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86_64"),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("/usr/lib/qemu/virtiofsd"),
                                 reason="no /usr/lib/qemu/virtiofsd (qemu-system-common)")]

ENGINE = "qemu"
MEMORY_MIB = 512   # the Sandbox default, on both sides
ROUNDS = 7


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return unpack_busybox_rootfs(tmp_path_factory.mktemp("bench-rootdir"))


def _boot(kernel_path, first_exec: bool, **root) -> float:
    return sandbox_boot_seconds(first_exec, engine=ENGINE, memory_mib=MEMORY_MIB,
                                kernel=kernel_path, **root)


def test_root_dir_create_to_ready(benchmark, alternate, image, rootfs, guest_kernel):
    alternate(benchmark, "root_dir create to ready",
              ours=("root_dir (virtio-fs)", lambda: _boot(guest_kernel, False, root_dir=rootfs)),
              baseline=("EROFS image disk", lambda: _boot(guest_kernel, False, image_disk=image)),
              rounds=ROUNDS, target="report: root_dir / EROFS")


def test_root_dir_create_to_first_exec(benchmark, alternate, image, rootfs, guest_kernel):
    alternate(benchmark, "root_dir create to 1st exec",
              ours=("root_dir + exec(['true'])", lambda: _boot(guest_kernel, True, root_dir=rootfs)),
              baseline=("EROFS + exec(['true'])", lambda: _boot(guest_kernel, True, image_disk=image)),
              rounds=ROUNDS, target="report: root_dir / EROFS")


WORK = ("i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; "
        "find / -xdev | wc -l")


def _work(sb) -> float:
    t0 = time.perf_counter()
    r = sb.exec(["sh", "-c", WORK], timeout=120)
    assert r.code == 0 and int(r.stdout) > 200, r
    return time.perf_counter() - t0


def test_root_dir_exec_and_walk(benchmark, alternate, image, rootfs, guest_kernel):
    common = dict(engine=ENGINE, memory_mib=MEMORY_MIB, kernel=guest_kernel, network=None)
    with vmm.Sandbox.create(root_dir=rootfs, **common) as on_dir, \
            vmm.Sandbox.create(image, **common) as on_disk:
        alternate(benchmark, "root_dir 200 execs + find /",
                  ours=("root_dir (virtio-fs)", lambda: _work(on_dir)),
                  baseline=("EROFS image disk", lambda: _work(on_disk)),
                  rounds=ROUNDS, target="report: root_dir / EROFS")
