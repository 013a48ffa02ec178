"""Volumes without a VM: `-v` parsing, guest-path checks, the vmm.vol= argument, mount
checks and locks, the named-volume store, BootFailed's volume reason. Fast tier."""
import os
import threading

import pytest

import vmm
from vmm.errors import ConfigError
from vmm.home import Home
from vmm.sandbox.agent_cmdline import (VOLUME_ARG_BUDGET, agent_cmdline, encode_guest_path,
                                       volume_arg, volume_serial)
from vmm.sandbox.volume_store import (VolumeExists, VolumeInUse, VolumeNotFound, VolumeStore,
                                      lock_state)
from vmm.sandbox.volumes import (VolumeMount, VolumeSpec, check_guest_path, check_mounts,
                                 check_volume_name, lock_mounts, mount_failure,
                                 parse_volume_spec)


# --- -v SRC:DEST ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec,want", [
    ("data:/data", ("named", "data", "/data", False)),
    ("data:/data:ro", ("named", "data", "/data", True)),
    ("data:/data:rw", ("named", "data", "/data", False)),
    ("my.vol-1_x:/srv/app/", ("named", "my.vol-1_x", "/srv/app", False)),
    ("./src:/app", ("host", "./src", "/app", False)),
    ("../up:/app:ro", ("host", "../up", "/app", True)),
    ("/abs/path:/mnt/x", ("host", "/abs/path", "/mnt/x", False)),
    (".:/work", ("host", ".", "/work", False)),
])
def test_parse_volume_spec(spec, want):
    got = parse_volume_spec(spec)
    assert isinstance(got, VolumeSpec) and tuple(got) == want
    kind, src, dest, ro = got  # the tuple shape the CLI unpacks
    assert (kind, src, dest, ro) == want


@pytest.mark.parametrize("spec,match", [
    ("", "SRC:DEST"), ("data", "SRC:DEST"), (":/data", "SRC:DEST"), ("data:", "SRC:DEST"),
    ("data:relative", "not absolute"), ("data:/", "mounted at /"),
    ("data:/a/../etc", r"'\.\.' component"), ("data:/a/./b", "component"),
    ("data:/a//b", "component"), ("data:/proc", "under /proc"), ("data:/dev/x", "under /dev"),
    ("data:/sys/kernel", "under /sys"), ("data:/data:rx", "':ro' or ':rw'"),
    ("data:/a:b", "':ro' or ':rw'"), ("bad name:/data", "bad volume name"),
    ("-x:/data", "bad volume name"), ("data:/a\nb", "control character"),
    (None, "SRC:DEST"),
])
def test_parse_volume_spec_rejects(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_volume_spec(spec)


@pytest.mark.parametrize("path", ["/data", "/a b", "/x,y:z", "/ünï/cödé", "/tmp/cache",
                                  "/procfs", "/devices", "/" + "a" * 239])
def test_guest_paths_accepted(path):
    assert check_guest_path(path) == path


@pytest.mark.parametrize("path", ["", "data", "/", "//", "/..", "/a/..", "/a/../../etc",
                                  "/.", "/a/.", "/a\0b", "/a\tb", "/\x7f", "/dev", "/proc/1",
                                  "/" + "a" * 241, 5, None, b"/data"])
def test_hostile_guest_paths_refused(path):
    with pytest.raises(ConfigError, match="volume guest path|mounted at /"):
        check_guest_path(path)


@pytest.mark.parametrize("name", ["a", "data", "A1", "x" * 64, "v.1_-"])
def test_volume_names_ok(name):
    assert check_volume_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "-x", "_x", "a/b", "a b", "x" * 65,
                                  "a:b", "a\0", 3, None])
def test_volume_names_rejected(name):
    with pytest.raises(ConfigError, match="bad volume name"):
        check_volume_name(name)


# --- the kernel command line -------------------------------------------------------------------
def test_volume_arg_encodes_paths_for_the_agent():
    arg = volume_arg([(volume_serial(0), "/data", False), (volume_serial(1), "/a b,c:d%", True)])
    assert arg == "vmm.vol=vmm-vol0:rw:/data,vmm-vol1:ro:/a%20b%2Cc%3Ad%25"
    assert " " not in arg  # one kernel parameter
    assert encode_guest_path("/ü") == "/%C3%BC"
    assert volume_arg([]) == ""
    assert all(len(volume_serial(i).encode()) <= 20 for i in range(1000))


