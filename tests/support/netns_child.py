"""The child process of support/netns.py's NamespaceSandbox, started by
`unshare --net --mount`: checks that it is isolated, makes the test namespace, starts the
DNS and HTTP servers in it, boots the sandbox and answers the parent's commands until
"stop". Replies are ("ok", value) or ("error", traceback).

    python3 -m support.netns_child FD     (FD: the parent's socket)
"""
from __future__ import annotations

import http.server
import os
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection

from support import netns
from support.dns_server import DnsServer


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Serves netns.BODIES by the address the request came to; records each request."""
    seen: list = []

    def do_GET(self):
        here = self.server.server_address[0]
        _Recorder.seen.append((here, self.path))
        body = netns.BODIES[here]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _check_isolated(outer: str) -> None:
    """Refuse to start anything unless this is a network namespace of its own with nothing
    in it yet (so setup() makes the only way out, which leads nowhere). outer: the test
    process's namespace."""
    if netns.netns_id() in (outer, netns.netns_id(os.getppid())):
        raise RuntimeError("not in a network namespace of its own: refusing to start")
    if netns.links() != ["lo"]:
        raise RuntimeError(f"the new network namespace is not empty: {netns.links()}")


def _check_passt_inside() -> None:
    """Every passt the sandbox started runs in this namespace (and there is one)."""
    mine = netns.netns_id()
    passts = [(pid, comm) for pid, comm in netns.descendants(os.getpid()) if "passt" in comm]
    if not passts:
        raise RuntimeError("the sandbox started no passt below this process")
    for pid, comm in passts:
        where = netns.netns_id(pid)
        if where != mine:
            raise RuntimeError(f"{comm} (pid {pid}) runs in {where}, not in {mine}")


def _boot(config):
    import vmm
    from vmm.net.network import Network
    return vmm.Sandbox.create(config["image"], engine=config["engine"],
                              boot_timeout=config["boot_timeout"],
                              network=Network(**config["network"]))


def _serve(conn: Connection, sb, dns) -> None:
    while True:
        command, *args = conn.recv()
        try:
            if command == "exec":
                argv, timeout = args
                t0 = time.monotonic()
                r = sb.exec(argv, timeout=timeout)
                conn.send(("ok", (r, time.monotonic() - t0)))
            elif command == "stats":
                conn.send(("ok", sb.network.stats()))
            elif command == "requests":
                conn.send(("ok", list(_Recorder.seen)))
            elif command == "dns_queries":
                conn.send(("ok", list(dns.queries)))
            elif command == "stop":
                return
            else:
                conn.send(("error", f"unknown command {command!r}"))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def main() -> int:
    conn = Connection(int(sys.argv[1]))
    servers, sb, dns = [], None, None
    try:
        config = conn.recv()
        _check_isolated(config["outer_netns"])
        with tempfile.TemporaryDirectory(prefix="vmm-netns-") as d:
            netns.setup(d)
            dns = DnsServer(netns.DNS_ADDRESS, {netns.TEST_NAME: netns.PUBLIC_HTTP}).start()
            for address in netns.BODIES:
                srv = http.server.ThreadingHTTPServer((address, 80), _Recorder)
                threading.Thread(target=srv.serve_forever, daemon=True).start()
                servers.append(srv)
            sb = _boot(config)
            _check_passt_inside()
            conn.send(("ok", {"published": sb.network.published, "scope": sb.network.scope,
                              "links": netns.links()}))
            _serve(conn, sb, dns)
    except EOFError:
        pass   # the parent went away
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if sb is not None:
            sb.stop()
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        if dns is not None:
            dns.close()
    try:
        conn.send(("ok", None))   # the reply to "stop"
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
