"""An exec's privileges beyond its user (EXEC's GROUPS, UMASK, NO_NEW_PRIVS and CAPS
fields, and CONFIG's READONLY_ROOT): encoded by the host, bounds-checked by the agent,
applied in the child. The agent runs as a host process (root here), so what the child got
is read from its own /proc/self/status."""
import errno
import os
import struct
import tempfile

import pytest

from support.agent_harness import agent, client, first_frame, needs_musl  # noqa: F401
from vmm.agent import AgentError, Capabilities, ExecFailed, ExecPrivileges
from vmm.agent import protocol as P
from vmm.agent.capabilities import LAST_CAP, NAMES, cap_number
from vmm.agent.protocol import G, T

STATUS = "grep -E '^(Groups|Cap...|NoNewPrivs|Uid|Gid):' /proc/self/status; umask"
NET_BIND = 1 << 10
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="groups and capabilities need root")


def status(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        out[key if sep else "umask"] = value.split() if sep else line.strip()
    return out


# ---- the host's encoding ---------------------------------------------------------------

def test_capability_names_are_the_kernels_numbers():
    assert (len(NAMES), LAST_CAP) == (41, 40)
    assert (cap_number("CAP_CHOWN"), cap_number("CAP_NET_BIND_SERVICE"), cap_number("CAP_SYS_ADMIN"),
            cap_number("CAP_CHECKPOINT_RESTORE"), cap_number("net_raw"), cap_number(7)) == (0, 10, 21, 40, 13, 7)
    for bad in ("CAP_FLY", "", 41, -1, True, None, b"CAP_CHOWN"):
        with pytest.raises(ValueError):
            cap_number(bad)
    with pytest.raises(ValueError, match="unknown capability 'CAP_FLY'"):
        Capabilities(bounding=["CAP_KILL", "CAP_FLY"])
    with pytest.raises(ValueError, match="list of names"):
        Capabilities(ambient="CAP_KILL")


def test_exec_request_fields_encode_and_parse_back():
    privs = ExecPrivileges(groups=[0, 10, 2**32 - 2], umask=0o27, no_new_privileges=True,
                           capabilities=Capabilities(bounding=["CAP_CHOWN", "CAP_KILL"],
                                                     ambient=["CAP_KILL"]))
    got = dict(P.iter_fields(P.encode(privs.fields())))
    assert struct.unpack("<3I", got[G.GROUPS]) == (0, 10, 2**32 - 2)
    assert (got[G.UMASK], got[G.NO_NEW_PRIVS]) == (0o27, 1)
    assert P.CAPS.unpack(got[G.CAPS]) == (1 | 1 << 5, 0, 0, 0, 1 << 5)
    # the defaults send nothing new: today's requests are unchanged
    assert ExecPrivileges().fields() == []
    # an empty list is sent (the process gets no supplementary groups), None is not
    assert ExecPrivileges(groups=[]).fields() == [(G.GROUPS, b"")]


@pytest.mark.parametrize("kw, msg", [
    ({"groups": list(range(P.MAX_GROUPS + 1))}, "at most 1024"),
    ({"groups": [-1]}, "not a gid"),
    ({"groups": [2**32 - 1]}, "not a gid"),
    ({"groups": ["10"]}, "not a gid"),
    ({"groups": "10"}, "list of gids"),
    ({"umask": 0o1000}, "not in 0..0o777"),
    ({"umask": -1}, "not in 0..0o777"),
    ({"umask": True}, "not in 0..0o777"),
    ({"capabilities": ["CAP_KILL"]}, "vmm.agent.Capabilities"),
])
def test_the_host_refuses_bad_privileges(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ExecPrivileges(**kw)


# ---- the agent applies them ------------------------------------------------------------

@needs_musl
@root_only
def test_groups_umask_no_new_privs_and_caps_for_a_non_root_uid(client):
    """The uid switch keeps the capabilities asked for (PR_SET_KEEPCAPS, then capset and
    the ambient raise): uid 1000 really holds CAP_NET_BIND_SERVICE after execve."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:   # pytest's tmp_path is root's alone
        os.chmod(d, 0o777)
        _non_root_uid(client, d)


def _non_root_uid(client, tmp_path):
    one = ["CAP_NET_BIND_SERVICE"]
    caps = Capabilities(bounding=one + ["CAP_CHOWN"], effective=one, permitted=one,
                        inheritable=one, ambient=one)
    r = client.exec(["sh", "-c", STATUS + f"; touch {tmp_path}/f; stat -c %a {tmp_path}/f"],
                    user="1000:1000", groups=[10, 20, 30], umask=0o27, no_new_privileges=True,
                    capabilities=caps)
    assert r.code == 0, r.stderr
    st = status(r.stdout.decode())
    assert st["Uid"] == ["1000"] * 4 and st["Groups"] == ["10", "20", "30"]
    assert int(st["CapBnd"][0], 16) == NET_BIND | 1
    for key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[key][0], 16) == NET_BIND, (key, st)
    assert st["NoNewPrivs"] == ["1"]
    assert r.stdout.decode().split()[-2:] == ["0027", "640"]


@needs_musl
@root_only
def test_root_with_a_reduced_bounding_set(client):
    """As under runc, root's sets after execve are its bounding set."""
    kill = ["CAP_KILL"]
    r = client.exec(["sh", "-c", STATUS], groups=[], capabilities=Capabilities(
        bounding=kill, effective=kill, permitted=kill))
    st = status(r.stdout.decode())
    assert st["Groups"] == [] and st["NoNewPrivs"] == ["0"] and st["umask"] == "0022"
    for key in ("CapPrm", "CapEff", "CapBnd"):
        assert int(st[key][0], 16) == 1 << 5, (key, st)
    assert int(st["CapAmb"][0], 16) == int(st["CapInh"][0], 16) == 0


@needs_musl
@root_only
def test_without_the_new_fields_nothing_changes(client):
    st = status(client.exec(["sh", "-c", STATUS]).stdout.decode())
    assert st["NoNewPrivs"] == ["0"] and st["umask"] == "0022"
    assert int(st["CapEff"][0], 16) == int(st["CapBnd"][0], 16) != 0
    st = status(client.exec(["sh", "-c", STATUS], user="nobody").stdout.decode())
    assert int(st["CapEff"][0], 16) == 0 and st["Groups"] != []


@needs_musl
@root_only
def test_an_ambient_cap_outside_permitted_fails_naming_the_stage(client):
    with pytest.raises(ExecFailed) as e:
        client.exec(["true"], user="1000:1000", capabilities=Capabilities(
            bounding=["CAP_KILL"], permitted=["CAP_KILL"], ambient=["CAP_KILL"]))
    assert (e.value.kind, e.value.errno) == ("bad_capabilities", errno.EPERM)
    assert "setting the capabilities" in str(e.value)
    assert client.exec(["true"]).code == 0


@needs_musl
@pytest.mark.parametrize("tag, value, msg", [
    (G.GROUPS, b"\x01\x00\x00", "bad GROUPS field"),
    (G.GROUPS, b"\x00" * 4 * 1025, "at most 1024 gids"),
    (G.GROUPS, b"\xff\xff\xff\xff", "gid 4294967295"),
    (G.UMASK, struct.pack("<Q", 0o1000), "bad UMASK field"),
    (G.UMASK, b"\x27\x00\x00\x00", "bad UMASK field"),
    (G.NO_NEW_PRIVS, struct.pack("<Q", 2), "bad NO_NEW_PRIVS field"),
    (G.CAPS, b"\x00" * 39, "bad CAPS field"),
    (G.CAPS, P.CAPS.pack(1 << 41, 0, 0, 0, 0), "above CAP_CHECKPOINT_RESTORE"),
    (G.CAPS, P.CAPS.pack(0, 0, 0, 0, 1 << 63), "above CAP_CHECKPOINT_RESTORE"),
], ids=["groups-ragged", "groups-1025", "groups-minus-1", "umask-01000", "umask-4-bytes",
        "nnp-2", "caps-39-bytes", "caps-bit-41", "caps-bit-63"])
def test_the_agent_refuses_hostile_fields(agent, tag, value, msg):
    """Bypassing the host's checks: the agent answers ERROR bad_request naming the field,
    starts nothing, and goes on serving."""
    sock = agent.raw()
    try:
        payload = P.encode([(G.ARGV, "true")]) + P.TLV_HEAD.pack(tag, len(value)) + value
        sock.sendall(P.frame(3, T.EXEC, payload))
        t, fields = first_frame(sock, 3)
        assert t == T.ERROR and P.text(fields[G.KIND]) == "bad_request", (t, fields)
        assert msg in P.text(fields[G.MESSAGE])
        sock.sendall(P.frame(4, T.EXEC, P.encode([(G.ARGV, "true"), (G.UMASK, 0o777),
                                                  (G.GROUPS, b""), (G.NO_NEW_PRIVS, 1)])))
        assert first_frame(sock, 4)[0] == T.STARTED     # good values still start
    finally:
        sock.close()
    assert agent.alive()


@needs_musl
def test_a_read_only_root_is_refused_outside_pid_1(client):
    """The host process must never remount the host's root: only PID 1 may (the guest)."""
    with pytest.raises(AgentError) as e:
        client.configure(read_only_root=True)
    assert e.value.kind == "bad_request" and "PID 1" in str(e.value)
    client.configure(read_only_root=False)   # 0 asks for nothing
    probe = "/tmp/.vmm-rw-probe-%d" % os.getpid()
    with open(probe, "w"):
        pass
    os.unlink(probe)
