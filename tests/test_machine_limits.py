"""Machine's limits that depend on the engine: the kernel command line shares Linux's
COMMAND_LINE_SIZE (2048 with the NUL) with the engine's own prefix, and each engine runs at
most so many vCPUs. Both are one clear ConfigError from Machine(), before anything starts."""
import importlib.util
import pathlib

import pytest

import vmm
from vmm.devices import Disk
from vmm.engines import kvm_backing, qemu_binary
from vmm.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("guest_build", ROOT / "guest" / "tests" / "build.py")
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)

NO_KVM = kvm_backing() in ("missing", "no-access")
needs_kvm = pytest.mark.skipif(NO_KVM, reason=f"/dev/kvm is {kvm_backing()}")
needs_qemu = pytest.mark.skipif(qemu_binary() is None, reason="qemu-system-x86_64 is not installed")
LIMIT = 2047  # bytes of command line, the NUL not counted


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    if guest_build.toolchain_missing():
        pytest.skip(guest_build.toolchain_missing())
    return guest_build.build_guest("hello", tmp_path_factory.mktemp("limits"))


def prefix_of(engine):
    if engine == "kvm":
        from vmm.engines.kvm import CMDLINE_PREFIX
        return CMDLINE_PREFIX
    from vmm.engines.qemu import BASE_CMDLINE
    return BASE_CMDLINE + " "


@pytest.mark.parametrize("engine", [pytest.param("kvm", marks=[needs_kvm, pytest.mark.kvm]),
                                    pytest.param("qemu", marks=[needs_qemu, pytest.mark.qemu])])
def test_command_line_limit_counts_the_engine_prefix(hello, engine):
    room = LIMIT - len(prefix_of(engine).encode())
    with vmm.Machine(hello, engine=engine, cmdline="x" * room):
        pass  # exactly full: accepted
    with pytest.raises(ConfigError) as e:
        vmm.Machine(hello, engine=engine, cmdline="x" * (room + 1))
    msg = str(e.value)
    for part in (f"{room + 1} bytes", f"{engine} engine", f"{LIMIT - room}-byte prefix",
                 f"that is {LIMIT + 1}", f"limit of {LIMIT}", f"at most {room}"):
        assert part in msg, (part, msg)


@needs_kvm
@pytest.mark.kvm
def test_command_line_limit_is_in_bytes_not_characters(hello):
    room = LIMIT - len(prefix_of("kvm"))
    with pytest.raises(ConfigError, match=f"is {room + 1} bytes"):
        vmm.Machine(hello, engine="kvm", cmdline="é" * ((room + 1) // 2) + "x" * ((room + 1) % 2))


@needs_kvm
@pytest.mark.kvm
def test_a_full_command_line_boots(hello):
    """The C loader agrees with Machine: prefix + 2015 bytes is loaded, not refused."""
    room = LIMIT - len(prefix_of("kvm"))
    with vmm.Machine(hello, engine="kvm", memory_mib=16, cmdline="y" * room) as m:
        m.start()
        status = m.wait(20)
    assert status is not None and status.kind == "shutdown", status


@needs_kvm
@pytest.mark.kvm
def test_kvm_engine_rejects_more_vcpus_than_the_core_has(hello):
    with vmm.Machine(hello, engine="kvm", cpus=64):
        pass
    with pytest.raises(ConfigError, match=r"^cpus 65 is more than the kvm engine supports here \(at most 64\)$"):
        vmm.Machine(hello, engine="kvm", cpus=65)


@needs_kvm
@pytest.mark.kvm
def test_kvm_engine_honours_a_lower_kvm_limit(hello, monkeypatch):
    """A KVM whose KVM_CAP_MAX_VCPUS is below the core's table sets the limit."""
    from vmm.engines import kvm
    real = kvm.probe()
    monkeypatch.setattr(kvm, "probe", lambda: {**real, "capabilities": {**real["capabilities"], "MAX_VCPUS": 4}})
    with vmm.Machine(hello, engine="kvm", cpus=4):
        pass
    with pytest.raises(ConfigError, match=r"cpus 5 .* \(at most 4\)"):
        vmm.Machine(hello, engine="kvm", cpus=5)


@needs_qemu
@pytest.mark.qemu
def test_qemu_engine_vcpu_limit(hello):
    with vmm.Machine(hello, engine="qemu", cpus=255):
        pass  # constructed only: QEMU is not started
    with pytest.raises(ConfigError, match="cpus must be between 1 and 255, got 256"):
        vmm.Machine(hello, engine="qemu", cpus=256)


@pytest.mark.parametrize("cpus", [0, -3, 1.5, "2"])
def test_vcpu_count_must_be_a_positive_int(hello, cpus):
    with pytest.raises(ConfigError, match="cpus must be between 1 and"):
        vmm.Machine(hello, cpus=cpus)


# --- the kvm engine's device arguments share the command line -------------------------------

@pytest.fixture
def disks(tmp_path):
    out = []
    for name in ("a.img", "b.img"):
        (tmp_path / name).write_bytes(bytes(4096))
        out.append(Disk(str(tmp_path / name), read_only=True))
    return out


def kvm_room(hello, disks):
    """Bytes left for the caller beside these disks, as Machine() reports it."""
    with pytest.raises(ConfigError) as e:
        vmm.Machine(hello, engine="kvm", disks=disks, cmdline="x" * (LIMIT + 1))
    return int(str(e.value).split("at most ")[1].split(" ")[0])


@needs_kvm
@pytest.mark.kvm
@pytest.mark.parametrize("n", [1, 2])
def test_overflow_from_device_arguments_is_a_config_error_at_machine(hello, disks, n):
    alone = LIMIT - len(prefix_of("kvm"))
    room = kvm_room(hello, disks[:n])
    args = alone - room
    assert args == n * len("virtio_mmio.device=4K@0xd0100000:5 ")
    # Fits beside the engine's prefix, not beside the device arguments as well: refused at
    # Machine(), before any device opens or VM exists, naming the device arguments.
    with pytest.raises(ConfigError) as e:
        vmm.Machine(hello, engine="kvm", disks=disks[:n], cmdline="y" * alone)
    msg = str(e.value)
    names = ", ".join(["vda", "vdb"][:n])
    for part in (f"{args} bytes of device arguments (virtio_mmio.device= for {names})",
                 f"your command line is {alone} bytes", f"by {args} bytes", f"at most {room} bytes"):
        assert part in msg, (part, msg)


@needs_kvm
@pytest.mark.kvm
def test_a_command_line_full_up_to_the_device_arguments_boots(hello, disks):
    """The C loader agrees: prefix + device arguments + the rest is loaded, not refused."""
    room = kvm_room(hello, disks)
    with vmm.Machine(hello, engine="kvm", memory_mib=16, disks=disks, cmdline="z" * room) as m:
        m.start()
        status = m.wait(20)
        used = m.inspect().cmdline
    assert status is not None and status.kind == "shutdown", status
    assert len(used.encode()) == LIMIT and used.endswith("z" * room)
    assert "virtio_mmio.device=4K@0xd0101000:6 " in used
