"""Inbound flows of the egress policy (csrc/virtio/net_flows.c, hooked into net_policy.c;
vmm/net/policy.py tells it the published ports): the guest's replies to a connection or
datagram a remote side sent to a published port pass whatever the scope says, and nothing
else does. Synthetic frames only: the receive side is `observe` (what passt hands the
guest), the transmit side `check` (what the guest sends). Nothing is sent anywhere."""
import random
import socket
import struct
import threading
import time

import pytest

from vmm.errors import ConfigError
from vmm.net.policy import DENIED, MALFORMED, PASS, Policy, PolicyEngine
from vmm.net.ports import parse_ports
from support import fuzz_run
from support.net_frames import (ACK, FIN, GATEWAY4, GATEWAY6, GUEST4, GUEST6, GUEST_MAC, GW_MAC,
                                PSH, PUBLIC4, PUBLIC6, RST, SYN, TCP, UDP, eth, frame4, frame6,
                                ip4, ip6, parse_rst, tcp, udp)

WEB, ECHO = 4321, 7777          # published guest ports: TCP and UDP
CLIENT = 54000                  # the remote side's port (passt: the host client's)
PORTS = ["0:4321", "0:7777/udp"]


def engine(scope="public", ports=PORTS, max_flows=4096, rules=()):
    e = PolicyEngine(Policy.parse(scope, rules, gateways=(GATEWAY4, GATEWAY6), dns=("10.0.2.3",),
                                  published=parse_ports(ports)), max_flows=max_flows)
    e.set_clock(1_000_000)
    return e


def inbound(l4, proto=TCP, src=GATEWAY4, dst=None):
    """A frame passt hands the guest: from the remote side to the guest."""
    if ":" in src:
        return eth(0x86DD, ip6(dst or GUEST6, l4, proto, src=src), dst=GUEST_MAC, src=GW_MAC)
    return eth(0x0800, ip4(dst or GUEST4, l4, proto, src=src), dst=GUEST_MAC, src=GW_MAC)


def out(l4, proto=TCP, dst=GATEWAY4, src=None):
    """A frame the guest sends."""
    if ":" in dst:
        return frame6(dst, l4, proto, src=src or GUEST6)
    return frame4(dst, l4, proto, src=src or GUEST4)


def syn_in(e, rport=CLIENT, gport=WEB, src=GATEWAY4, dst=None):
    e.observe(inbound(tcp(sport=rport, dport=gport, flags=SYN, seq=500), src=src, dst=dst))


def synack(rport=CLIENT, gport=WEB, dst=GATEWAY4, flags=SYN | ACK):
    return out(tcp(sport=gport, dport=rport, flags=flags, seq=9000, ack=501), dst=dst)


def verdict(e, f):
    return e.check(f)[0]


def gateway_hits(e, gw=GATEWAY4):
    return next(r["hits"] for r in e.stats()["rules"] if r["rule"] == f"deny@{gw}/{32 if '.' in gw else 128}")


# ---- the published-port conversation under scope public -------------------------------

def test_inbound_syn_then_replies_pass_under_public():
    e = engine()
    assert verdict(e, synack()) == DENIED                      # the bug: nothing to reply to yet
    syn_in(e)
    assert e.check(synack()) == (PASS, b"")
    e.observe(inbound(tcp(sport=CLIENT, dport=WEB, flags=ACK | PSH, payload=b"GET / HTTP/1.0\r\n\r\n")))
    for flags, payload in ((ACK, b""), (ACK | PSH, b"HTTP/1.0 200 OK\r\n\r\nhi"), (ACK | FIN, b"")):
        assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=flags, payload=payload))) == PASS
    st = e.stats()
    assert (st["replies"], st["flows_opened"], st["flows"]) == (4, 1, 1)
    assert gateway_hits(e) == 1                                # only the early SYN-ACK met the rule
    # Everything else to the gateway stays denied, with an RST as before.
    v, rst = e.check(out(tcp(sport=40000, dport=22, flags=SYN)))
    assert v == DENIED and parse_rst(rst, 4)[1][4] & RST


def test_reply_without_a_prior_inbound_syn_is_denied():
    e = engine()
    for flags in (SYN | ACK, ACK, ACK | PSH, FIN | ACK):
        v, rst = e.check(synack(flags=flags))
        assert v == DENIED and rst
    st = e.stats()
    assert (st["replies"], st["flows_opened"], st["denied"]) == (0, 0, 4)


@pytest.mark.parametrize("change", ["remote port", "remote address", "guest port", "guest address",
                                    "protocol"])