def test_volume_arg_goes_on_the_command_line():
    c = agent_cmdline(writable=False, hostname=None, volumes=volume_arg([("vmm-vol0", "/d", True)]),
                      extra="vmm.debug=1")
    assert c.split()[-2:] == ["vmm.vol=vmm-vol0:ro:/d", "vmm.debug=1"]
    assert "vmm.vol" not in agent_cmdline(writable=False, hostname=None)


def test_volume_arg_budget_is_a_clear_error():
    many = [(volume_serial(i), "/" + ",".join("x" * 20 for _ in range(6)) + str(i), False)
            for i in range(8)]
    with pytest.raises(ConfigError,
                       match=rf"8 volume mounts need \d+ bytes .* {VOLUME_ARG_BUDGET}"):
        volume_arg(many)


# --- mounts and locks -------------------------------------------------------------------------
@pytest.fixture
def disks(tmp_path):
    out = []
    for n in ("a", "b", "c"):
        p = tmp_path / f"{n}.ext4"
        p.write_bytes(b"\0" * 4096)
        out.append(str(p))
    return out


def test_volume_mount_is_frozen_and_checked(disks):
    m = VolumeMount(disks[0], "/data/", read_only=True, name="a")
    assert m.guest_path == "/data" and m.read_only and m.label == "volume 'a'"
    with pytest.raises(Exception):
        m.guest_path = "/etc"
    with pytest.raises(ConfigError, match="component"):
        VolumeMount(disks[0], "/data/../etc")
    with pytest.raises(ConfigError, match="bool"):
        VolumeMount(disks[0], "/data", read_only="yes")


def test_check_mounts_orders_parents_first(disks):
    mounts = check_mounts([VolumeMount(disks[0], "/srv/a/b"), VolumeMount(disks[1], "/srv"),
                           VolumeMount(disks[2], "/srv/a")])
    assert [m.guest_path for m in mounts] == ["/srv", "/srv/a", "/srv/a/b"]
    assert check_mounts(None) == () and check_mounts([]) == ()


def test_check_mounts_refusals(disks, tmp_path):
    with pytest.raises(ConfigError, match="both mounted at /d"):
        check_mounts([VolumeMount(disks[0], "/d", name="a"), VolumeMount(disks[1], "/d/")])
    with pytest.raises(ConfigError, match="attached twice"):
        check_mounts([VolumeMount(disks[0], "/d"), VolumeMount(disks[0], "/e", read_only=True)])
    with pytest.raises(ConfigError, match="does not exist"):
        check_mounts([VolumeMount(str(tmp_path / "nope.ext4"), "/d")])
    with pytest.raises(ConfigError, match="image or writable disk"):
        check_mounts([VolumeMount(disks[0], "/d")], disks[0], None)
    with pytest.raises(ConfigError, match="list of VolumeMount"):
        check_mounts(VolumeMount(disks[0], "/d"))
    with pytest.raises(ConfigError, match="VolumeMount"):
        check_mounts(["data:/data"])
    with pytest.raises(ConfigError, match="33 volumes: a sandbox mounts at most 32"):
        check_mounts([VolumeMount(disks[0], f"/v{i}") for i in range(33)])


def test_rw_lock_excludes_everyone_ro_locks_share(disks):
    rw = VolumeMount(disks[0], "/d", name="a")
    ro = VolumeMount(disks[0], "/d", read_only=True, name="a")
    first = lock_mounts([rw])
    assert lock_state(disks[0]) == "rw"
    for other in (rw, ro):
        with pytest.raises(ConfigError,
                           match="volume 'a' cannot be attached .* in use by another sandbox"):
            lock_mounts([other])
    first[0].release()
    readers = [lock_mounts([ro]), lock_mounts([ro])]  # ro shares
    assert lock_state(disks[0]) == "ro"
    with pytest.raises(ConfigError, match="read-write: it is in use"):
        lock_mounts([rw])
    for r in readers:
        r[0].release()
    assert lock_state(disks[0]) is None


def test_lock_mounts_is_all_or_nothing(disks):
    held = lock_mounts([VolumeMount(disks[1], "/b")])
    with pytest.raises(ConfigError, match="in use"):
        lock_mounts([VolumeMount(disks[0], "/a"), VolumeMount(disks[1], "/b")])
    assert lock_state(disks[0]) is None  # the first lock was given back
    held[0].release()


