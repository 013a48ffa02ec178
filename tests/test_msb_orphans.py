"""Nothing outlives its owner: when the process that created a Sandbox is killed with
SIGKILL (no cleanup runs), its QEMU and passt end too (vmm/engines/child_process.py).

The owner creates its Sandbox from a thread that has ended before the kill: the parent-
death signal follows the forking *thread*, so this also checks that the children are
forked by the long-lived spawner thread and are not killed when a short-lived one ends.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("passt"), reason="no passt")]

ROOT = Path(__file__).resolve().parents[1]

OWNER = textwrap.dedent("""
    import json, sys, threading, time
    import psutil, vmm
    from vmm.net import Network
    box = {}
    def make():   # a short-lived thread: it ends right after the boot
        box["sb"] = vmm.Sandbox.create(sys.argv[1], engine=sys.argv[2], memory_mib=128,
                                       network=Network())
    t = threading.Thread(target=make)
    t.start()
    t.join()
    sb = box["sb"]
    time.sleep(0.5)
    r = sb.exec(["echo", "alive"], timeout=60)   # the VM outlived the thread that made it
    kids = [{"pid": p.pid, "name": p.name()} for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"exec": r.stdout.decode(), "children": kids}), flush=True)
    time.sleep(600)
""")


def test_sigkilled_owner_takes_qemu_and_passt_with_it(image, kernel_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(image), ENGINE],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        report = json.loads(owner.stdout.readline())
        assert report["exec"] == "alive\n"
        names = {c["name"] for c in report["children"]}
        assert any("passt" in n for n in names), names
        if ENGINE == "qemu":
            assert any("qemu" in n for n in names), names
        children = []
        for c in report["children"]:
            try:
                children.append(psutil.Process(c["pid"]))
            except psutil.NoSuchProcess:
                pass
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        _, alive = psutil.wait_procs(children, timeout=5)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"outlived their SIGKILLed owner: {alive}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
