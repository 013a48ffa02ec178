"""Host directories when the host side is an ordinary user (uid 65534 here, by setpriv
from root): virtiofsd then runs in a user namespace of its own in which uid 0 is the
caller (vmm/engines/virtiofsd.py), so ownership maps like a rootless container's:

- the caller's files look root's to the guest, files of any other host owner look
  nobody's (65534), modes pass through unchanged;
- what the guest's root creates belongs to the caller on the host;
- a guest user other than root cannot create files (virtiofsd cannot switch to an
  unmapped id), and the guest's root cannot give a file away to an unmapped id;
- the guest's root is not the host's root: a host file of another owner that the caller
  may not write stays unwritable.

The whole sandbox runs as that user in a fresh interpreter (Debian's python3, which that
user can reach), from a directory it owns, with the kernel, agent initramfs and image
copied where it can read them.
"""
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody"),
              pytest.mark.skipif(not shutil.which("setpriv"), reason="no setpriv"),
              pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3")]

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
USER_SCRIPT = """
import json, os, sys
sys.path.insert(0, {repo!r})
import vmm
from vmm.sandbox.volumes import HostDir
out = {{"uid": os.getuid()}}
sb = vmm.Sandbox.create({image!r}, kernel={kernel!r}, initrd={initrd!r}, engine={engine!r},
                        network=None, boot_timeout=180,
                        volumes=[HostDir({share!r}, "/share")])
try:
    def run(name, script, user=None):
        r = sb.exec(["sh", "-c", script], timeout=120, user=user)
        out[name] = [r.code, r.stdout.decode(), r.stderr.decode()]
    run("stat", "stat -c '%n %u %g %a' /share/mine /share/roots /share/roots-private")
    run("create", "echo guest > /share/by-guest-root && mkdir /share/guest-dir")
    run("nobody_create", "echo x > /share/by-guest-nobody", user="nobody")
    run("give_away", "chown 1000:1000 /share/by-guest-root")
    run("chmod", "chmod 0600 /share/mine && stat -c %a /share/mine")
    run("write_private", "echo no >> /share/roots-private")
    run("read_private", "cat /share/roots-private")
finally:
    sb.stop()
print("RESULT " + json.dumps(out))
"""


def test_ownership_when_the_host_is_an_ordinary_user(kernel_path, image):
    from vmm.guest.agent import agent_initramfs
    base = Path(tempfile.mkdtemp(prefix="vmm-hostdir-user-"))
    try:
        os.chmod(base, 0o755)
        for name, src in (("kernel", kernel_path), ("initrd", agent_initramfs()),
                          ("image.erofs", image)):
            shutil.copyfile(src, base / name)
            os.chmod(base / name, 0o644)
        work = base / "work"        # the user's own: HOME and XDG_RUNTIME_DIR under it
        work.mkdir()
        share = work / "share"
        share.mkdir()
        (share / "mine").write_text("the caller's\n")
        (share / "roots").write_text("root's\n")
        (share / "roots-private").write_text("root's, 0600\n")
        os.chmod(share / "roots-private", 0o600)
        for p in (work, share, share / "mine"):
            os.chown(p, NOBODY, NOBODY)
        os.chmod(work, 0o700)
        code = USER_SCRIPT.format(repo=str(REPO), image=str(base / "image.erofs"),
                                  kernel=str(base / "kernel"), initrd=str(base / "initrd"),
                                  engine=ENGINE, share=str(share))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
               "XDG_RUNTIME_DIR": str(work)}
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", "/usr/bin/python3", "-c", code],
                           capture_output=True, text=True, timeout=600, env=env, cwd=work)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-3000:]
        got = json.loads(line[len("RESULT "):])
        host = {n: os.stat(share / n) for n in os.listdir(share)}
        texts = {n: (share / n).read_text() for n in ("roots-private",)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert got["uid"] == NOBODY
    # the caller's file is root's in the guest; root's files are nobody's; modes as they are
    assert got["stat"] == [0, "/share/mine 0 0 644\n/share/roots 65534 65534 644\n"
                              "/share/roots-private 65534 65534 600\n", ""], got["stat"]
    # guest root's files belong to the caller on the host
    assert got["create"][0] == 0, got["create"]
    assert (host["by-guest-root"].st_uid, host["by-guest-root"].st_gid) == (NOBODY, NOBODY)
    assert (host["guest-dir"].st_uid, host["guest-dir"].st_gid) == (NOBODY, NOBODY)
    # a guest user other than root cannot create; nothing given away to an unmapped id
    assert got["nobody_create"][0] != 0 and "by-guest-nobody" not in host, got["nobody_create"]
    assert got["give_away"][0] != 0, got["give_away"]
    assert host["by-guest-root"].st_uid == NOBODY
    # the guest's root may chmod the caller's own file
    assert got["chmod"] == [0, "600\n", ""], got["chmod"]
    assert host["mine"].st_mode & 0o777 == 0o600
    # but it is not the host's root: root's 0600 file stays closed both ways
    assert got["write_private"][0] != 0 and got["read_private"][0] != 0, got
    assert texts["roots-private"] == "root's, 0600\n"
