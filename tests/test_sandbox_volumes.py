"""Named volumes in real guests: ext4 disks from the volume store, attached as more
virtio-blk devices and mounted by the agent before READY (the project's kernel, the agent
as PID 1, the busybox image).

qemu by default; VMM_TEST_ENGINE=kvm runs the same tests where a Linux guest can boot
under /dev/kvm (the nested tier). The kvm engine has room for 8 devices per VM: these
tests use at most image + writable disk + 2 volumes + vsock.
"""
import errno
import io
import shutil
import subprocess
import tarfile

import pytest

from support.sandbox_image import busybox_layer, have_busybox  # noqa: E402
from support.test_engine import ENGINE, engine_marks  # noqa: E402

import vmm  # noqa: E402
from vmm.agent import AgentError  # noqa: E402
from vmm.errors import ConfigError  # noqa: E402
from vmm.home import Home  # noqa: E402
from vmm.sandbox.volume_store import VolumeStore, lock_state  # noqa: E402
from vmm.sandbox.volumes import VolumeMount  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_runtime_base"), *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)")]

BOOT_TIMEOUT = 60
T = 30


@pytest.fixture
def store(tmp_path):
    return VolumeStore(Home(tmp_path / "home"))


def boot(image, volumes, **kw):
    return vmm.Sandbox.create(image, engine=ENGINE, boot_timeout=BOOT_TIMEOUT, network=None,
                              volumes=volumes, **kw)


def mounts_of(sb):
    """{mount point: (device, fs type, options)} from the guest's /proc/mounts."""
    out = {}
    for line in sb.exec(["cat", "/proc/mounts"], timeout=T).stdout.decode().splitlines():
        dev, where, fstype, opts = line.split()[:4]
        out[where.replace("\\040", " ")] = (dev, fstype, set(opts.split(",")))
    return out


def fs_state(path):
    """dumpe2fs's "Filesystem state" of a volume's disk (host side)."""
    out = subprocess.run(["dumpe2fs", "-h", str(path)], capture_output=True, text=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith("Filesystem state:"))


def test_volume_is_mounted_before_the_first_exec_and_outlives_the_sandbox(kernel_path, image,
                                                                          store):
    store.create("data", "64M")
    with boot(image, [store.mount("data", "/data")]) as sb:
        # The very first request: the agent mounted it before READY.
        m = mounts_of(sb)
        assert m["/data"][1] == "ext4" and "rw" in m["/data"][2], m
        assert lock_state(store.disk_path("data")) == "rw"
        sb.exec(["sh", "-c", "mkdir -p /data/proj && echo kept > /data/proj/file"], timeout=T)
        assert sb.fs.read("/data/proj/file") == b"kept\n"
    assert sb.stopped_gracefully
    assert lock_state(store.disk_path("data")) is None
    assert fs_state(store.disk_path("data")) == "clean"  # unmounted, not just dropped
    # Another sandbox, another mount point: the files are there.
    with boot(image, [store.mount("data", "/srv/other")]) as sb2:
        assert sb2.fs.read("/srv/other/proj/file") == b"kept\n"
        assert not sb2.fs.exists("/data")  # an ephemeral root: the old mount point is gone


def test_read_only_volume_refuses_writes(kernel_path, image, store):
    store.create("ref", "32M")
    with boot(image, [store.mount("ref", "/seed")]) as sb:
        sb.fs.write("/seed/readme", b"seeded\n")
    with boot(image, [store.mount("ref", "/ref", read_only=True)]) as sb:
        m = mounts_of(sb)
        assert "ro" in m["/ref"][2], m
        assert sb.fs.read("/ref/readme") == b"seeded\n"
        with pytest.raises(AgentError) as e:
            sb.fs.write("/ref/new", b"x")
        assert e.value.errno == errno.EROFS
        r = sb.exec(["sh", "-c", "echo x > /ref/readme"], timeout=T)
        assert r.exit_code != 0 and b"Read-only file system" in r.stderr
        # The device itself is read-only to the guest, not only the mount.
        dev = m["/ref"][0].rsplit("/", 1)[1]
        assert sb.fs.read(f"/sys/block/{dev}/ro") == b"1\n"
    assert fs_state(store.disk_path("ref")) == "clean"


def test_two_volumes_land_at_their_own_paths(kernel_path, image, store, tmp_path):
    store.create("one", "32M")
    store.create("two", "32M")
    odd = "/srv/a b,c:d"  # needs %-escapes on the command line
    writable = vmm.Sandbox.format_writable_disk(tmp_path / "state.ext4", "64M")
    with boot(image, [store.mount("two", odd), store.mount("one", "/srv")],
              writable_disk=writable) as sb:
        assert [v.name for v in sb.volumes] == ["one", "two"]  # parents first
        m = mounts_of(sb)
        assert m["/srv"][1] == m[odd][1] == "ext4" and m["/srv"][0] != m[odd][0], m
        sb.fs.write("/srv/which", b"one\n")
        sb.fs.write(odd + "/which", b"two\n")
        sb.fs.write("/root/on-writable", b"w\n")
    # Swapped: each disk is found by its serial, whatever its place among the devices.
    with boot(image, [store.mount("one", "/x"), store.mount("two", "/w")],
              writable_disk=writable) as sb:
        assert sb.fs.read("/x/which") == b"one\n"
        assert sb.fs.read("/w/which") == b"two\n"
        assert sb.fs.read("/root/on-writable") == b"w\n"  # the writable disk is still vdb
        assert sb.fs.exists("/srv")  # the mount point made in the writable layer stays ...
        assert sb.fs.exists("/x/a b,c:d")  # ... and the nested one, made inside "one"


