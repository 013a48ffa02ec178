"""Host directories in Sandbox.create(volumes=[HostDir(...)]) without a VM (issue 14):
what a HostDir is, the checks before anything boots, one mount order with the disk
volumes, the `vmm.fs=` argument, the SharedDir each becomes, and BootFailed naming the
directory the agent could not mount. Fast tier; real guests: test_sandbox_hostdir_vm.py.
"""
import os

import pytest

import vmm
from vmm.errors import ConfigError
from vmm.sandbox.agent_cmdline import (VOLUME_ARG_BUDGET, agent_cmdline, shared_dir_arg,
                                       shared_dir_tag, volume_arg)
from vmm.sandbox.volumes import (HostDir, VolumeMount, attach, check_mounts, lock_mounts,
                                 mount_failure)


@pytest.fixture
def dirs(tmp_path):
    out = []
    for n in ("a", "b", "c"):
        (tmp_path / n).mkdir()
        out.append(str(tmp_path / n))
    return out


@pytest.fixture
def disk(tmp_path):
    p = tmp_path / "vol.ext4"
    p.write_bytes(b"\0" * 4096)
    return str(p)


def test_host_dir_is_frozen_checked_and_absolute(tmp_path, monkeypatch, dirs):
    monkeypatch.chdir(tmp_path)
    h = HostDir("a/", "/app/", read_only=True)
    assert (h.host_path, h.guest_path, h.read_only) == (dirs[0], "/app", True)
    assert h.label == f"host directory {dirs[0]}"
    assert HostDir(tmp_path / "b", "/b").host_path == dirs[1]   # a PathLike too
    with pytest.raises(Exception):
        h.guest_path = "/etc"
    for guest, match in (("/app/../etc", "component"), ("rel", "not absolute"),
                         ("/proc/x", "under /proc"), ("/", "mounted at /")):
        with pytest.raises(ConfigError, match=match):
            HostDir(dirs[0], guest)
    with pytest.raises(ConfigError, match="bool"):
        HostDir(dirs[0], "/app", read_only="yes")
    for bad in ("", "a\0b"):
        with pytest.raises(ConfigError, match="non-empty path"):
            HostDir(bad, "/app")


def test_both_kinds_in_one_mount_order_parents_first(dirs, disk):
    mounts = check_mounts([HostDir(dirs[0], "/srv/a/b"), VolumeMount(disk, "/srv/a"),
                           HostDir(dirs[1], "/srv"), HostDir(dirs[2], "/w")])
    assert [m.guest_path for m in mounts] == ["/srv", "/w", "/srv/a", "/srv/a/b"]
    assert isinstance(mounts[2], VolumeMount)


def test_host_dir_refusals(dirs, disk, tmp_path):
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    for path, why in ((tmp_path / "nope", "does not exist"), (tmp_path / "file", "is not a directory"),
                      (tmp_path / "dangling", "is not a directory")):
        with pytest.raises(ConfigError) as e:
            check_mounts([HostDir(path, "/app")])
        assert str(e.value) == f"host directory {path}: {path} {why}"
    with pytest.raises(ConfigError, match=f"host directory {dirs[1]} and host directory "
                                          f"{dirs[0]} are both mounted at /d"):
        check_mounts([HostDir(dirs[0], "/d"), HostDir(dirs[1], "/d/")])
    with pytest.raises(ConfigError, match=f"host directory {dirs[0]} and volume {disk} are both"):
        check_mounts([VolumeMount(disk, "/d"), HostDir(dirs[0], "/d")])
    with pytest.raises(ConfigError, match="33 host directories: a sandbox mounts at most 32"):
        check_mounts([HostDir(dirs[0], f"/v{i}") for i in range(33)])
    with pytest.raises(ConfigError, match="list of VolumeMount or HostDir"):
        check_mounts(HostDir(dirs[0], "/d"))
    with pytest.raises(ConfigError, match="VolumeMount or HostDir, not './a:/d'"):
        check_mounts(["./a:/d"])
    # one directory at two paths is fine (two tags), and takes no lock
    both = check_mounts([HostDir(dirs[0], "/x"), HostDir(dirs[0], "/y", read_only=True)])
    assert lock_mounts(both) == []


