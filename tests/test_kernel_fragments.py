"""Kernel config fragments built through the kernel cache (vmm.guest.config_fragment,
vmm.guest.kernel.guest_kernel(fragments=...)) and swept by `bench boot --kernel-config`.

Fast: a fake guest/kernel/build.sh stands in for the real one (which takes minutes). It
records each call and "builds" a vmlinux holding the config it was given, so the tests see
what would have been compiled.
"""
import threading
from pathlib import Path

import pytest

from vmm.errors import ConfigError, VmmError
from vmm.guest import cache, kernel
from vmm.guest.config_fragment import Fragment, FragmentError, merge_config
from vmm.research import BenchSettings, guest_files

from test_research_cli import assert_bad_input, vmm_cli

BASE = b"""# the project's config
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NR_CPUS=64
CONFIG_KALLSYMS=y
"""

# $1 tarball, $2 config, $3 out: like build.sh, progress lines, vmlinux published last.
FAKE_BUILD = """
set -eu
out=$3
echo "vmm-kernel: configuring: $(basename "$2")"
echo call >> "$out/../calls"
sleep "${FAKE_BUILD_SLEEP:-0}"
if grep -q '^CONFIG_DROPME=y' "$2"; then
    echo "vmm-kernel: dropped: CONFIG_DROPME=y (got: not set)"
    echo "vmm-kernel: error: olddefconfig dropped options"
    exit 1
fi
cp "$2" "$out/vmlinux.tmp"
echo 6.1.0-vmm > "$out/release"
mv "$out/vmlinux.tmp" "$out/vmlinux"
"""


@pytest.fixture
def fake_guest(tmp_path, monkeypatch):
    guest = tmp_path / "guest"
    (guest / "kernel").mkdir(parents=True)
    (guest / "kernel" / "config").write_bytes(BASE)
    (guest / "kernel" / "build.sh").write_text(FAKE_BUILD)
    monkeypatch.setenv("VMM_GUEST_DIR", str(guest))
    monkeypatch.setenv("VMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VMM_KERNEL", raising=False)
    monkeypatch.setattr(kernel, "linux_source_version", lambda: "6.1.test")
    return tmp_path


def _calls(root: Path) -> int:
    f = root / "cache" / "kernel" / "calls"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _fragment(root: Path, name: str, text: str) -> Path:
    p = root / name
    p.write_text(text)
    return p


# --- fragments -----------------------------------------------------------------------------

def test_a_fragment_reads_options_and_comments():
    f = Fragment("f", b"# why\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n")
    assert f.options() == [("CONFIG_A", "CONFIG_A=y"), ("CONFIG_B", "# CONFIG_B is not set"),
                           ("CONFIG_C", 'CONFIG_C="x y"')]


