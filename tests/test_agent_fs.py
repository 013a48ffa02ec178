"""File operations through the guest agent (agent as a host process, paths in a temp dir)."""
import errno
import os
import stat

import pytest

from support.agent_harness import agent, client, needs_musl  # noqa: F401 (fixtures)
from vmm.agent import FsError

pytestmark = needs_musl


def test_write_read_chunked(client, tmp_path):
    data = os.urandom(3 * (1 << 20) + 12345)  # several windows and a ragged tail
    path = str(tmp_path / "blob")
    assert client.fs.write(path, data, mode=0o600) == len(data)
    assert (tmp_path / "blob").read_bytes() == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert client.fs.read(path) == data
    chunks = list(client.fs.read_iter(path))
    assert len(chunks) > 1 and max(map(len, chunks)) <= 64 * 1024


def test_read_offset_length_and_append(client, tmp_path):
    path = str(tmp_path / "f")
    client.fs.write(path, b"0123456789")
    assert client.fs.read(path, offset=3, length=4) == b"3456"
    client.fs.write(path, b"AB", append=True)
    assert client.fs.read(path) == b"0123456789AB"
    client.fs.write(path, b"new")  # truncates
    assert client.fs.read(path) == b"new"


def test_write_from_file_object(client, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(700_000))
    with open(src, "rb") as f:
        client.fs.write(str(tmp_path / "dst"), f)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_stat(client, tmp_path):
    (tmp_path / "file").write_bytes(b"x" * 1000)
    (tmp_path / "link").symlink_to("file")
    st = client.fs.stat(str(tmp_path / "file"))
    assert st.is_file and st.size == 1000 and st.nlink == 1
    assert st.mtime_ns == os.stat(tmp_path / "file").st_mtime_ns
    assert client.fs.stat(str(tmp_path)).is_dir
    ln = client.fs.stat(str(tmp_path / "link"))
    assert ln.is_symlink and ln.target == "file"


def test_list(client, tmp_path):
    names = {f"file{i}" for i in range(300)}
    for n in names:
        (tmp_path / n).write_bytes(n.encode())
    (tmp_path / "sub").mkdir()
    entries = {e.name: e for e in client.fs.list(str(tmp_path))}
    assert set(entries) == names | {"sub"}
    assert entries["sub"].is_dir and not entries["file7"].is_dir
    assert entries["file7"].size == 5


def test_list_larger_than_the_window(client, tmp_path):
    # 1200 entries of ~300 bytes (long names): ~360 KiB of ENTRIES, more than one window.
    names = {f"{i:05d}-" + "n" * 240 for i in range(1200)}
    for n in names:
        (tmp_path / n).touch()
    assert {e.name for e in client.fs.list(str(tmp_path))} == names


def test_mkdir_and_remove(client, tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    client.fs.mkdir(str(deep), parents=True)
    assert deep.is_dir()
    client.fs.mkdir(str(deep), parents=True)  # exists: fine with parents
    with pytest.raises(FsError) as e:
        client.fs.mkdir(str(deep))
    assert e.value.errno == errno.EEXIST and e.value.kind == "exists"
    (deep / "f").write_text("x")
    with pytest.raises(FsError) as e:
        client.fs.remove(str(tmp_path / "a"))
    assert e.value.errno == errno.ENOTEMPTY
    client.fs.remove(str(deep / "f"))
    assert not (deep / "f").exists()
    (deep / "g").write_text("y")
    client.fs.remove(str(tmp_path / "a"), recursive=True)
    assert not (tmp_path / "a").exists()


def test_recursive_remove_does_not_follow_symlinks(client, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "link").symlink_to(keep)
    client.fs.remove(str(victim), recursive=True)
    assert (keep / "precious").exists() and not victim.exists()


def test_errors(client, tmp_path):
    with pytest.raises(FsError) as e:
        client.fs.read(str(tmp_path / "missing"))
    assert (e.value.errno, e.value.kind) == (errno.ENOENT, "not_found")
    assert str(tmp_path / "missing") in str(e.value)
    with pytest.raises(FsError) as e:
        client.fs.read(str(tmp_path))
    assert e.value.errno == errno.EISDIR
    with pytest.raises(FsError) as e:
        client.fs.write(str(tmp_path / "no" / "dir" / "f"), b"x")
    assert e.value.errno == errno.ENOENT
    assert not client.fs.exists(str(tmp_path / "missing"))
    # The connection is still good after errors.
    assert client.exec(["true"]).code == 0


def test_fifo_is_refused_without_blocking_the_agent(client, tmp_path):
    """Finding 8: the agent (PID 1, one thread) must not block opening a FIFO the host
    names; it refuses non-regular files with kind not_regular (EINVAL)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FsError) as e:
        client.fs.read(str(fifo), timeout=10)  # no writer: a blocking open waits forever
    assert (e.value.kind, e.value.errno) == ("not_regular", errno.EINVAL)
    assert "FIFO" in str(e.value)
    with pytest.raises(FsError) as e:
        client.fs.write(str(fifo), b"x", timeout=10)  # no reader
    assert (e.value.kind, e.value.errno) == ("not_regular", errno.EINVAL)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(FsError) as e:
            client.fs.write(str(fifo), b"x", timeout=10)  # a reader: the open succeeds
        assert e.value.kind == "not_regular"
        assert os.read(reader, 10) == b""  # nothing was written into it
    finally:
        os.close(reader)
    with pytest.raises(FsError) as e:
        client.fs.read("/dev/null", timeout=10)
    assert e.value.kind == "not_regular" and "character device" in str(e.value)
    with pytest.raises(FsError) as e:
        client.fs.read(str(tmp_path), timeout=10)
    assert e.value.kind == "is_a_directory"
    assert client.ping(timeout=5) > 0  # the agent still serves