def test_sandbox_create_refuses_a_volume_in_use_before_booting(disks, tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"\0" * 4096)
    held = lock_mounts([VolumeMount(disks[0], "/d")])
    try:
        with pytest.raises(ConfigError, match="in use by another sandbox"):
            vmm.Sandbox.create(image, volumes=[VolumeMount(disks[0], "/d", name="a")],
                               kernel=str(image), initrd=str(image), network=None)
    finally:
        held[0].release()
    with pytest.raises(ConfigError, match="both mounted"):
        vmm.Sandbox.create(image, volumes=[VolumeMount(disks[0], "/d"),
                                           VolumeMount(disks[1], "/d")])


def test_mount_failure_names_the_volume(disks):
    mounts = [VolumeMount(disks[0], "/data", name="data"), VolumeMount(disks[1], "/x")]
    console = ("[    1.0] some kernel line\n"
               "agent: FATAL: volume vmm-vol1: mount point /x is a symbolic link (not followed)\n"
               "agent: FATAL: cannot mount the volumes; powering off\n")
    why = mount_failure(console, mounts, [volume_serial(0), volume_serial(1)])
    assert why == (f"volume {disks[1]} at /x could not be mounted: mount point /x is a "
                   "symbolic link (not followed)")
    assert mount_failure("agent: FATAL: volume vmm-vol0: boom", mounts,
                         ["vmm-vol0", "vmm-vol1"]).startswith("volume 'data' at /data")
    assert mount_failure("agent: FATAL: cannot set up the root", mounts, ["vmm-vol0"]) is None


# --- the store ---------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    return VolumeStore(Home(tmp_path / "home"))


def test_store_create_list_remove(store, tmp_path):
    assert store.list() == []
    info = store.create("data", "64M")
    assert info["name"] == "data" and info["size_bytes"] == 64 << 20
    assert info["path"] == str(tmp_path / "home" / "volumes" / "data.ext4")
    assert 0 < info["disk_bytes"] < info["size_bytes"]  # sparse
    assert info["in_use"] is None and info["created_at"].endswith("Z")
    with open(info["path"], "rb") as f:  # an ext4 superblock: magic 0xEF53 at 1024+56
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef"
    store.create("b2", 32 << 20)
    assert [v["name"] for v in store.list()] == ["b2", "data"]
    with pytest.raises(VolumeExists, match="'data' already exists"):
        store.create("data")
    m = store.mount("data", "/data", read_only=True)
    assert m == VolumeMount(info["path"], "/data", True, "data")
    assert store.remove("data") is True
    assert [v["name"] for v in store.list()] == ["b2"]
    with pytest.raises(VolumeNotFound, match="'data' not found"):
        store.remove("data")
    with pytest.raises(VolumeNotFound):
        store.mount("data", "/data")
    assert store.remove("data", missing_ok=True) is False
    assert sorted(os.listdir(store.root)) == ["b2.ext4", "b2.json"]  # no temporaries left


def test_store_refuses_bad_names_and_sizes(store):
    for bad in ("../x", "a/b", ".x", ""):
        with pytest.raises(ConfigError, match="bad volume name"):
            store.create(bad, "64M")
    with pytest.raises(ConfigError, match="outside"):
        store.create("x", "1K")
    assert store.list() == []


def test_store_never_removes_a_volume_in_use(store):
    info = store.create("busy", "32M")
    for ro in (False, True):
        locks = lock_mounts([store.mount("busy", "/b", read_only=ro)])
        assert store.info("busy")["in_use"] == ("ro" if ro else "rw")
        with pytest.raises(VolumeInUse, match="'busy' is in use"):
            store.remove("busy")
        locks[0].release()
    assert os.path.exists(info["path"])
    store.remove("busy")


def test_concurrent_creates_one_wins(store):
    results = []

    def create():
        try:
            store.create("same", "32M")
            results.append("ok")
        except VolumeExists:
            results.append("exists")

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists"] * 3 + ["ok"]
    assert [v["name"] for v in store.list()] == ["same"]


def test_store_lists_a_volume_whose_metadata_is_lost(store):
    info = store.create("m", "32M")
    os.unlink(os.path.join(store.root, "m.json"))
    (again,) = store.list()
    assert again["name"] == "m" and again["created_at"].endswith("Z")
    assert again["path"] == info["path"]
