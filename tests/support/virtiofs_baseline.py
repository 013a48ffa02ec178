"""The virtio-fs benchmark's baseline, and the guest work both sides time.

OPS is one shell script that both sides run in the guest with the same busybox and the
same static clock (fs_probe now): `sh -c OPS sh OP DIR`, printing `ELAPSED_NS <n>`.
Ours runs it through Sandbox.exec; the baseline guest below runs it when the host writes
`OP DIR` on its serial console.

The baseline is plain QEMU, not our code: `qemu-system-x86_64 -M microvm` with QEMU's own
`vhost-user-fs-device` on a virtiofsd we start here by hand (same binary, options passed
in by the caller so they match the engine's), the project's guest kernel, and a busybox
initramfs whose init mounts the tag and then serves OP lines. The machine options mirror
the qemu engine's (TCG with the same translation-cache size, -cpu max, the same RAM as a
shared memfd, the same kernel command line prefix): only the virtio-fs path differs.

    with VirtiofsdByHand(dir, sock, options) as fsd, BaselineGuest(sock, initrd, tag=tag) as g:
        g.run("write", "/share")    # -> seconds, measured in the guest
"""
from __future__ import annotations

import os
import queue
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

from support import proctable
from vmm.guest import initramfs, kernel

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
SEQ_MIB = 256
GUEST_DIR = "/share"
TAG = "bench"

# $1 = op, $2 = directory. Set-up that the op does not time comes before t0.
OPS = r"""
op=$1; d=$2; now() { fs_probe now; }
case $op in
write)
    rm -f "$d/seq.bin"; sync
    t0=$(now); dd if=/dev/zero of="$d/seq.bin" bs=1M count=%(mib)d conv=fsync 2>/dev/null \
        || { echo "OP_FAIL dd write"; exit 1; }; t1=$(now) ;;
read)
    [ -f "$d/seq.bin" ] || dd if=/dev/zero of="$d/seq.bin" bs=1M count=%(mib)d conv=fsync 2>/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(now); dd if="$d/seq.bin" of=/dev/null bs=1M 2>/dev/null \
        || { echo "OP_FAIL dd read"; exit 1; }; t1=$(now) ;;
tar)
    rm -rf "$d/tree"; mkdir "$d/tree"; sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(now); tar xf "$d/small.tar" -C "$d/tree" && sync \
        || { echo "OP_FAIL tar"; exit 1; }; t1=$(now)
    n=$(find "$d/tree" -type f | wc -l); echo "FILES $n" ;;
*) echo "OP_FAIL unknown op $op"; exit 1 ;;
esac
echo "ELAPSED_NS $((t1 - t0))"
""" % {"mib": SEQ_MIB}

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp %(dir)s
if mount -t virtiofs %(tag)s %(dir)s; then echo "BASELINE_READY"; else echo "BASELINE_FAIL mount"; fi
while read -r op d; do
    sh /ops.sh "$op" "$d"
    echo "OP_DONE"
done
""" % {"dir": GUEST_DIR, "tag": TAG}


def build_baseline_initramfs(dest: Path, probe: Path) -> Path:
    """busybox, fs_probe, the init above and OPS, as a newc archive."""
    d, f, none = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, (0, 0)
    entries = [(n, d, b"", none) for n in ("bin", "dev", "proc", "sys", "tmp")]
    entries += [("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
                ("init", f, INIT.encode(), none),
                ("ops.sh", f, OPS.encode(), none),
                ("bin/busybox", f, Path(shutil.which("busybox")).read_bytes(), none),
                ("bin/fs_probe", f, Path(probe).read_bytes(), none)]
    out = Path(dest) / "baseline-initramfs.cpio"
    out.write_bytes(initramfs.newc_archive(entries))
    return out


def elapsed(output: str) -> float:
    """Seconds from OPS's ELAPSED_NS line; AssertionError with the output otherwise."""
    for line in output.splitlines():
        if line.startswith("ELAPSED_NS "):
            return int(line.split()[1]) / 1e9
    raise AssertionError(f"no ELAPSED_NS in the guest's output:\n{output[-2000:]}")


class VirtiofsdByHand:
    """virtiofsd serving source on socket_path, run directly (not through our engine);
    its log goes to socket_path + ".log"."""

    def __init__(self, source, socket_path, options=("cache=auto",)):
        self.argv = [VIRTIOFSD, f"--socket-path={socket_path}", "-o", f"source={source}"]
        for opt in options:
            self.argv += ["-o", opt]
        self.socket_path = str(socket_path)
        self.log_path = self.socket_path + ".log"
        self.proc = None

    def __enter__(self):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                with open(self.log_path, errors="replace") as f:
                    raise AssertionError(f"virtiofsd did not listen on {self.socket_path}: "
                                         f"{f.read()[-2000:]}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            proctable.end(self.proc, 5)


class BaselineGuest:
    """Plain QEMU microvm with vhost-user-fs-device on socket_path; run(op) drives OPS."""

    def __init__(self, socket_path, initrd, memory_mib=512, tb_size_mib=16, tag=TAG, accel="tcg"):
        # TCG as the qemu engine runs it (its command-line prefix too: the guest's TSC
        # frequency); "kvm" where the kvm engine is compared (the nested tier's L1).
        if accel == "kvm":
            accel_args, append = ["-accel", "kvm", "-cpu", "host"], "console=ttyS0 reboot=t panic=-1"
        else:
            from vmm.engines.qemu import cmdline_prefix
            accel_args = ["-accel", f"tcg,tb-size={tb_size_mib}", "-cpu", "max"]
            append = cmdline_prefix()
        self.argv = [
            "qemu-system-x86_64",
            "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off,memory-backend=mem",
            "-global", "virtio-mmio.force-legacy=false",
            *accel_args, "-smp", "1",
            "-m", str(memory_mib),
            "-object", f"memory-backend-memfd,id=mem,size={memory_mib}M,share=on",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio",
            "-kernel", str(kernel.guest_kernel()), "-initrd", str(initrd),
            "-append", append + " quiet",
            "-chardev", f"socket,id=fs,path={socket_path}",
            "-device", f"vhost-user-fs-device,chardev=fs,tag={tag}",
        ]
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.log = []
        self.proc = None

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _until(self, prefix, timeout):
        got = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"baseline guest: no {prefix!r} within {timeout}s:\n"
                                     + "\n".join(self.log[-30:])) from None
            if line is None:
                raise AssertionError("baseline QEMU ended:\n" + "\n".join(self.log[-30:]))
            if line.startswith(prefix):
                return "\n".join(got)
            got.append(line)

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            out = self._until("BASELINE_", 120)
            assert self.log and self.log[-1] == "BASELINE_READY", \
                out + "\n" + "\n".join(self.log[-30:])
        except BaseException:
            self.__exit__()
            raise
        return self

    def run(self, op, directory=GUEST_DIR, timeout=600) -> float:
        self.proc.stdin.write(f"{op} {directory}\n".encode())
        self.proc.stdin.flush()
        out = self._until("OP_DONE", timeout)
        assert "OP_FAIL" not in out, out
        return elapsed(out)

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.stdout.close()
