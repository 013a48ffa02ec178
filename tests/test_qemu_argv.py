"""The qemu engine's command line (fast: nothing is started)."""
import os

import pytest

from vmm import QemuOptions
from vmm.engines.qemu import TB_SIZE_ENV, TB_SIZE_MIB, cmdline_prefix, qemu_argv, vhost_user_args
from vmm.engines.qemu_balloon import BALLOON_ENV
from vmm.errors import ConfigError
from vmm.machine import MachineSpec


def _pairs(argv):
    return [(argv[i], argv[i + 1]) for i in range(1, len(argv) - 1) if argv[i].startswith("-")]


def test_argv_for_a_two_cpu_machine(monkeypatch):
    monkeypatch.delenv(TB_SIZE_ENV, raising=False)
    monkeypatch.delenv(BALLOON_ENV, raising=False)
    spec = MachineSpec(kernel="/k/vmlinux", initrd="/k/initrd.gz", cmdline="quiet x=1",
                       cpus=2, memory_mib=192)
    argv = qemu_argv(spec, "/usr/bin/qemu-system-x86_64", debugcon_fd=7)
    pairs = _pairs(argv)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert ("-smp", "2") in pairs and ("-m", "192") in pairs
    assert ("-object", "memory-backend-memfd,id=mem,size=192M,share=on,merge=off") in pairs
    assert ("-accel", f"tcg,tb-size={TB_SIZE_MIB}") in pairs
    assert ("-kernel", "/k/vmlinux") in pairs and ("-initrd", "/k/initrd.gz") in pairs
    assert ("-append", cmdline_prefix() + " quiet x=1") in pairs
    assert ("-chardev", "socket,id=dbg,fd=7") in pairs
    assert ("-device", "isa-debugcon,iobase=0x440,chardev=dbg") in pairs
    machine = dict(pairs)["-M"]
    assert machine.startswith("microvm,") and "acpi=off" in machine and "memory-backend=mem" in machine
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot", "-nographic"):
        assert flag in argv


def test_no_initrd_no_initrd_flag(monkeypatch):
    monkeypatch.delenv(BALLOON_ENV, raising=False)
    argv = qemu_argv(MachineSpec(kernel="/k"), "qemu", debugcon_fd=3)
    assert "-initrd" not in argv
    assert argv[argv.index("-append") + 1] == cmdline_prefix()


def test_vhost_user_devices_become_chardevs_and_devices():
    args = vhost_user_args([
        {"kind": "blk", "socket": "/run/blk.sock", "options": {"num-queues": 1}},
        {"kind": "vsock", "socket": "/run/vsock.sock"},
        {"kind": "net", "socket": "/run/net.sock"},
    ])
    assert args == [
        "-chardev", "socket,id=vu0,path=/run/blk.sock",
        "-device", "vhost-user-blk,chardev=vu0,num-queues=1",
        "-chardev", "socket,id=vu1,path=/run/vsock.sock",
        "-device", "vhost-user-vsock-device,chardev=vu1",
        "-chardev", "socket,id=vu2,path=/run/net.sock",
        "-netdev", "vhost-user,id=net2,chardev=vu2",
        "-device", "virtio-net-device,netdev=net2",
    ]


@pytest.mark.parametrize("dev, message", [
    ({"kind": "scsi", "socket": "/s"}, "unknown kind 'scsi'"),
    ({"kind": "blk"}, "no socket path"),
    ({"kind": "blk", "socket": "/a,b"}, "contains a comma"),
])
def test_bad_vhost_user_devices_are_named(dev, message):
    with pytest.raises(ConfigError, match=message):
        vhost_user_args([dev])


def test_hugepages_back_guest_ram_with_hugetlb_memfd():
    argv = qemu_argv(MachineSpec(kernel="/k", memory_mib=256, hugepages=True), "qemu", debugcon_fd=3)
    assert "memory-backend-memfd,id=mem,size=256M,share=on,hugetlb=on,hugetlbsize=2M,merge=off" in argv


def test_extra_qemu_args_are_appended():
    spec = MachineSpec(kernel="/k", options=QemuOptions(extra_args=["-d", "guest_errors"]))
    assert qemu_argv(spec, "qemu", debugcon_fd=3)[-2:] == ["-d", "guest_errors"]


def test_qemu_runs_sandboxed_by_default():
    pairs = _pairs(qemu_argv(MachineSpec(kernel="/k"), "qemu", debugcon_fd=3))
    assert ("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny") in pairs


def test_sandbox_can_be_turned_off():
    argv = qemu_argv(MachineSpec(kernel="/k", options=QemuOptions(sandbox=False)), "qemu", debugcon_fd=3)
    assert "-sandbox" not in argv


def test_guest_ram_is_not_offered_to_ksm_unless_asked():
    """QEMU's default mem-merge=on marks guest RAM MADV_MERGEABLE (finding 10): a cross-VM
    page-deduplication side channel where KSM runs."""
    def backend(options):
        argv = qemu_argv(MachineSpec(kernel="/k", options=options), "qemu", debugcon_fd=3)
        return [v for k, v in _pairs(argv) if k == "-object" and v.startswith("memory-backend")]
    def machine(options):
        argv = qemu_argv(MachineSpec(kernel="/k", options=options), "qemu", debugcon_fd=3)
        return dict(_pairs(argv))["-M"].split(",")
    assert backend(None) == ["memory-backend-memfd,id=mem,size=128M,share=on,merge=off"]
    assert "mem-merge=off" in machine(None)
    assert backend(QemuOptions(mem_merge=True)) == ["memory-backend-memfd,id=mem,size=128M,share=on,merge=on"]
    assert "mem-merge=on" in machine(QemuOptions(mem_merge=True))


