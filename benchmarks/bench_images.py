"""Images: pull of a ~200 MiB, 5-layer image from a local registry to a ready root disk,
against `skopeo copy` + `umoci unpack` + `mkfs.ext4 -d` on the same image, same run.
The two alternate round by round after a warm-up round each (the registry's and the host's
page cache warm for both), never in a median. Targets (issue 5): ratio at most 1.0; a second
pull of a cached image under 100 ms.

    pytest benchmarks/bench_images.py --benchmark-only -s
"""
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support.regserver import REGISTRY_BIN, SKOPEO, Registry  # noqa: E402
from support.oci_fixtures import Dir, File, Image, make_layer, write_layout  # noqa: E402

TOOLS = [REGISTRY_BIN, SKOPEO, shutil.which("umoci"), shutil.which("mkfs.ext4")]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(TOOLS), reason="needs docker-registry, skopeo, umoci, mkfs.ext4")]
LAYERS, FILES_PER_LAYER, FILE_SIZE = 5, 800, 52 * 1024      # 5 x 800 x 52 KiB ~ 203 MiB
ROUNDS = 3


def _file_content(rng):
    # Half random, half repetitive: compresses roughly like binaries and text in real images.
    random_part = rng.randbytes(FILE_SIZE // 2)
    text = (b"lorem ipsum dolor sit amet %d\n" % rng.randrange(1 << 30)) * (FILE_SIZE // 60)
    return (random_part + text)[:FILE_SIZE]


def _layers():
    rng = random.Random(5)
    out = []
    for n in range(LAYERS):
        entries = [Dir(f"opt/pkg{n}")]
        for d in range(8):
            entries.append(Dir(f"opt/pkg{n}/d{d}"))
            entries += [File(f"opt/pkg{n}/d{d}/f{i}", _file_content(rng))
                        for i in range(FILES_PER_LAYER // 8)]
        entries = [Dir("opt")] + entries if n == 0 else entries
        out.append(make_layer(entries, "gzip"))
    return out


@pytest.fixture(scope="module")
def bench_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-images")
    reg = Registry(root / "registry")
    try:
        write_layout(root / "layout", [Image(_layers(), cmd=["/bin/sh"])])
        reg.push(root / "layout", "bench/big:1")
        yield reg, f"{reg.host}/bench/big:1", root
    finally:
        reg.stop()


def _baseline(ref, work) -> float:
    """skopeo + umoci + mkfs.ext4 into a fresh work dir; seconds, the clean-up not timed."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    t0 = time.perf_counter()
    subprocess.run([SKOPEO, "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{ref}", f"oci:{work / 'oci'}:big"], check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{work / 'oci'}:big", str(work / "bundle")],
                   check=True, capture_output=True)
    rootfs = work / "bundle" / "rootfs"
    used = int(subprocess.run(["du", "-sb", str(rootfs)], check=True, capture_output=True,
                              text=True).stdout.split()[0])
    size_mib = used * 3 // 2 // (1 << 20) + 64
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), str(work / "disk.ext4"), f"{size_mib}M"],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def _ours(ref, home):
    import vmm.images as images
    os.environ["MSB_HOME"] = str(home)
    images.pull(ref, insecure=True, progress=False)
    return images.root_disk(ref)


def test_cold_pull(benchmark, alternate, bench_image, monkeypatch):
    """Ours (a fresh MSB_HOME each round: nothing cached) and the baseline in turn."""
    _, ref, root = bench_image
    monkeypatch.setenv("MSB_HOME", str(root / "unused"))
    homes = []

    def ours() -> float:
        home = Path(tempfile.mkdtemp(dir=root, prefix="home-"))
        homes.append(home)
        t0 = time.perf_counter()
        _ours(ref, home)
        return time.perf_counter() - t0
    try:
        alternate(benchmark, "image pull to root disk", ours=("vmm.images pull+root_disk", ours),
                  baseline=("skopeo+umoci+mkfs.ext4", lambda: _baseline(ref, root / "baseline")),
                  rounds=ROUNDS, target="ratio <= 1.0")
        disk = homes[-1] / "images" / "disks"
        assert any(p.suffix == ".erofs" for p in disk.iterdir())
    finally:
        for h in homes:
            shutil.rmtree(h, ignore_errors=True)


def test_cached_pull(benchmark, compare, bench_image, monkeypatch, tmp_path):
    _, ref, _ = bench_image
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "home"))
    _ours(ref, tmp_path / "home")                    # warm the store and the disk cache
    t0 = time.perf_counter()
    benchmark.pedantic(_ours, args=(ref, tmp_path / "home"), rounds=20, iterations=1)
    compare(benchmark, "image second pull (cached)", "ours", "pull+root_disk, warm store",
            target="< 100 ms")
    assert benchmark.stats.stats.median < 0.1, "a cached pull should take under 100 ms"
    assert time.perf_counter() - t0 < 30
