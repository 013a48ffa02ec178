"""Sandbox.create(root_dir=) without a VM: the exclusive choice of root, the directory's
checks, the kernel command line the guest gets, and the BootFailed reason taken from the
agent's console line. Fast tier (the real guests are in test_sandbox_rootdir.py)."""
import os

import pytest

import vmm
from vmm.errors import ConfigError
from vmm.sandbox.agent_cmdline import ROOT_TAG, agent_cmdline
from vmm.sandbox.root_dir import check_root_dir, root_failure


@pytest.fixture
def rootfs(tmp_path):
    d = tmp_path / "rootfs"
    (d / "bin").mkdir(parents=True)
    return d


def test_neither_image_nor_root_dir():
    with pytest.raises(ConfigError, match="exactly one root.*neither"):
        vmm.Sandbox.create()


def test_both_image_and_root_dir(tmp_path, rootfs):
    image = tmp_path / "image"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="exactly one root.*not both"):
        vmm.Sandbox.create(image, root_dir=rootfs)


def test_missing_root_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"root directory .*/nope does not exist"):
        vmm.Sandbox.create(root_dir=tmp_path / "nope")


def test_root_dir_that_is_a_file(tmp_path):
    f = tmp_path / "rootfs.tar"
    f.write_bytes(b"not a directory")
    with pytest.raises(ConfigError, match=r"root directory .*rootfs.tar is not a directory"):
        vmm.Sandbox.create(root_dir=f)


def test_dangling_symlink_root_dir(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match="does not exist"):
        vmm.Sandbox.create(root_dir=tmp_path / "link")


@pytest.mark.parametrize("bad", ["", 5])
def test_root_dir_not_a_path(bad):
    with pytest.raises(ConfigError, match="root_dir"):
        vmm.Sandbox.create(root_dir=bad)


def test_host_root_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="host's own /"):
        check_root_dir("/")
    (tmp_path / "slash").symlink_to("/")
    with pytest.raises(ConfigError, match="host's own /"):
        check_root_dir(tmp_path / "slash")


def test_root_dir_is_resolved(tmp_path, rootfs, monkeypatch):
    (tmp_path / "current").symlink_to(rootfs)
    monkeypatch.chdir(tmp_path)
    assert check_root_dir("current") == os.path.realpath(rootfs)
    assert check_root_dir(os.fsencode(rootfs)) == os.path.realpath(rootfs)


def test_root_dir_checked_before_other_arguments_boot_nothing(tmp_path, rootfs):
    # The other checks still apply with a root directory (nothing boots for any of them).
    with pytest.raises(ConfigError, match="writable disk .*format_writable_disk"):
        vmm.Sandbox.create(root_dir=rootfs, writable_disk=tmp_path / "nope.ext4")
    with pytest.raises(ConfigError, match="hostname"):
        vmm.Sandbox.create(root_dir=rootfs, hostname="a b")


def test_cmdline_with_root_dir():
    c = agent_cmdline(writable=True, hostname="box", root_dir=True).split()
    # The tag instead of a device, and the writable disk is the first disk then.
    assert c[:5] == ["quiet", f"vmm.root={ROOT_TAG}", "vmm.rootfstype=virtiofs",
                     "vmm.data=/dev/vda", "vmm.port=1024"]
    c = agent_cmdline(writable=False, hostname=None, root_dir=True).split()
    assert "vmm.data=none" in c and "vmm.rootfstype=virtiofs" in c
    # Without it, the image disk line is as before.
    c = agent_cmdline(writable=True, hostname=None).split()
    assert "vmm.root=/dev/vda" in c and "vmm.data=/dev/vdb" in c
    assert not any(p.startswith("vmm.rootfstype") for p in c)


def test_root_tag_fits_virtio_fs():
    # virtio-fs config space: 36 bytes of tag; the interface forbids NUL, ',' and ':'.
    assert 1 <= len(ROOT_TAG.encode()) <= 36 and not set(ROOT_TAG) & {"\0", ",", ":", " "}


def test_root_failure_reason():
    console = ("[    0.5] virtio-fs: tag <vmm-root> not found\n"
               f"agent: root directory {ROOT_TAG}: no virtio-fs device with this tag\n"
               "agent: FATAL: cannot set up the root file system; powering off\n")
    assert root_failure(console, "/srv/rootfs") == (
        "the root directory /srv/rootfs could not be mounted in the guest: "
        "no virtio-fs device with this tag")
    assert root_failure("agent: FATAL: volume vmm-vol0: x\n", "/srv/rootfs") is None
    assert root_failure("agent: FATAL: cannot set up the root file system\n", "/srv/rootfs") is None


def test_async_create_takes_root_dir(tmp_path):
    import asyncio
    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(vmm.AsyncSandbox.create(root_dir=tmp_path / "nope"))


def test_root_share_keeps_its_cache_across_opens():
    """The root is an overlay lower layer, which must not change under the guest anyway:
    virtiofsd runs with cache=always for it (every exec would re-read its binary over
    FUSE otherwise), while other shared dirs keep cache=auto."""
    from vmm.devices import SharedDir
    from vmm.engines.virtiofsd import virtiofsd_argv

    def opts(**kw):
        argv = virtiofsd_argv("/v", "/s", 5, as_user=False, **kw)
        return [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "cache=always" in opts(cache="always") and "cache=auto" not in opts(cache="always")
    assert {"cache=auto", "timeout=0"} <= set(opts())
    assert SharedDir("/s", "t").cache == "auto"
    with pytest.raises(ConfigError, match="cache must be 'auto' or 'always'"):
        SharedDir("/s", "t", cache="none")


def test_sandbox_shares_the_root_read_only_with_cache_always(tmp_path, rootfs, monkeypatch):
    """What _boot hands Machine for root_dir: one SharedDir, read-only, tag vmm-root,
    cache=always, and no image disk (captured, not booted)."""
    import vmm.sandbox.sandbox as sandbox_mod
    seen = {}

    class Captured(Exception):
        pass

    def fake_machine(*args, **kw):
        seen.update(kw)
        raise Captured()
    monkeypatch.setattr(sandbox_mod, "Machine", fake_machine)
    with pytest.raises(Captured):
        vmm.Sandbox.create(root_dir=rootfs, network=None, kernel=tmp_path / "k",
                           initrd=tmp_path / "i")
    (shared,) = seen["shared_dirs"]
    assert (shared.host_path, shared.tag, shared.read_only, shared.cache) == \
        (str(rootfs.resolve()), ROOT_TAG, True, "always")
    assert seen["disks"] == []
    assert "vmm.rootfstype=virtiofs" in seen["cmdline"].split()
