"""The guest kernel's cache key asks dpkg for linux-source's version: a process spawn that
every Sandbox.create() used to pay (guest_kernel() -> linux_source_version(), 20-30 ms on
the host, ~0.4 s in the nested tier's L1). It is asked once per process now, and again
only when the tarball or dpkg's database changes (an upgrade must still rebuild)."""
import os
import subprocess

import pytest

from vmm.guest import kernel


@pytest.fixture
def dpkg(tmp_path, monkeypatch):
    tarball, status = tmp_path / "linux-source.tar.xz", tmp_path / "status"
    tarball.write_bytes(b"tar")
    status.write_text("Package: linux-source-6.1\nVersion: 6.1.1-1\n")
    monkeypatch.setattr(kernel, "LINUX_SOURCE_TARBALL", tarball)
    monkeypatch.setattr(kernel, "DPKG_STATUS", status, raising=False)
    monkeypatch.setattr(kernel, "_source_version_memo", {}, raising=False)
    asked = []

    def fake_run(argv, **kw):
        assert argv[0] == "dpkg-query"
        asked.append(argv)
        version = status.read_text().split("Version: ")[1].strip()
        return subprocess.CompletedProcess(argv, 0, stdout=version, stderr="")
    monkeypatch.setattr(kernel.subprocess, "run", fake_run)
    return tarball, status, asked


def test_asked_once_while_nothing_changes(dpkg):
    _, _, asked = dpkg
    assert [kernel.linux_source_version() for _ in range(5)] == ["6.1.1-1"] * 5
    assert len(asked) == 1


def test_asked_again_after_an_upgrade(dpkg):
    tarball, status, asked = dpkg
    assert kernel.linux_source_version() == "6.1.1-1"
    status.write_text("Package: linux-source-6.1\nVersion: 6.1.2-1\n")
    os.utime(status, ns=(1, 1))   # a different mtime whatever the clock's resolution
    assert kernel.linux_source_version() == "6.1.2-1"
    tarball.write_bytes(b"a new tarball")
    assert kernel.linux_source_version() == "6.1.2-1"
    assert len(asked) == 3


def test_missing_tarball_still_says_so(dpkg, monkeypatch, tmp_path):
    monkeypatch.setattr(kernel, "LINUX_SOURCE_TARBALL", tmp_path / "absent.tar.xz")
    with pytest.raises(kernel.KernelError, match="apt-get install linux-source-6.1"):
        kernel.linux_source_version()