def test_only_the_exact_reversed_tuple_is_a_reply(change):
    e = engine(ports=PORTS + ["0:4322"])
    syn_in(e)
    f = {"remote port": synack(rport=CLIENT + 1),
         "remote address": synack(dst="10.0.2.3"),
         "guest port": synack(gport=4322),                     # published too, but not this flow's
         "guest address": out(tcp(sport=WEB, dport=CLIENT, flags=SYN | ACK), src="10.0.2.16"),
         "protocol": out(udp(sport=WEB, dport=CLIENT), UDP)}[change]
    assert verdict(e, f) == DENIED
    assert verdict(e, synack()) == PASS                        # the real reply still goes
    assert e.stats()["replies"] == 1


def test_escape_a_guest_cannot_originate_connections_through_the_reply_allowance():
    """A hostile guest with a live inbound flow on its published port binds that port as
    its source and connects to denied destinations: each is judged by the rules (denied,
    RST), never passed as a reply, and the flow it hoped to ride is unharmed."""
    e = engine()
    syn_in(e)                                                  # 10.0.2.2:54000 -> guest:4321
    attempts = [
        out(tcp(sport=WEB, dport=22, flags=SYN)),              # source 4321 -> the host's sshd
        out(tcp(sport=WEB, dport=CLIENT, flags=SYN)),          # the flow's exact tuple, but a SYN
        out(tcp(sport=WEB, dport=22, flags=ACK | PSH, payload=b"x")),  # mid-stream to another port
        out(tcp(sport=WEB, dport=CLIENT, flags=SYN), dst="169.254.169.254"),  # metadata
        out(tcp(sport=WEB, dport=CLIENT, flags=SYN | ACK), dst="10.0.0.1"),   # another private host
        out(udp(sport=WEB, dport=CLIENT), UDP),                # the flow's ports over UDP
        out(udp(sport=ECHO, dport=53), UDP, dst=GATEWAY4),     # a published UDP port, no flow
    ]
    for f in attempts:
        v, rst = e.check(f)
        assert v == DENIED, f.hex()
    st = e.stats()
    assert st["replies"] == 0 and st["flows_opened"] == 1
    # Frames the guest sends never open a flow, even ones dressed as the remote side's SYN.
    e.check(out(tcp(sport=CLIENT + 5, dport=WEB, flags=SYN), src=GATEWAY4, dst=GUEST4))
    assert verdict(e, synack(rport=CLIENT + 5)) == DENIED
    # An inbound SYN-ACK (the answer to a connection the guest made from its published port)
    # opens nothing either; nor does a SYN to a port that is not published.
    e.observe(inbound(tcp(sport=443, dport=WEB, flags=SYN | ACK)))
    e.observe(inbound(tcp(sport=CLIENT, dport=4399, flags=SYN)))
    assert verdict(e, out(tcp(sport=WEB, dport=443, flags=ACK))) == DENIED
    assert verdict(e, out(tcp(sport=4399, dport=CLIENT, flags=SYN | ACK))) == DENIED
    assert e.stats()["flows_opened"] == 1
    assert verdict(e, synack()) == PASS                        # the real flow still works


def test_no_published_ports_means_no_flows():
    e = engine(ports=[])
    syn_in(e)
    e.observe(inbound(udp(sport=CLIENT, dport=ECHO), UDP))
    assert verdict(e, synack()) == DENIED
    assert verdict(e, out(udp(sport=ECHO, dport=CLIENT), UDP)) == DENIED
    st = e.stats()
    assert (st["flows_opened"], st["flows"], st["replies"]) == (0, 0, 0)


def test_udp_request_reply_and_idle_expiry():
    e = engine()
    reply = out(udp(sport=ECHO, dport=CLIENT, payload=b"pong"), UDP)
    assert verdict(e, reply) == DENIED
    e.observe(inbound(udp(sport=CLIENT, dport=ECHO, payload=b"ping"), UDP))
    assert verdict(e, reply) == PASS
    # Traffic either way keeps it: the guest at +50 s, the remote side at +100 s.
    e.set_clock(1_050_000)
    assert verdict(e, reply) == PASS
    e.set_clock(1_100_000)
    e.observe(inbound(udp(sport=CLIENT, dport=ECHO), UDP))
    e.set_clock(1_159_999)
    assert verdict(e, reply) == PASS
    e.set_clock(1_219_999 + 1)                                 # 60 s after the last frame
    assert verdict(e, reply) == DENIED
    st = e.stats()
    assert (st["replies"], st["flows_expired"], st["flows"]) == (3, 1, 0)
    # A TCP SYN to the UDP port's number opens nothing: the published port is UDP.
    syn_in(e, gport=ECHO)
    assert verdict(e, synack(gport=ECHO)) == DENIED