def test_shared_dir_arg_encodes_tags_and_paths_for_the_agent():
    assert shared_dir_tag(0) == "vmm-fs-0"
    assert all(1 <= len(shared_dir_tag(i).encode()) <= 36 for i in range(1000))
    arg = shared_dir_arg([(shared_dir_tag(0), "/app", False), ("t a,g:%", "/a b,c:d%", True)])
    assert arg == "vmm.fs=vmm-fs-0:rw:/app,t%20a%2Cg%3A%25:ro:/a%20b%2Cc%3Ad%25"
    assert shared_dir_arg([]) == ""
    c = agent_cmdline(writable=False, hostname=None,
                      volumes=" ".join([volume_arg([("vmm-vol0", "/d", True)]), arg]))
    assert " vmm.vol=vmm-vol0:ro:/d vmm.fs=vmm-fs-0:rw:/app," in c


def test_volumes_and_shared_dirs_share_one_budget():
    paths = [(shared_dir_tag(i), "/" + "x" * 100 + str(i), False) for i in range(10)]
    alone = shared_dir_arg(paths[:5])
    assert len(alone) < VOLUME_ARG_BUDGET
    vol = volume_arg([("vmm-vol0", "/" + "y" * (VOLUME_ARG_BUDGET - len(alone) - 5), False)])
    with pytest.raises(ConfigError, match=rf"5 volume and shared dir mounts need \d+ bytes .* "
                                          rf"{VOLUME_ARG_BUDGET}"):
        shared_dir_arg(paths[:5], used=len(vol))
    with pytest.raises(ConfigError, match=f"over the {VOLUME_ARG_BUDGET} bytes"):
        shared_dir_arg(paths)


def test_attach_makes_shared_dirs_disks_and_the_command_line(dirs, disk, tmp_path):
    from vmm.devices import Disk, SharedDir
    os.symlink(dirs[1], tmp_path / "via-link")
    mounts = check_mounts([HostDir(dirs[0], "/app"), VolumeMount(disk, "/data", read_only=True),
                           HostDir(tmp_path / "via-link", "/data/ref", read_only=True)])
    a = attach(mounts)
    assert a.disks == [Disk(disk, read_only=True, serial="vmm-vol0")]
    # what virtiofsd serves is the checked directory, resolved
    assert a.shared_dirs == [SharedDir(dirs[0], tag="vmm-fs-0", read_only=False),
                             SharedDir(dirs[1], tag="vmm-fs-1", read_only=True)]
    assert a.cmdline == "vmm.vol=vmm-vol0:ro:/data vmm.fs=vmm-fs-0:rw:/app,vmm-fs-1:ro:/data/ref"
    assert a.ids == ("vmm-fs-0", "vmm-vol0", "vmm-fs-1")
    assert attach(()) == ([], [], "", ())


def test_mount_failure_names_the_host_directory(dirs, disk):
    mounts = [HostDir(dirs[0], "/app"), VolumeMount(disk, "/data", name="data")]
    ids = ["vmm-fs-0", "vmm-vol0"]
    console = ("agent: FATAL: shared dir vmm-fs-0: mount point /app is a symbolic link "
               "(not followed)\nagent: FATAL: cannot mount the volumes; powering off\n")
    assert mount_failure(console, mounts, ids) == (
        f"host directory {dirs[0]} at /app could not be mounted: mount point /app is a "
        "symbolic link (not followed)")
    # a volume's line still names the volume; the kinds do not mix up equal ids
    assert mount_failure("agent: FATAL: volume vmm-vol0: boom", mounts, ids) == \
        "volume 'data' at /data could not be mounted: boom"
    assert mount_failure("agent: FATAL: volume vmm-fs-0: boom", mounts, ids) == \
        "volume vmm-fs-0 could not be mounted: boom"
    assert mount_failure("agent: FATAL: shared dir other: no", mounts, ids) == \
        "shared dir other could not be mounted: no"


def test_sandbox_create_refuses_a_missing_host_dir_before_booting(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match=f"host directory {tmp_path}/src: {tmp_path}/src "
                                          "does not exist"):
        vmm.Sandbox.create(image, volumes=[HostDir(tmp_path / "src", "/app")],
                           kernel=str(image), initrd=str(image), network=None)
