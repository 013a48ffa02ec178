"""Host directories in real guests (issue 14): Sandbox.create(volumes=[HostDir(...)])
shares each over virtio-fs (one virtiofsd per directory) and the agent mounts it by tag
before READY, in one parents-first order with the disk volumes; `:ro` refuses writes
in the guest with EROFS/EACCES, also after the guest remounts it read-write; a mount
point that is a symbolic link (in the image or in a shared directory) is never followed;
a directory the agent cannot mount is a BootFailed naming it.

qemu by default; VMM_TEST_ENGINE=kvm runs the same tests in the nested tier.
"""
import errno
import shutil

import pytest

from support.sandbox_image import have_busybox
from support.test_engine import engine_marks

import vmm
from vmm.agent import AgentError
from vmm.home import Home
from vmm.sandbox.volume_store import VolumeStore
from vmm.sandbox.volumes import HostDir

from test_sandbox_volumes import T, _hostile_image, boot, mounts_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_runtime_base"), *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)")]


@pytest.fixture
def shared(tmp_path):
    d = tmp_path / "shared"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "file").write_text("from the host\n")
    return d


def test_host_dir_is_mounted_before_the_first_exec_read_write(kernel_path, image, shared):
    with boot(image, [HostDir(shared, "/app")]) as sb:
        m = mounts_of(sb)   # the very first request: mounted before READY
        assert m["/app"][:2] == ("vmm-fs-0", "virtiofs") and "rw" in m["/app"][2], m
        assert sb.fs.read("/app/sub/file") == b"from the host\n"
        r = sb.exec(["sh", "-c", "echo from the guest > /app/sub/new && mkdir /app/d && "
                     "mv /app/sub/new /app/d/moved && sync"], timeout=T)
        assert r.exit_code == 0, r.stderr
        assert (shared / "d" / "moved").read_text() == "from the guest\n"
        assert not (shared / "sub" / "new").exists()
    assert sb.stopped_gracefully


def test_read_only_host_dir_refuses_writes_in_the_guest(kernel_path, image, shared):
    with boot(image, [HostDir(shared, "/ref", read_only=True)]) as sb:
        m = mounts_of(sb)
        assert m["/ref"][1] == "virtiofs" and "ro" in m["/ref"][2], m
        assert sb.fs.read("/ref/sub/file") == b"from the host\n"
        with pytest.raises(AgentError) as e:
            sb.fs.write("/ref/new", b"x")
        assert e.value.errno in (errno.EROFS, errno.EACCES)
        r = sb.exec(["sh", "-c", "echo x > /ref/sub/file"], timeout=T)
        assert r.exit_code != 0 and (b"Read-only file system" in r.stderr
                                     or b"Permission denied" in r.stderr), r.stderr
        # The guest is root and may remount it read-write: the server still refuses.
        r = sb.exec(["mount", "-o", "remount,rw", "/ref"], timeout=T)
        assert r.exit_code == 0 and "rw" in mounts_of(sb)["/ref"][2], r.stderr
        r = sb.exec(["sh", "-c", "echo x > /ref/sub/file; echo y > /ref/new; mkdir /ref/d; "
                     "rm /ref/sub/file"], timeout=T)
        assert r.exit_code != 0, r.stderr
    assert (shared / "sub" / "file").read_text() == "from the host\n"
    assert sorted(p.name for p in shared.iterdir()) == ["sub"]


def test_shared_dirs_and_disk_volumes_nest_either_way(kernel_path, image, tmp_path):
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (inner / "code.txt").write_text("inner\n")
    store = VolumeStore(Home(tmp_path / "home"))
    store.create("db", "32M")
    # given children first: the sandbox and the agent order them parents first
    vols = [HostDir(inner, "/w/db/src", read_only=True), store.mount("db", "/w/db"),
            HostDir(outer, "/w")]
    with boot(image, vols) as sb:
        assert [v.guest_path for v in sb.volumes] == ["/w", "/w/db", "/w/db/src"]
        m = mounts_of(sb)
        assert (m["/w"][1], m["/w/db"][1], m["/w/db/src"][1]) == ("virtiofs", "ext4", "virtiofs")
        assert sb.fs.read("/w/db/src/code.txt") == b"inner\n"
        r = sb.exec(["sh", "-c", "echo on-disk > /w/db/x && echo on-host > /w/y && sync"],
                    timeout=T)
        assert r.exit_code == 0, r.stderr
    # the mount point /w/db was made in the outer directory; what went to the disk did not
    assert (outer / "db").is_dir() and list((outer / "db").iterdir()) == []
    assert (outer / "y").read_text() == "on-host\n"
    assert [p.name for p in inner.iterdir()] == ["code.txt"]   # /w/db/src was made on the disk
    with boot(image, [store.mount("db", "/db")]) as sb:
        assert sb.fs.read("/db/x") == b"on-disk\n"


@pytest.fixture(scope="module")
def hostile_image(tmp_path_factory):
    return _hostile_image(tmp_path_factory.mktemp("hostile"))


def test_a_symlink_on_the_way_is_never_followed(kernel_path, hostile_image, shared, tmp_path):
    # in the image: /data -> /etc
    with pytest.raises(vmm.BootFailed) as e:
        boot(hostile_image, [HostDir(shared, "/data")])
    assert e.value.reason == (f"host directory {shared} at /data could not be mounted: "
                              "mount point /data is a symbolic link (not followed)")
    # in a shared directory: the guest walks it with O_NOFOLLOW too
    (shared / "esc").symlink_to("/etc")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(vmm.BootFailed) as e:
        boot(hostile_image, [HostDir(shared, "/s"), HostDir(other, "/s/esc/x")])
    assert e.value.reason == (f"host directory {other} at /s/esc/x could not be mounted: "
                              "mount point /s/esc is a symbolic link (not followed)")


@pytest.mark.parametrize("arg,why", [
    # no such virtio-fs device
    ("no-such-tag:rw:/app",
     "no-such-tag could not be mounted: mounting it on /app: Invalid argument (no virtio-fs "
     "device with this tag?)"),
    # what the host never sends: the agent checks it anyway
    ("t:rx:/app", "t could not be mounted: vmm.fs entry: mode is not rw or ro"),
    ("t%2:rw:/app", "- could not be mounted: vmm.fs entry: bad tag"),
    ("t:rw:/a/../etc", "t could not be mounted: vmm.fs entry: empty, '.' or '..' component in "
                       "the path"),
])
def test_a_shared_dir_the_agent_cannot_mount_is_a_boot_failure_naming_it(kernel_path, image,
                                                                           arg, why):
    # Given directly (no HostDir): the agent's FATAL line still becomes the reason.
    with pytest.raises(vmm.BootFailed) as e:
        boot(image, [], extra_cmdline=f"vmm.fs={arg}")
    assert e.value.reason == f"shared dir {why}"