def test_tcp_idle_expiry_is_five_minutes():
    e = engine()
    syn_in(e)
    assert verdict(e, synack()) == PASS
    e.set_clock(1_000_000 + 299_999)
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=ACK))) == PASS
    e.set_clock(1_000_000 + 299_999 + 300_000)
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=ACK))) == DENIED
    assert e.stats()["flows_expired"] == 1


def test_tcp_rst_either_way_ends_the_flow():
    e = engine()
    syn_in(e)
    e.observe(inbound(tcp(sport=CLIENT, dport=WEB, flags=RST)))
    assert verdict(e, synack()) == DENIED
    syn_in(e)
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=RST | ACK))) == PASS  # the RST goes
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=ACK))) == DENIED      # then it's over
    st = e.stats()
    assert (st["flows_closed"], st["flows"], st["flows_opened"]) == (2, 0, 2)


def test_tcp_fin_both_ways_lingers_for_the_last_acks_then_closes():
    e = engine()
    syn_in(e)
    assert verdict(e, synack()) == PASS
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=FIN | ACK))) == PASS
    e.observe(inbound(tcp(sport=CLIENT, dport=WEB, flags=FIN | ACK)))
    e.set_clock(1_009_000)
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=ACK))) == PASS  # the last ACK
    e.set_clock(1_019_000 + 1)
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=ACK))) == DENIED
    st = e.stats()
    assert (st["flows_closed"], st["flows_expired"], st["flows"]) == (1, 0, 0)
    # The client's next connection from the same port is a new flow.
    syn_in(e)
    assert verdict(e, synack()) == PASS


def test_table_is_bounded_and_evicts_the_least_recently_used():
    e = engine(max_flows=8)
    for i in range(8):
        syn_in(e, rport=CLIENT + i)
    e.set_clock(1_000_100)
    assert verdict(e, synack(rport=CLIENT)) == PASS            # flow 0 is used: now the youngest
    for i in range(8, 11):
        syn_in(e, rport=CLIENT + i)                            # pushes out 1, 2, 3
    st = e.stats()
    assert (st["flows"], st["flows_opened"], st["flows_evicted"]) == (8, 11, 3)
    passing = [i for i in range(11) if verdict(e, synack(rport=CLIENT + i)) == PASS]
    assert passing == [0, 4, 5, 6, 7, 8, 9, 10]


def test_a_flood_of_syns_never_grows_the_table_nor_evicts_answered_flows():
    e = engine(max_flows=64)
    syn_in(e)                                                  # a conversation the guest has
    assert verdict(e, synack()) == PASS
    for i in range(2000):
        syn_in(e, rport=1024 + i, src=f"10.9.0.{i % 250}")      # private: public denies it
    st = e.stats()
    assert st["flows"] == 64 and st["flows_evicted"] == 2001 - 64
    assert verdict(e, synack(rport=1024 + 1999, dst="10.9.0.249")) == PASS
    assert verdict(e, synack(rport=1024, dst="10.9.0.0")) == DENIED
    assert verdict(e, out(tcp(sport=WEB, dport=CLIENT, flags=ACK | PSH, payload=b"ok"))) == PASS
    assert e.stats()["flows_evicted"] == 2001 - 64                # and none of it was that


def test_when_every_flow_is_answered_the_least_recently_used_goes():
    e = engine(max_flows=4)
    for i in range(4):
        syn_in(e, rport=CLIENT + i)
        assert verdict(e, synack(rport=CLIENT + i)) == PASS
    assert verdict(e, synack(rport=CLIENT)) == PASS            # 0 used again: 1 is the oldest
    syn_in(e, rport=CLIENT + 4)
    passing = [i for i in range(5) if verdict(e, synack(rport=CLIENT + i)) == PASS]
    assert passing == [0, 2, 3, 4] and e.stats()["flows_evicted"] == 1


def test_expired_flows_make_room_before_live_ones_are_evicted():
    e = engine(max_flows=4)
    for i in range(4):
        e.observe(inbound(udp(sport=CLIENT + i, dport=ECHO), UDP))
    e.set_clock(1_000_000 + 61_000)
    syn_in(e)
    st = e.stats()
    assert (st["flows"], st["flows_expired"], st["flows_evicted"]) == (1, 4, 0)


