"""Build the compiled launcher `vmm-boot` (csrc/launcher/) from the same C core sources as
vmm._core (build_core.py's list), for boots that must not pay CPython's start-up.

setup.py runs this after the extension (build_ext) and puts the program in the package as
vmm/bin/vmm-boot; `python3 csrc/build_launcher.py OUT` builds it alone.

It is linked statically when the C library allows: the dynamic loader's work is a
measurable part of a ~1 ms process start. Without a static libc it is linked dynamically.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from build_core import sources as core_sources  # noqa: E402  (the extension's own list)

NAME = "vmm-boot"
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"]


def sources():
    launcher = os.path.join(HERE, "launcher", "vmm_boot.c")
    return [os.path.join(ROOT, p) for p in core_sources()] + [launcher]


def compiler():
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def build(out_path, verbose=False):
    """Compile and link the launcher to out_path; raises RuntimeError with the compiler's
    output if it fails."""
    cc = compiler()
    if not cc:
        raise RuntimeError("no C compiler found to build vmm-boot")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    base = [cc, *CFLAGS, "-I", HERE, *sources(), "-o", tmp, "-pthread"]
    last = None
    for extra in (["-static"], []):
        cmd = base + extra
        if verbose:
            print(" ".join(cmd))
        last = subprocess.run(cmd, capture_output=True, text=True)
        if last.returncode == 0:
            os.chmod(tmp, 0o755)
            os.replace(tmp, out_path)  # never a half-written program under the real name
            return out_path
    raise RuntimeError(f"cannot build {NAME}:\n{last.stderr.strip()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT")
    build(sys.argv[1], verbose=True)