@pytest.mark.parametrize("text, message", [
    (b"CONFIG_A=y\nSMP=y\n", "line 2: 'SMP=y' is not CONFIG_NAME=value"),
    (b"# CONFIG_A=n\n", "line 1: '# CONFIG_A=n' looks like an option"),
    (b"# only a comment\n\n", "sets no options"),
    (b"CONFIG_A=\n", "line 1"),
    (b"\x7fELF\x02\x01\xff\xfe", "is not text (a vmlinux goes to --kernel)"),
])
def test_a_bad_fragment_names_its_line(text, message):
    with pytest.raises(FragmentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Fragment("frag.config", text).options()


def test_a_missing_fragment_is_named(tmp_path):
    with pytest.raises(FragmentError, match="nope.config"):
        Fragment.read(tmp_path / "nope.config")


def test_merge_replaces_in_place_appends_new_and_later_fragments_win():
    a = Fragment("a.config", b"# CONFIG_SMP is not set\nCONFIG_NEW=y\n")
    b = Fragment("b.config", b"CONFIG_NEW=m\nCONFIG_NR_CPUS=2\n")
    merged = merge_config(BASE, [a, b]).decode().splitlines()
    assert merged[2] == "# CONFIG_SMP is not set" and merged[3] == "CONFIG_NR_CPUS=2"
    options = [line for line in merged if "CONFIG_" in line and not line.startswith("# ---")]
    assert options == ["CONFIG_64BIT=y", "# CONFIG_SMP is not set", "CONFIG_NR_CPUS=2",
                       "CONFIG_KALLSYMS=y", "CONFIG_NEW=m"]  # each option once
    assert "# --- from the fragment a.config" in merged


# --- keys ------------------------------------------------------------------------------------

def test_the_key_without_fragments_is_unchanged_and_fragments_change_it():
    plain = kernel.kernel_key(b"c", b"s", "v")
    assert plain == cache.key([b"kernel", b"c", b"s", b"v"])   # every machine's cached kernel
    assert kernel.kernel_key(b"c", b"s", "v", []) == plain
    one = kernel.kernel_key(b"c", b"s", "v", [b"CONFIG_A=y\n"])
    assert one != plain
    assert kernel.kernel_key(b"c", b"s", "v", [b"CONFIG_A=y\n", b"CONFIG_B=y\n"]) != \
        kernel.kernel_key(b"c", b"s", "v", [b"CONFIG_B=y\n", b"CONFIG_A=y\n"])  # order matters
    assert kernel.kernel_key(b"c2", b"s", "v", [b"CONFIG_A=y\n"]) != one     # so does the base


# --- building through the cache ----------------------------------------------------------------

def test_a_fragment_kernel_is_built_once_and_cached_by_content(fake_guest, capsys):
    frag = _fragment(fake_guest, "nosmp.config", "# CONFIG_SMP is not set\n")
    vmlinux = kernel.guest_kernel(fragments=[frag])
    built = vmlinux.read_text()
    assert "# CONFIG_SMP is not set" in built and "CONFIG_SMP=y" not in built
    assert (vmlinux.parent / "fragments.txt").read_text().count("CONFIG_SMP") == 1
    err = capsys.readouterr().err
    assert f"building the guest kernel with {frag}" in err and "configuring: config+fragments" in err
    # the same text under another name: the same cached kernel, no build
    again = _fragment(fake_guest, "copy.config", "# CONFIG_SMP is not set\n")
    assert kernel.guest_kernel(fragments=[again]) == vmlinux
    assert _calls(fake_guest) == 1
    # the project's own kernel is another entry, keyed as it always was
    plain = kernel.guest_kernel()
    assert plain != vmlinux and plain.parent.name == kernel.current_kernel_key()
    assert "CONFIG_SMP=y" in plain.read_text()
    # an edited fragment is a new kernel
    frag.write_text("# CONFIG_SMP is not set\nCONFIG_NR_CPUS=1\n")
    assert kernel.guest_kernel(fragments=[frag]) not in (vmlinux, plain)
    assert _calls(fake_guest) == 3


def test_build_false_does_not_build_a_fragment_kernel(fake_guest):
    frag = _fragment(fake_guest, "f.config", "CONFIG_X=y\n")
    with pytest.raises(VmmError, match="not built yet"):
        kernel.guest_kernel(build=False, fragments=[frag])
    assert _calls(fake_guest) == 0


def test_concurrent_fragment_builds_build_once(fake_guest, monkeypatch):
    monkeypatch.setenv("FAKE_BUILD_SLEEP", "0.5")
    frag = _fragment(fake_guest, "f.config", "CONFIG_X=y\n")
    got = []
    threads = [threading.Thread(target=lambda: got.append(kernel.guest_kernel(fragments=[frag])))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and len(set(got)) == 1 and got[0].is_file()
    assert _calls(fake_guest) == 1


def test_an_option_olddefconfig_drops_is_named_with_its_fragment(fake_guest):
    frag = _fragment(fake_guest, "bad.config", "CONFIG_OK=y\nCONFIG_DROPME=y\n")
    with pytest.raises(kernel.KernelError) as e:
        kernel.guest_kernel(fragments=[frag])
    msg = str(e.value)
    assert "olddefconfig dropped 1 option(s) a config fragment asks for" in msg
    assert f"CONFIG_DROPME=y (got: not set) (from {frag})" in msg
    assert "Their dependencies are not met" in msg and "build.log" in msg
    assert not list((fake_guest / "cache" / "kernel").glob("*/vmlinux"))


def test_vmm_kernel_does_not_hide_a_fragment_build(fake_guest, monkeypatch):
    other = fake_guest / "other-vmlinux"
    other.write_bytes(b"x")
    monkeypatch.setenv("VMM_KERNEL", str(other))
    assert kernel.guest_kernel() == other
    frag = _fragment(fake_guest, "f.config", "CONFIG_X=y\n")
    assert kernel.guest_kernel(fragments=[frag]) != other


# --- bench boot --kernel-config ------------------------------------------------------------------

def test_kernel_config_is_swept_labelled_and_recorded(fake_guest):
    a = _fragment(fake_guest, "a.config", "CONFIG_A=y\n")
    b = _fragment(fake_guest, "b.config", "# CONFIG_B is not set\n")
    s = BenchSettings(kernel_config=[None, str(a), f"{a}+{b}"], memory=[128])
    s.check()
    configs = s.configs()
    assert [c.label for c in configs] == ["kernel_config=project", "kernel_config=a.config",
                                          "kernel_config=a.config+b.config"]
    assert configs[2].params()["kernel_config"] == f"{a}+{b}"
    record = s.to_dict()["kernel_config_fragments"]
    assert set(record) == {str(a), f"{a}+{b}"}
    assert [r["text"] for r in record[f"{a}+{b}"]] == ["CONFIG_A=y\n", "# CONFIG_B is not set\n"]
    assert len(record[str(a)][0]["sha256"]) == 64 and record[str(a)][0]["path"] == str(a)
    assert "kernel_config_fragments" not in BenchSettings().to_dict()


def test_a_configuration_boots_the_kernel_its_fragments_build(fake_guest):
    a = _fragment(fake_guest, "a.config", "CONFIG_A=y\n")
    path = guest_files.kernel_for(None, str(a))
    assert "CONFIG_A=y" in Path(path).read_text()
    assert guest_files.kernel_for(None, None) == str(kernel.guest_kernel())
    assert guest_files.kernel_for("/some/vmlinux", None) == "/some/vmlinux"


@pytest.mark.parametrize("kwargs, message", [
    ({"kernel_config": ["/no/such.config"]}, "/no/such.config"),
    ({"kernel_config": ["a.config+"]}, "an empty fragment name"),
])
def test_bad_kernel_configs_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BenchSettings(**kwargs).check()


def test_a_fragment_cannot_apply_to_a_vmlinux_path(tmp_path):
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"x")
    frag = _fragment(tmp_path, "f.config", "CONFIG_X=y\n")
    with pytest.raises(ConfigError, match="cannot apply to a kernel given as a vmlinux path"):
        BenchSettings(kernel=[str(vmlinux)], kernel_config=[str(frag)]).check()


def test_the_cli_refuses_a_bad_fragment_in_one_line(tmp_path):
    bad = _fragment(tmp_path, "bad.config", "SMP=n\n")
    assert_bad_input(vmm_cli("bench", "boot", "--kernel-config", f"none,{bad}"),
                     f"kernel config fragment {bad} line 1")
    assert_bad_input(vmm_cli("bench", "boot", "--kernel-config", "/no/such.config"),
                     "/no/such.config")


def test_a_sweep_alternates_its_configurations_round_by_round(fake_guest, monkeypatch):
    """Two kernels in one run are compared like ours and a baseline: every round visits
    both, in reverse order on odd rounds, each booting the kernel its fragments built."""
    from vmm.research import ours, run_bench
    from vmm.research.samples import new_sample

    booted = []

    def fake_boot(cfg, engine, **kw):
        booted.append((cfg.kernel_config, guest_files.kernel_for(cfg.kernel, cfg.kernel_config)))
        sample = new_sample("vmm-qemu")
        sample["phases_ms"]["total"] = 1.0
        return sample

    monkeypatch.setattr(ours, "boot_test_init", fake_boot)
    monkeypatch.setattr(guest_files, "test_initramfs", lambda: "/initrd")
    frag = str(_fragment(fake_guest, "f.config", "CONFIG_X=y\n"))
    result = run_bench(BenchSettings(runs=3, warmup=1, engine=["qemu"], baselines=[],
                                     kernel_config=[None, frag]))
    assert [k for k, _ in booted] == [None, frag, frag, None, None, frag, frag, None]
    kernels = {k: path for k, path in booted}
    assert "CONFIG_X=y" in Path(kernels[frag]).read_text()
    assert "CONFIG_X=y" not in Path(kernels[None]).read_text()
    labels = [(s["config"], s["round"]) for s in result["samples"]]
    assert labels[:2] == [("kernel_config=project", 0), ("kernel_config=f.config", 0)]
    assert result["settings"]["kernel_config_fragments"][frag][0]["text"] == "CONFIG_X=y\n"