def test_ipv6_inbound_flow():
    e = engine()
    assert verdict(e, synack(dst=GATEWAY6)) == DENIED          # fd00::2 is ULA: public denies it
    syn_in(e, src=GATEWAY6)
    assert verdict(e, synack(dst=GATEWAY6)) == PASS
    assert verdict(e, synack(dst=GATEWAY4)) == DENIED          # the IPv4 tuple is another flow
    e.observe(inbound(udp(sport=CLIENT, dport=ECHO), UDP, src="fe80::1"))
    assert verdict(e, out(udp(sport=ECHO, dport=CLIENT), UDP, dst="fe80::1")) == PASS
    assert verdict(e, out(udp(sport=ECHO, dport=CLIENT), UDP, dst="fe80::2")) == DENIED
    assert e.stats()["replies"] == 2


def test_replies_pass_ahead_of_the_callers_deny_rules_too():
    e = engine(rules=["deny@0.0.0.0/0"], scope="all")
    syn_in(e, src=PUBLIC4)
    assert verdict(e, synack(dst=PUBLIC4)) == PASS
    assert verdict(e, out(tcp(sport=40000, dport=80, flags=SYN), dst=PUBLIC4)) == DENIED


def test_malformed_inbound_frames_open_nothing():
    e = engine()
    good = inbound(tcp(sport=CLIENT, dport=WEB, flags=SYN))
    for bad in (good[:14 + 20 + 12], good[:14 + 19],
                inbound(tcp(sport=CLIENT, dport=WEB, flags=SYN, doff=15)),
                eth(0x0800, ip4(GUEST4, tcp(sport=CLIENT, dport=WEB), src=GATEWAY4, total=200))):
        assert e.observe(bad) == 0
    assert e.stats()["flows_opened"] == 0
    # A non-first fragment carries no ports: neither opens nor is a reply.
    e.observe(eth(0x0800, ip4(GUEST4, b"x" * 24, TCP, src=GATEWAY4, frag=100)))
    syn_in(e)
    assert verdict(e, frame4(GATEWAY4, b"x" * 24, TCP, frag=100)) == DENIED
    assert e.stats()["flows_opened"] == 1


def test_published_ports_reach_the_policy_and_bad_limits_are_errors():
    p = Policy.parse("public", published=parse_ports(["0:80", "8080:80", "0:53/udp"]))
    assert p.published == (("tcp", 80), ("udp", 53))
    with pytest.raises(ConfigError, match="inbound flows"):
        PolicyEngine(p, max_flows=(1 << 20) + 1)


def test_rx_and_tx_on_different_threads():
    e = engine(max_flows=128)
    e.set_clock(None)
    stop = time.monotonic() + 1.0
    errors = []

    def remote():
        i = 0
        while time.monotonic() < stop:
            syn_in(e, rport=1024 + i % 500)
            e.observe(inbound(tcp(sport=1024 + i % 500, dport=WEB, flags=RST if i % 7 == 0 else ACK)))
            i += 1

    t = threading.Thread(target=remote)
    t.start()
    n = 0
    while time.monotonic() < stop:
        v = verdict(e, synack(rport=1024 + n % 500))
        if v not in (PASS, DENIED):
            errors.append(v)
        n += 1
    t.join()
    st = e.stats()
    assert not errors and st["flows"] <= 128
    assert st["replies"] + st["denied"] == n


# ---- through the device ---------------------------------------------------------------

def test_device_passes_replies_to_a_connection_the_backend_opened():
    from vmm.devices import Net
    from vmm.engines.virtio_device import open_device
    from test_virtio_net import NetGuest, read_framed
    a_, b_ = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    policy = Policy.parse("public", gateways=(GATEWAY4,), dns=("10.0.2.3",),
                          published=parse_ports(["0:4321"]))
    dev = open_device(Net(backend="socket", fd=a_.fileno(), mac="52:54:00:12:34:56", policy=policy))
    a_.close()
    b_.settimeout(5)
    try:
        g = NetGuest(dev)
        g.send(synack())                                       # before the SYN: refused
        rst = g.recv(want=1)
        assert rst and parse_rst(rst[0][12:], 4)[1][4] & RST
        syn = inbound(tcp(sport=CLIENT, dport=WEB, flags=SYN, seq=500))
        b_.sendall(struct.pack(">I", len(syn)) + syn)
        assert [x[12:] for x in g.recv(want=1)] == [syn]      # delivered unchanged
        g.send(synack())
        assert read_framed(b_) == synack()                     # and the reply reaches passt
        st = dev.policy.stats()
        assert (st["replies"], st["flows_opened"], st["resets"]) == (1, 1, 1)
    finally:
        dev.close()
        b_.close()


