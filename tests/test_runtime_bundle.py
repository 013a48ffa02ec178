"""vmm.runtime.bundle: an OCI bundle's config.json read as a microVM, with hostile input."""
import json
import os

import pytest

from vmm.agent import Capabilities
from vmm.runtime.bundle import (CONFIG_MAX_BYTES, MIN_MEMORY_MIB, BundleError, load_bundle,
                                parse_config)


def runc_spec() -> dict:
    """What `runc spec` writes (runc 1.1.5), trimmed to the fields that matter here."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/usr/bin:/bin", "TERM=xterm"], "cwd": "/",
                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
        ],
        "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]},
                  "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                 {"type": "uts"}, {"type": "mount"}],
                  "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
    }


def parse(cfg, bundle="/b"):
    return parse_config(json.dumps(cfg).encode(), bundle)


def test_runc_spec_maps_onto_a_vm():
    b = parse(runc_spec())
    assert b.root == "/b/rootfs" and b.root_readonly
    assert b.process.args == ("sh",) and b.process.terminal and b.process.cwd == "/"
    assert b.process.env_dict == {"PATH": "/usr/bin:/bin", "TERM": "xterm"}
    assert b.process.rlimits == ((7, 1024, 1024),)
    assert b.hostname == "runc" and b.cpus == 1 and b.memory_mib == 512
    assert b.mounts == ()            # every default mount is one the guest makes itself
    assert b.netns is None
    # what a VM does not apply is listed, never dropped silently
    text = "\n".join(b.unhonoured)
    for field in ("linux.resources.devices", "linux.maskedPaths", "linux.readonlyPaths"):
        assert field in text
    # ... and what the guest agent applies is not among them
    for field in ("process.capabilities", "root.readonly", "process.noNewPrivileges",
                  "process.user"):
        assert field not in text
    assert b.process.no_new_privileges
    assert b.process.capabilities == Capabilities(bounding=("CAP_KILL",), effective=("CAP_KILL",))
    assert b.process.capabilities.masks() == (1 << 5, 1 << 5, 0, 0, 0)


def test_process_privileges_are_read_and_bounded():
    cfg = runc_spec()
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o27}
    cfg["process"]["capabilities"] = {
        "bounding": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"], "permitted": ["CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_NET_BIND_SERVICE"], "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"]}
    p = parse(cfg).process
    assert (p.additional_gids, p.umask, p.user) == ((10, 20), 0o27, "1000:1000")
    assert p.capabilities.masks() == (1 << 10 | 1, 1 << 10, 1 << 10, 1 << 10, 1 << 10)
    del cfg["process"]["capabilities"]
    assert parse(cfg).process.capabilities.masks() == (0,) * 5   # absent: none, as under runc
    cfg["process"]["capabilities"] = {}
    assert parse(cfg).process.capabilities.masks() == (0, 0, 0, 0, 0)   # present: empty sets
    # a name we do not know is left out and noted, as runc 1.1 ignores it with a warning
    cfg["process"]["capabilities"] = {"bounding": ["CAP_FLY", "CAP_KILL"], "ambient": ["chown"]}
    b = parse(cfg)
    assert b.process.capabilities.masks() == (1 << 5, 0, 0, 0, 0)
    assert "process.capabilities.bounding: unknown capability 'CAP_FLY' ignored (as runc does)" in b.unhonoured
    assert "process.capabilities.ambient: unknown capability 'chown' ignored (as runc does)" in b.unhonoured
    bad = [({"capabilities": {"effective": "CAP_KILL"}}, "process.capabilities.effective: not a list"),
           ({"capabilities": {"effective": [7]}}, "process.capabilities.effective[0]: not a string"),
           ({"capabilities": {"permitted": ["CAP_KILL"] * 100}}, "more than 82 entries"),
           ({"user": {"umask": 0o1000}}, "process.user.umask: 512 is outside 0..511"),
           ({"user": {"umask": -1}}, "process.user.umask: -1 is outside"),
           ({"user": {"additionalGids": list(range(1025))}},
            "process.user.additionalGids: more than 1024 entries"),
           ({"user": {"additionalGids": [2**32 - 1]}}, "additionalGids[0]: 4294967295 is outside")]
    for change, msg in bad:
        c = runc_spec()
        c["process"].update(change)
        with pytest.raises(BundleError) as e:
            parse(c)
        assert msg in str(e.value), (change, str(e.value))


def test_resources_and_annotations_size_the_vm():
    cfg = runc_spec()
    cfg["linux"]["resources"]["cpu"] = {"quota": 250000, "period": 100000}
    cfg["linux"]["resources"]["memory"] = {"limit": 1000 << 20}
    b = parse(cfg)
    assert (b.cpus, b.memory_mib) == (3, 1000)
    cfg["linux"]["resources"]["cpu"] = {"cpus": "0-1,4"}
    assert parse(cfg).cpus == 3
    cfg["annotations"] = {"vmm.cpus": "2", "vmm.ram_mib": "768"}
    b = parse(cfg)
    assert (b.cpus, b.memory_mib) == (2, 768)
    cfg["annotations"] = {}
    cfg["linux"]["resources"]["memory"] = {"limit": 16 << 20}
    b = parse(cfg)
    assert b.memory_mib == MIN_MEMORY_MIB and any("below the VM's minimum" in n for n in b.unhonoured)


def test_network_namespace_path_and_bind_mounts():
    cfg = runc_spec()
    cfg["linux"]["namespaces"] = [{"type": "network", "path": "/var/run/netns/cni-1"}]
    cfg["mounts"].append({"destination": "/data/", "type": "bind", "source": "/srv/data",
                          "options": ["rbind", "ro"]})
    cfg["mounts"].append({"destination": "/etc/hosts", "source": "/run/x/hosts",
                          "options": ["bind"]})
    b = parse(cfg)
    assert b.netns == "/var/run/netns/cni-1"
    assert [(m.destination, m.read_only) for m in b.mounts] == [("/data", True), ("/etc/hosts", False)]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("ociVersion"), "ociVersion: missing"),
    (lambda c: c.update(ociVersion="2.0.0"), "not a 1.x version"),
    (lambda c: c.pop("root"), "root: missing"),
    (lambda c: c["root"].update(path=7), "root.path: not a string"),
    (lambda c: c["process"].update(args=[]), "process.args: must name the program"),
    (lambda c: c["process"].update(args=["sh", 3]), "process.args[1]: not a string"),
    (lambda c: c["process"].update(args="sh"), "process.args: not a list"),
    (lambda c: c["process"].update(env=["NOEQUALS"]), "process.env[0]"),
    (lambda c: c["process"].update(cwd="relative"), "process.cwd"),
    (lambda c: c["process"]["user"].update(uid=-1), "process.user.uid: -1 is outside"),
    (lambda c: c["process"]["user"].update(uid=True), "process.user.uid: not a whole number"),
    (lambda c: c["process"]["rlimits"].append({"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}),
     "unknown resource"),
    (lambda c: c["process"]["rlimits"].append({"type": "RLIMIT_CORE", "hard": 1, "soft": 2}),
     "soft 2 is above hard 1"),
    (lambda c: c["process"].update(args=["a\0b"]), "NUL byte"),
    (lambda c: c["linux"]["namespaces"].append({"type": "pid"}), "pid named twice"),
    (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "unknown namespace"),
    (lambda c: c["linux"]["namespaces"].__setitem__(1, {"type": "network", "path": "rel"}),
     "not an absolute path"),
    (lambda c: c["mounts"].append({"destination": "rel", "type": "bind", "source": "/x"}),
     "mounts[7].destination"),
    (lambda c: c["mounts"].append({"destination": "/x", "type": "bind", "source": "rel"}),
     "bind source"),
    (lambda c: c.update(annotations={"vmm.cpus": "lots"}), "annotation vmm.cpus"),
    (lambda c: c.update(annotations={"vmm.ram_mib": "16"}), "annotation vmm.ram_mib"),
    (lambda c: c.update(annotations={"vmm.engine": "xen"}), "annotation vmm.engine"),
    (lambda c: c["linux"]["resources"].update(cpu={"cpus": "3-1"}), "not a CPU list"),
    (lambda c: c["process"].update(args=["x"] * 5000), "more than 4096 entries"),
])
def test_bad_fields_are_named(mutate, message):
    cfg = runc_spec()
    mutate(cfg)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(cfg)


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'"x"'])
def test_not_a_config_object(data):
    with pytest.raises(BundleError):
        parse_config(data, "/b")


def test_load_bundle_refuses_missing_huge_and_non_regular(tmp_path):
    with pytest.raises(BundleError, match="no such file"):
        load_bundle(str(tmp_path))
    (tmp_path / "config.json").write_bytes(b" " * (CONFIG_MAX_BYTES + 1))
    with pytest.raises(BundleError, match="larger than"):
        load_bundle(str(tmp_path))
    os.unlink(tmp_path / "config.json")
    os.mkfifo(tmp_path / "config.json")   # must not hang
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(str(tmp_path))
    os.unlink(tmp_path / "config.json")
    (tmp_path / "real.json").write_text(json.dumps(runc_spec()))
    os.symlink(tmp_path / "real.json", tmp_path / "config.json")
    with pytest.raises(BundleError, match="cannot open"):
        load_bundle(str(tmp_path))
    os.unlink(tmp_path / "config.json")
    os.rename(tmp_path / "real.json", tmp_path / "config.json")
    assert load_bundle(str(tmp_path)).root == str(tmp_path / "rootfs")


def test_random_configs_never_raise_anything_but_bundle_error():
    """Hostile JSON: every failure is a BundleError naming a field, nothing else escapes."""
    import copy
    import random
    from support import fuzz_run
    seed = fuzz_run.seed("runtime bundle fuzz")
    budget = fuzz_run.Budget.from_env(1.0)
    rng = random.Random(seed)
    values = [None, True, 0, -1, 2**70, "", "x", "/abs", [], {}, [1], {"a": 1}, 1.5, "\0"]

    def mutate(node, depth=0):
        if isinstance(node, dict) and node:
            k = rng.choice(list(node))
            if depth < 3 and rng.random() < 0.5:
                mutate(node[k], depth + 1)
            else:
                node[k] = copy.deepcopy(rng.choice(values))
        elif isinstance(node, list) and node:
            i = rng.randrange(len(node))
            if depth < 3 and rng.random() < 0.5:
                mutate(node[i], depth + 1)
            else:
                node[i] = copy.deepcopy(rng.choice(values))
    refused = 0
    with fuzz_run.seed_named_on_failure("VMM_FUZZ_SEED", seed, budget):
        while budget.more():
            cfg = runc_spec()
            for _ in range(rng.randint(1, 4)):
                mutate(cfg)
            try:
                parse(cfg)
            except BundleError:
                refused += 1
    fuzz_run.summary("runtime bundle fuzz", "VMM_FUZZ_SEED", seed, budget, refused=refused)
