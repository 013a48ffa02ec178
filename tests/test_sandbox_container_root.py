"""vmm.Sandbox with a real guest: a process with a root of its own (Sandbox.exec(root=...),
as a pod member container's in the pod VM) and an exec that joins it (join_pid=), on the
qemu engine by default. The agent's side is tested on the host in
test_agent_container_root.py; this is the same through the VM's kernel and overlay root."""
import shutil

import pytest

from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

import vmm
from vmm.agent import ContainerRoot, ExecFailed, RootMount

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)")]

T = 60
# a member's rootfs made inside the guest from the image's busybox
MAKE_ROOTFS = """set -e
mkdir -p /pod/c1/rootfs/bin /pod/c1/rootfs/etc /srv/data
cp /bin/busybox /pod/c1/rootfs/bin/busybox
for a in sh cat ls echo touch pwd sleep grep id; do ln -s busybox /pod/c1/rootfs/bin/$a; done
echo member > /pod/c1/rootfs/etc/marker
echo 'app:x:2000:2000::/:/bin/sh' > /pod/c1/rootfs/etc/passwd
ln -s / /pod/c1/rootfs/escape
echo shared > /srv/data/f
chmod 777 /srv/data
"""


def test_exec_in_a_root_of_its_own_and_join_it(kernel_path, image):
    root = ContainerRoot("/pod/c1/rootfs", mounts=(
        RootMount("/data", "/srv/data"),
        RootMount("/escape/scratch", "size=1m", tmpfs=True),   # lands at the new root's /scratch
    ), read_only=True)
    with vmm.Sandbox.create(image, engine=ENGINE) as sb:
        assert sb.exec(["sh", "-c", MAKE_ROOTFS], timeout=T).code == 0
        r = sb.exec(["sh", "-c", "cat /etc/marker /data/f; ls /; id -u; touch /x 2>&1;"
                     " echo new > /data/g; echo s > /scratch/s && cat /scratch/s"],
                    root=root, user="app", timeout=T)
        out = r.stdout.decode().split("\n")
        assert out[:2] == ["member", "shared"], r
        assert set(out[2:-4]) == {"bin", "data", "dev", "etc", "escape", "proc", "scratch", "sys"}
        assert out[-4:] == ["2000", "touch: /x: Read-only file system", "s", ""], r
        # the guest's own tree: the bind's writes went through; nothing mounted stayed
        assert sb.fs.read("/srv/data/g") == b"new\n"
        mounts = sb.exec(["cat", "/proc/mounts"], timeout=T).stdout.decode()
        assert "/pod/" not in mounts and " /scratch " not in mounts, mounts
        assert sb.exec(["sh", "-c", "test -e /scratch || echo none"], timeout=T).stdout == b"none\n"

        member = sb.exec_stream(["sh", "-c", "echo hi > /scratch/h; echo up; exec sleep 120"],
                                root=root)
        try:
            assert next(iter(member)) == ("stdout", b"up\n")
            r = sb.exec(["sh", "-c", "cat /scratch/h /etc/marker; pwd"], join_pid=member.pid,
                        timeout=T)
            assert r.stdout == b"hi\nmember\n/\n", r
        finally:
            member.kill()
            member.wait(T)
        with pytest.raises(ExecFailed) as e:
            sb.exec(["true"], root=ContainerRoot("/pod/c2/rootfs"), timeout=T)
        assert e.value.kind == "bad_root" and "/pod/c2/rootfs" in str(e.value)