# ---- fuzz ------------------------------------------------------------------------------

def _mutate(rng, f):
    f = bytearray(f)
    for _ in range(rng.randint(1, 5)):
        op = rng.random()
        if op < 0.5 and f:
            f[rng.randrange(len(f))] = rng.randrange(256)
        elif op < 0.65 and f:
            del f[rng.randrange(len(f)):]
        elif op < 0.8:
            f[rng.randrange(len(f) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif f:
            i = rng.randrange(len(f))
            f[i:i + 2] = rng.choice([b"\0\0", b"\xff\xff", b"\x10\xe1", b"\x1e\x61", b"\x02\x12", b"\x86\xdd"])
    return bytes(f)


@pytest.mark.fuzz
def test_flows_fuzz_no_crash_and_no_escape():
    """Mutated inbound frames (observe) and guest frames (check), both ways, for a few
    seconds (NET_FLOWS_FUZZ_SECONDS), on a small table with the clock jumping; replay exactly
    with the NET_FLOWS_FUZZ_SEED=<seed> VMM_FUZZ_ROUNDS=<n> that a failure names. Between
    them, the escape: a SYN without ACK from a published port to the (denied) gateway never
    passes, whatever the table holds."""
    seed = fuzz_run.seed("net flows fuzz", "NET_FLOWS_FUZZ_SEED")
    budget = fuzz_run.Budget.from_env(3, "NET_FLOWS_FUZZ_SECONDS")
    rng = random.Random(seed)
    e = engine(max_flows=32)
    rx_seeds = [inbound(tcp(sport=CLIENT, dport=WEB, flags=SYN)),
                inbound(tcp(sport=CLIENT, dport=WEB, flags=FIN | ACK)),
                inbound(tcp(sport=CLIENT, dport=WEB, flags=RST)),
                inbound(udp(sport=CLIENT, dport=ECHO), UDP),
                inbound(tcp(sport=CLIENT, dport=WEB, flags=SYN), src=GATEWAY6),
                inbound(udp(sport=CLIENT, dport=ECHO), UDP, src=GATEWAY6),
                eth(0x8100, struct.pack("!HH", 5, 0x0800) + ip4(GUEST4, tcp(sport=CLIENT, dport=WEB), src=GATEWAY4))[:-4]]
    tx_seeds = [synack(), synack(flags=ACK), synack(flags=RST), synack(flags=FIN | ACK),
                out(udp(sport=ECHO, dport=CLIENT), UDP), synack(dst=GATEWAY6),
                out(udp(sport=ECHO, dport=CLIENT), UDP, dst=GATEWAY6)]
    now, n, checks = 1_000_000, 0, 0
    e.set_clock(now)  # the run's own clock from the start, so a replay sees the same times
    results = {PASS: 0, DENIED: 0, MALFORMED: 0}
    with fuzz_run.seed_named_on_failure("NET_FLOWS_FUZZ_SEED", seed, budget):
        while budget.more():
            if rng.random() < 0.01:
                now += rng.choice([1_000, 11_000, 61_000, 301_000])
                e.set_clock(now)
            f = rng.choice(rx_seeds)
            e.observe(_mutate(rng, f) if rng.random() < 0.7 else f)
            f = rng.choice(tx_seeds)
            v, _ = e.check(_mutate(rng, f) if rng.random() < 0.7 else f)
            results[v] += 1
            rport = rng.choice([CLIENT, 22, 0xE110])
            dst = rng.choice([GATEWAY4, GATEWAY6])
            escape = out(tcp(sport=rng.choice([WEB, ECHO]), dport=rport, flags=SYN), dst=dst)
            assert e.check(escape)[0] == DENIED, escape.hex()
            checks += 2
            n += 1
        st = e.stats()
        assert st["flows"] <= 32
        assert st["flows_opened"] - st["flows_closed"] - st["flows_expired"] - st["flows_evicted"] == st["flows"]
        assert st["passed"] + st["denied"] + st["malformed"] + st["infra"] + st["replies"] == checks
        assert st["replies"] > 0 and st["flows_opened"] > 0
    print(f"{n} rounds: {results}; flows opened {st['flows_opened']}, closed {st['flows_closed']}, "
          f"expired {st['flows_expired']}, evicted {st['flows_evicted']}, replies {st['replies']}")
    fuzz_run.summary("net flows fuzz", "NET_FLOWS_FUZZ_SEED", seed, budget, flows=st["flows_opened"])
