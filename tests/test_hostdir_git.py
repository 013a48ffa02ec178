"""A guest `git clone` of a local repository in a host directory (virtio-fs), the clone
written into the host directory too: git's object store exercises what a build or an
editor does (hard links of a local clone, renames of lock files into place, fsync, mmap
of pack files, many small files), and the host's own git checks the result.

The image is the busybox test image plus the host's git (support/hostdir_image.py).
"""
import os
import shutil
import subprocess

import pytest

from support.hostdir_image import build_hostdir_image, have_git
from support.hostdir_sandbox import hostdir_sandbox
from support.sandbox_image import have_busybox
from support.test_engine import ENGINE, engine_marks

pytestmark = [pytest.mark.slow, *engine_marks(),
              pytest.mark.skipif(not have_busybox(), reason="no /bin/busybox (busybox-static)"),
              pytest.mark.skipif(not shutil.which("musl-gcc"), reason="no musl-gcc (musl-tools)"),
              pytest.mark.skipif(not have_git(), reason="no git on the host to put in the image")]

T = 300
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "HOME": "/tmp", "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args, cwd):
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


def make_repo(path):
    """Three commits: text files in subdirectories, an executable, a symlink, a 1 MiB
    binary (a pack with a large object), a rename and a deletion."""
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    for i in range(40):
        sub = path / f"src{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / f"m{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    (path / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(path / "run.sh", 0o755)
    os.symlink("src0/m0.c", path / "link")
    (path / "blob.bin").write_bytes(os.urandom(1 << 20))
    git("add", "-A", cwd=path)
    git("commit", "-qm", "one", cwd=path)
    git("mv", "src1/m1.c", "src2/moved.c", cwd=path)
    git("rm", "-q", "src3/m3.c", cwd=path)
    git("commit", "-qm", "two", cwd=path)
    (path / "src0" / "m0.c").write_text("int f0(void) { return 100; }\n")
    git("commit", "-qam", "three", cwd=path)
    git("gc", "-q", cwd=path)    # a pack file, as a fetched repository has


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    d = tmp_path_factory.mktemp("git-share")
    make_repo(d / "origin")
    return d


@pytest.fixture(scope="module")
def sb(tmp_path_factory, share, kernel_path):
    image = build_hostdir_image(tmp_path_factory.getbasetemp() / "hostdir-image")
    box = hostdir_sandbox(image, [(share, "/work", False)], engine=ENGINE, kernel=kernel_path,
                          network=None, boot_timeout=90, env=GIT_ENV)
    yield box
    box.stop()


def guest(sb, script):
    r = sb.exec(["sh", "-c", script], timeout=T)
    assert r.code == 0, (script, r)
    return r.stdout.decode()


def test_guest_clones_a_host_repository_into_the_host_directory(sb, share):
    out = guest(sb, "git clone -q /work/origin /work/clone && cd /work/clone && "
                    "git fsck --strict --no-progress && git status --porcelain && "
                    "git log --format=%H%x20%s")
    head = git("rev-parse", "HEAD", cwd=share / "origin").strip()
    assert out.splitlines()[0] == f"{head} three", out
    assert len(out.splitlines()) == 3
    clone = share / "clone"
    # the host's git agrees: same history, a sound object store, a clean work tree
    assert git("rev-parse", "HEAD", cwd=clone).strip() == head
    git("fsck", "--strict", "--no-progress", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    # the checkout is the repository's: contents, the executable bit, the symlink
    for rel in ("src0/m0.c", "src2/moved.c", "blob.bin", "run.sh"):
        assert (clone / rel).read_bytes() == (share / "origin" / rel).read_bytes(), rel
    assert not (clone / "src3" / "m3.c").exists()
    assert os.stat(clone / "run.sh").st_mode & 0o111
    assert os.readlink(clone / "link") == "src0/m0.c"
    # a local clone hard-links the objects rather than copying them, through virtio-fs
    packs = sorted((clone / ".git" / "objects" / "pack").glob("*.pack"))
    assert packs and os.stat(packs[0]).st_nlink == 2, packs


def test_guest_commit_is_read_by_the_host_and_pulled_back(sb, share):
    if not (share / "clone").exists():
        guest(sb, "git clone -q /work/origin /work/clone")
    guest(sb, "cd /work/clone && echo guest > from-guest.txt && ./run.sh > ran.txt && "
              "git add from-guest.txt ran.txt && git commit -qm 'from the guest' && "
              "git gc -q")
    clone = share / "clone"
    assert git("log", "-1", "--format=%s", cwd=clone).strip() == "from the guest"
    git("fsck", "--strict", "--no-progress", cwd=clone)
    assert git("show", "HEAD:ran.txt", cwd=clone) == "run\n"
    # the host pulls the guest's commit into the origin
    git("pull", "-q", "--ff-only", str(clone), "main", cwd=share / "origin")
    assert (share / "origin" / "from-guest.txt").read_text() == "guest\n"
    # and a commit the host makes is fetched by the guest
    (share / "origin" / "from-host.txt").write_text("host\n")
    git("add", "from-host.txt", cwd=share / "origin")
    git("commit", "-qm", "from the host", cwd=share / "origin")
    out = guest(sb, "cd /work/clone && git pull -q --ff-only origin main && "
                    "cat from-host.txt && git log -1 --format=%s")
    assert out == "host\nfrom the host\n"
