"""The L1 initramfs: busybox-static, the kernel modules L1 needs (with their dependencies,
in load order, read from each module's own .modinfo) and init.sh.

Cached under the nested cache, keyed by the kernel release, the module list, init.sh and
busybox itself, so an unchanged input never rebuilds and any change does.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List

from .cache import nested_cache
from .l1_kernel import L1Kernel, L1Unavailable

# What L1 must load: kvm-amd (SVM as TCG emulates it), virtio-pci with 9p for the host's
# root and the results directory, overlay for a writable root on top, virtio-net so passt
# inside L1 has an interface with a default route to take its addresses from.
WANTED_MODULES = ("kvm_amd", "virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net",
                  "veth", "dummy",  # veth, dummy: the network tests build namespaces
                  # vmm-runtime in a container's namespace: a tap mirrored to its veth by tc
                  "tun", "sch_ingress", "cls_u32", "act_mirred",
                  # Docker's default network and CNI's bridge plugin make a Linux bridge
                  "bridge")
INIT = Path(__file__).with_name("init.sh")
BUSYBOX = "/bin/busybox"


def _module_index(kernel: L1Kernel) -> Dict[str, Path]:
    # Module names use '_' and '-' interchangeably; the file may spell either.
    return {p.name[:-3].replace("-", "_"): p for p in kernel.modules.rglob("*.ko")}


def _depends(path: Path) -> List[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)", path.read_bytes())
    if not m:
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


def module_order(kernel: L1Kernel, wanted=WANTED_MODULES) -> List[Path]:
    """The module files for `wanted`, dependencies first. A module built into the kernel
    (modules.builtin) needs no file and is left out."""
    index = _module_index(kernel)
    builtin = set()
    builtin_list = kernel.modules / "modules.builtin"
    if builtin_list.exists():
        builtin = {Path(line).name[:-3].replace("-", "_")
                   for line in builtin_list.read_text().split() if line.endswith(".ko")}
    order: List[str] = []

    def add(name: str) -> None:
        if name in order or name in builtin:
            return
        if name not in index:
            raise L1Unavailable(f"kernel {kernel.release} has no module {name}")
        for dep in _depends(index[name]):
            add(dep)
        order.append(name)

    for name in wanted:
        add(name)
    return [index[n] for n in order]


def _key(kernel: L1Kernel, modules: List[Path]) -> str:
    h = hashlib.sha256()
    h.update(kernel.release.encode() + b"\0" + kernel.version.encode() + b"\0")
    for m in modules:
        h.update(m.name.encode() + b"\0")
    h.update(INIT.read_bytes())
    with open(BUSYBOX, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def l1_initramfs(kernel: L1Kernel) -> Path:
    """The initramfs for `kernel`, built on first use. Raises L1Unavailable."""
    if not os.path.exists(BUSYBOX):
        raise L1Unavailable(f"no {BUSYBOX} (apt-get install busybox-static)")
    if not shutil.which("cpio"):
        raise L1Unavailable("no cpio (apt-get install cpio)")
    modules = module_order(kernel)
    out = nested_cache() / f"initramfs-{_key(kernel, modules)}.cpio.gz"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=nested_cache()) as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "dev", "proc", "sys", "lib/modules", "lower", "rw", "newroot"):
            (root / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        for m in modules:
            shutil.copy2(m, root / "lib" / "modules" / m.name)
        (root / "lib" / "modules" / "order").write_text("".join(m.name + "\n" for m in modules))
        shutil.copy2(INIT, root / "init")
        (root / "init").chmod(0o755)
        names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                              input=names, capture_output=True, check=True).stdout
        staging = Path(tmp) / "initramfs.cpio.gz"
        staging.write_bytes(gzip.compress(cpio, compresslevel=1))
        staging.rename(out)  # atomic: a concurrent builder's copy is identical
    return out