def test_qemu_user_hands_over_kernel_initrd_and_sockets_as_descriptors(tmp_path):
    """QEMU running as a uid of its own cannot reach root's 0700 directories by path: the
    kernel and initrd become /proc/self/fd/N of files we opened; someone else's vhost-user
    blk socket is connected here and given as chardev fd=N; our own back end's socket is
    given to QEMU's uid alone (owner, mode 0700) and named relative to QEMU's working
    directory (entered as root), since the directories above it may be closed to that uid."""
    import socket
    from vmm.engines.qemu_user import QemuUser
    k, i = tmp_path / "vmlinux", tmp_path / "initrd"
    k.write_bytes(b"k")
    i.write_bytes(b"i")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "blk.sock"))
    listener.listen(1)
    user = QemuUser(4242)
    try:
        ours = tmp_path / "ours"
        ours.mkdir(mode=0o700)
        own = socket.socket(socket.AF_UNIX)
        own.bind(str(ours / "net.sock"))
        spec = MachineSpec(kernel=str(k), initrd=str(i), options=QemuOptions(
            vhost_user=[{"kind": "blk", "socket": str(tmp_path / "blk.sock")}]))
        argv = qemu_argv(spec, "qemu", debugcon_fd=3,
                         devices=[{"kind": "net", "socket": str(ours / "net.sock")}], user=user)
        st = os.stat(ours / "net.sock")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4242, 0o700)
        assert os.stat(ours).st_mode & 0o777 == 0o711
        assert "socket,id=vu0,path=net.sock" in argv and user.popen_args()["cwd"] == str(ours)
        own.close()
        pairs = dict(_pairs(argv))
        for flag, path in (("-kernel", k), ("-initrd", i)):
            fd = int(pairs[flag].removeprefix("/proc/self/fd/"))
            assert os.path.samestat(os.fstat(fd), os.stat(path)) and fd in user.pass_fds()
        [chardev] = [v for f, v in _pairs(argv) if f == "-chardev" and v.startswith("socket,id=vu1")]
        fd = int(chardev.removeprefix("socket,id=vu1,fd="))
        assert fd in user.pass_fds() and socket.socket(fileno=os.dup(fd)).getpeername() == str(tmp_path / "blk.sock")
        assert {k: v for k, v in user.popen_args().items() if k != "cwd"} == \
            {"user": 4242, "group": 4242, "extra_groups": []}
    finally:
        user.release()
        listener.close()
    assert user.pass_fds() == ()


def test_qemu_user_none_changes_nothing():
    from vmm.engines.qemu_user import QemuUser
    user = QemuUser(None)
    assert not user.active and user.popen_args() == {} and user.file("/k") == "/k"
    assert qemu_argv(MachineSpec(kernel="/k"), "qemu", debugcon_fd=3, user=user) == \
        qemu_argv(MachineSpec(kernel="/k"), "qemu", debugcon_fd=3)


@pytest.mark.parametrize("user", [0, -5, "root", True])
def test_bad_qemu_user_is_refused(user):
    with pytest.raises(ConfigError, match="QemuOptions.user"):
        QemuOptions(user=user)
def _accel(monkeypatch, env=None, **options):
    if env is None:
        monkeypatch.delenv(TB_SIZE_ENV, raising=False)
    else:
        monkeypatch.setenv(TB_SIZE_ENV, env)
    spec = MachineSpec(kernel="/k", options=QemuOptions(**options) if options else None)
    argv = qemu_argv(spec, "qemu", debugcon_fd=3)
    return argv[argv.index("-accel") + 1]


def test_translation_cache_default_and_overrides(monkeypatch):
    """The engine's smaller TCG cache by default (docs/architecture.md, QEMU engine
    memory); the environment for callers without engine options; QemuOptions first;
    0 gives QEMU's own default back."""
    assert 0 < TB_SIZE_MIB < 26            # below what a boot fills with QEMU's default
    assert _accel(monkeypatch) == f"tcg,tb-size={TB_SIZE_MIB}"
    assert _accel(monkeypatch, env="24") == "tcg,tb-size=24"
    assert _accel(monkeypatch, env="0") == "tcg"
    assert _accel(monkeypatch, env="24", tb_size_mib=8) == "tcg,tb-size=8"
    assert _accel(monkeypatch, tb_size_mib=0) == "tcg"


@pytest.mark.parametrize("env", ["lots", "-1", "4096", "1.5"])
def test_a_bad_translation_cache_size_in_the_environment_is_named(monkeypatch, env):
    with pytest.raises(ConfigError, match=TB_SIZE_ENV):
        _accel(monkeypatch, env=env)


@pytest.mark.parametrize("size", [-1, 1025, 2.5, True, "16"])
def test_a_bad_translation_cache_option_is_refused(size):
    with pytest.raises(ConfigError, match="tb_size_mib"):
        QemuOptions(tb_size_mib=size)


def test_the_guest_is_given_the_host_tsc_frequency():
    """A TCG guest's TSC is the host's: with an invariant host TSC the guest is told its
    frequency and keeps time with it (tests/test_guest_clock.py boots one)."""
    from vmm.engines.host_clock import host_tsc_khz, invariant_tsc
    prefix = cmdline_prefix()
    if invariant_tsc():
        assert prefix.endswith(f" tsc_early_khz={host_tsc_khz()} tsc=reliable")
    else:
        assert "tsc_early_khz" not in prefix