def test_a_volume_attached_read_write_is_not_shared(kernel_path, image, store):
    store.create("shared", "32M")
    with boot(image, [store.mount("shared", "/s")]) as sb:
        for ro in (False, True):
            with pytest.raises(ConfigError, match="volume 'shared' cannot be attached .* "
                                                  "in use by another sandbox"):
                boot(image, [store.mount("shared", "/s", read_only=ro)])
        with pytest.raises(Exception, match="in use"):
            store.remove("shared")
        assert sb.exec(["true"], timeout=T).exit_code == 0  # the holder is unharmed
    # Read-only attachments share.
    with boot(image, [store.mount("shared", "/s", read_only=True)]) as a, \
            boot(image, [store.mount("shared", "/s", read_only=True)]) as b:
        assert a.fs.exists("/s/lost+found") and b.fs.exists("/s/lost+found")
        assert lock_state(store.disk_path("shared")) == "ro"


def _hostile_image(directory):
    """The busybox image plus a layer with /data -> /etc, /link -> / and /flat a file."""
    from vmm.images.rootfs import LayerSource, build_root_disk
    directory.mkdir(parents=True, exist_ok=True)
    base = busybox_layer(directory / "busybox.tar")
    evil = directory / "evil.tar"
    with tarfile.open(evil, "w") as t:
        for name, target in (("data", "/etc"), ("link", "/")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            t.addfile(ti)
        ti = tarfile.TarInfo("flat")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"abc"))
    out = directory / "hostile.erofs"
    media = "application/vnd.oci.image.layer.v1.tar"
    build_root_disk([LayerSource(str(base), media), LayerSource(str(evil), media)], str(out))
    return out


@pytest.fixture(scope="module")
def hostile_image(tmp_path_factory):
    return _hostile_image(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("guest_path,why", [
    ("/data", "mount point /data is a symbolic link (not followed)"),
    ("/link/etc", "mount point /link is a symbolic link (not followed)"),
    ("/flat/x", "mount point /flat is not a directory"),
])
def test_symlinks_in_the_image_are_never_followed(kernel_path, hostile_image, store,
                                                  guest_path, why):
    store.create("v", "32M")
    with pytest.raises(vmm.BootFailed) as e:
        boot(hostile_image, [store.mount("v", guest_path)])
    assert e.value.reason == f"volume 'v' at {guest_path} could not be mounted: {why}"
    assert lock_state(store.disk_path("v")) is None  # released with the failed sandbox


def test_a_disk_that_is_not_ext4_is_a_boot_failure_naming_the_volume(kernel_path, image, tmp_path):
    junk = tmp_path / "junk.ext4"
    junk.write_bytes(b"\0" * (4 << 20))
    with pytest.raises(vmm.BootFailed) as e:
        boot(image, [VolumeMount(str(junk), "/junk")])
    assert e.value.reason.startswith(f"volume {junk} at /junk could not be mounted: "
                                     "mounting it on /junk: "), e.value.reason


def test_after_a_crash_a_read_only_mount_skips_the_journal(kernel_path, image, store):
    store.create("crashy", "32M")
    sb = boot(image, [store.mount("crashy", "/c")])
    try:
        sb.exec(["sh", "-c", "echo synced > /c/f && sync"], timeout=T)
        sb.machine.stop()  # forced, as a killed supervisor would leave it: no unmount
    finally:
        sb.stop()
    assert fs_state(store.disk_path("crashy")) == "clean"  # ext4: clean, but ...
    out = subprocess.run(["dumpe2fs", "-h", store.disk_path("crashy")], capture_output=True,
                         text=True).stdout
    assert "needs_recovery" in out  # ... its journal was never closed
    # A read-only device cannot replay it: the agent mounts without it (what was synced).
    with boot(image, [store.mount("crashy", "/c", read_only=True)]) as sb:
        assert sb.fs.read("/c/f") == b"synced\n"
        assert "needs journal recovery" in sb.console
    # Read-write, the journal is replayed as usual.
    with boot(image, [store.mount("crashy", "/c")]) as sb:
        assert sb.fs.read("/c/f") == b"synced\n"
    assert "needs_recovery" not in subprocess.run(
        ["dumpe2fs", "-h", store.disk_path("crashy")], capture_output=True, text=True).stdout
