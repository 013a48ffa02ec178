"""The tests' EROFS reader (tests/support/erofs_reader.py) against images mkfs.erofs made."""
import hashlib
import os
import shutil
import stat
import subprocess

import pytest

from support.erofs_reader import ErofsReader


needs_mkfs = pytest.mark.skipif(shutil.which("mkfs.erofs") is None, reason="no mkfs.erofs")


def _sample_tree(top):
    os.makedirs(os.path.join(top, "a", "b"))
    for i in range(300):   # several dirent blocks
        with open(os.path.join(top, "a", f"file-{i:04d}-" + "x" * 40), "wb") as f:
            f.write(os.urandom(i * 37))
    with open(os.path.join(top, "a", "b", "big"), "wb") as f:
        f.write(os.urandom(3 * 4096 + 100))
    os.symlink("a/b/big", os.path.join(top, "link"))
    os.link(os.path.join(top, "a", "b", "big"), os.path.join(top, "hard"))
    os.setxattr(os.path.join(top, "a", "b", "big"), "user.check", b"value-1")
    os.utime(os.path.join(top, "link"), ns=(0, 1_500_000_123), follow_symlinks=False)


@needs_mkfs
@pytest.mark.parametrize("extra", [[], ["--chunksize=4096"]])
def test_reader_reads_what_mkfs_erofs_wrote(tmp_path, extra):
    src = tmp_path / "src"
    _sample_tree(str(src))
    image = tmp_path / "img"
    subprocess.run(["mkfs.erofs", "--quiet", *extra, str(image), str(src)], check=True)
    tree = ErofsReader(str(image)).walk()
    seen = set()
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.fsencode("/" + os.path.relpath(full, src))
            seen.add(rel)
            st, node = os.lstat(full), tree[rel]
            assert node.mode == st.st_mode, rel
            assert (node.uid, node.gid, node.nlink) == (st.st_uid, st.st_gid, st.st_nlink)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    assert node.sha256 == hashlib.sha256(f.read()).hexdigest(), rel
            if stat.S_ISLNK(st.st_mode):
                assert node.target == os.fsencode(os.readlink(full))
    assert seen == set(tree) - {b"/"}
    assert tree[b"/a/b/big"].xattrs[b"user.check"] == b"value-1"
    assert tree[b"/a/b/big"].nid == tree[b"/hard"].nid


