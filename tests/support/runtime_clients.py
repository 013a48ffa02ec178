"""What the vmm-runtime client tests and benchmarks share: the busybox image as a
`docker save` tarball (what `ctr image import` and `podman load` take, no registry), the
runtime as the executable path a client is given, and a private containerd daemon running
with docs/containerd-vmm.toml's handler merged into its default config."""
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from support import proctable
from support.oci_fixtures import LAYER_MT, Image, Layer, sha256, write_docker_save
from support.sandbox_image import busybox_layer

ROOT = Path(__file__).resolve().parent.parent.parent


def busybox_archive(directory: Path, ref: str) -> Path:
    """directory/busybox.tar: the busybox test image, tagged ref."""
    raw = busybox_layer(directory / "layer.tar").read_bytes()
    path = directory / "busybox.tar"
    write_docker_save(path, Image(layers=[Layer(raw, sha256(raw), LAYER_MT["none"])],
                                  cmd=["/bin/sh"]), ref)
    return path


def runtime_executable(directory: Path, engine: str) -> Path:
    """directory/vmm-runtime: this checkout's runtime on the given engine, as a program."""
    path = directory / "vmm-runtime"
    path.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} VMM_RUNTIME_ENGINE={engine} "
                    f"exec {sys.executable} -m vmm.runtime \"$@\"\n")
    path.chmod(0o755)
    return path


def our_kernel(release: str) -> bool:
    """Whether a `uname -r` is our guest kernel's, not the host's."""
    return release.strip().endswith("-vmm") and release.strip() != os.uname().release


def _cmdlines():
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    yield int(d), f.read().split(b"\0")
            except OSError:
                continue


def monitors_of(cid: str):
    """Our monitor processes (and exec monitors) still holding container cid."""
    return proctable.with_command_line("vmm.runtime", cid)


def run_in_pty(argv, script: bytes, expect: bytes, env=None, timeout: float = 180,
               send_after: float = 20.0):
    """argv (a client: ctr, podman, docker) on a new PTY, as a user at a terminal: types
    script once a shell prompt ("# ") shows, or send_after seconds after the start when none
    does (a guest shell may print its prompt before the client wires the terminal up);
    (output, exit status). Asserts expect is in the output."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvpe(argv[0], argv, env or os.environ)
        finally:
            os._exit(127)
    start = time.monotonic()
    out, sent = b"", False
    while time.monotonic() < start + timeout:
        if not sent and (b"# " in out or time.monotonic() > start + send_after):
            os.write(fd, script)
            sent = True
        r, _, _ = select.select([fd], [], [], 1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    done, status, until = 0, 0, time.monotonic() + 30   # its terminal closed: it is ending
    while done == 0 and time.monotonic() < until:
        done, status = os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05 if done == 0 else 0)
    if done == 0:   # still running: a hang, not a slow exit
        os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert expect in out, out[-2000:]
    return out, os.waitstatus_to_exitcode(status)


def processes_naming(*ids: str):
    """{pid: argv[0]} of every process whose command line names one of ids: a container's
    monitor, its shim (-id), and what the monitor started under the container's state
    directory (the VM, virtiofsd)."""
    found = {}
    for pid, cmd in _cmdlines():
        if any(i.encode() in arg for arg in cmd for i in ids):
            found[pid] = cmd[0].decode(errors="replace")
    return found


class Containerd:
    """containerd as a private daemon of a test: its own root, state and sockets under
    directory, and, as docs/kubernetes.md says to do on a node, containerd's default config
    with docs/containerd-vmm.toml's lines added (the "vmm" handler, BinaryName = runtime).
    cri: settings of the CRI plugin's config to replace, by key (each key's first line in
    the default config, e.g. sandbox_image, bin_dir, conf_dir, config_path). netns: a
    network namespace path to run the daemon in (its CNI bridge then lives there)."""

    def __init__(self, directory: Path, runtime: Path, cri=None, netns=None, wait=30.0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "containerd.sock"
        self.log_path = self.dir / "containerd.log"
        (self.dir / "config.toml").write_text(self._config(runtime, cri or {}))
        self._log = open(self.log_path, "wb")
        prefix = ["nsenter", f"--net={netns}", "--"] if netns else []
        self.proc = subprocess.Popen(prefix + ["containerd", "--config", str(self.dir / "config.toml")],
                                     stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + wait
        while subprocess.run(self.ctr("default") + ["version"], capture_output=True).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("containerd did not start: " + self.log()[-3000:])
            time.sleep(0.2)

    def _config(self, runtime, cri):
        base = subprocess.run(["containerd", "config", "default"], capture_output=True,
                              text=True, check=True).stdout
        d, sock = self.dir, self.socket
        base = re.sub(r'(?m)^root = .*$', f'root = "{d}/root"', base)
        base = re.sub(r'(?m)^state = .*$', f'state = "{d}/state"', base)
        base = re.sub(r'(?m)^(\[grpc\]\n(?:.*\n)*?\s*)address = .*$', rf'\g<1>address = "{sock}"',
                      base, count=1)
        base = re.sub(r'(?m)^(\[ttrpc\]\n(?:.*\n)*?\s*)address = .*$',
                      rf'\g<1>address = "{sock}.ttrpc"', base, count=1)
        for key, value in cri.items():
            base, n = re.subn(rf'(?m)^(\s*){key} = .*$', lambda m: f'{m.group(1)}{key} = {value}',
                              base, count=1)
            assert n == 1, f"containerd's default config has no {key}"
        snippet = (ROOT / "docs" / "containerd-vmm.toml").read_text().split("\n", 1)[1]
        return base + snippet.replace("/usr/local/bin/vmm-runtime", str(runtime))

    def ctr(self, namespace):
        """ctr's argv for this daemon, in namespace."""
        return ["ctr", "--address", str(self.socket), "--namespace", namespace]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        proctable.end(self.proc, 30)
        self._log.close()
