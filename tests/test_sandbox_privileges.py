"""vmm.Sandbox with real guests: a read-only root (read_only_root=, make_root_read_only())
and an exec's privileges (groups, umask, no_new_privileges, capabilities), on the qemu
engine by default. The runtime's use of both is in test_runtime_vm.py and compared with
runc in test_runtime_conformance.py; this is the Sandbox API itself."""
import errno
import shutil

import pytest

from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

import vmm
from vmm.agent import Capabilities, ExecFailed, FsError

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)")]

T = 30
STATUS = ("grep -E '^(Uid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status; "
          "echo umask: $(umask)")


def status(text: str) -> dict:
    return {k.strip(): " ".join(v.split()) for k, sep, v in
            (line.partition(":") for line in text.splitlines()) if sep}


def test_read_only_root_from_create(kernel_path, image):
    with vmm.Sandbox.create(image, engine=ENGINE, read_only_root=True) as sb:
        r = sb.exec(["sh", "-c", "touch /x; echo $?; echo ok > /tmp/f && cat /tmp/f; "
                     "echo ok > /dev/shm/f && echo shm; mkdir /tmp/m && mount -t tmpfs t /tmp/m "
                     "&& touch /tmp/m/f && echo tmpfs-on-tmp"], timeout=T)
        assert r.stdout.decode().split() == ["1", "ok", "shm", "tmpfs-on-tmp"], r
        assert b"Read-only file system" in r.stderr
        with pytest.raises(FsError) as e:          # the host's writes too
            sb.fs.write("/etc/x", b"no")
        assert e.value.errno == errno.EROFS
        sb.make_root_read_only()                   # again: nothing changes, no error
        assert sb.exec(["sh", "-c", "grep ' / ' /proc/mounts"], timeout=T).stdout.split()[3] \
            .startswith(b"ro,")


def test_default_root_stays_writable_until_asked(kernel_path, image):
    with vmm.Sandbox.create(image, engine=ENGINE) as sb:
        sb.fs.write("/etc/written-first", b"before\n")     # what a runtime copies in
        assert sb.exec(["touch", "/x"], timeout=T).code == 0
        sb.make_root_read_only()
        r = sb.exec(["sh", "-c", "cat /etc/written-first; touch /y"], timeout=T)
        assert r.stdout == b"before\n" and r.code == 1 and b"Read-only file system" in r.stderr


def test_exec_privileges_in_the_guest(kernel_path, image):
    one = ["CAP_NET_BIND_SERVICE"]
    with vmm.Sandbox.create(image, engine=ENGINE) as sb:
        r = sb.exec(["sh", "-c", STATUS], user="1000:1000", groups=[10, 20], umask=0o27,
                    no_new_privileges=True, timeout=T,
                    capabilities=Capabilities(bounding=one, effective=one, permitted=one,
                                              inheritable=one, ambient=one))
        st = status(r.stdout.decode())
        assert st["Uid"] == "1000 1000 1000 1000" and st["Groups"] == "10 20", st
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[key], 16) == 1 << 10, (key, st)
        assert (st["NoNewPrivs"], st["umask"]) == ("1", "0027")
        # the defaults are today's: root with every capability, no_new_privs off, 022
        st = status(sb.exec(["sh", "-c", STATUS], timeout=T).stdout.decode())
        assert int(st["CapEff"], 16) == int(st["CapBnd"], 16) != 0
        assert (st["NoNewPrivs"], st["umask"]) == ("0", "0022")
        with pytest.raises(ExecFailed) as e:       # ambient but not inheritable
            sb.exec(["true"], user="1000", timeout=T, capabilities=Capabilities(
                bounding=one, permitted=one, ambient=one))
        assert e.value.kind == "bad_capabilities"
        with pytest.raises(ValueError):
            sb.exec(["true"], umask=0o1000)
