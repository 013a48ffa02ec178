"""Build the C core (csrc/) into the extension vmm._core with cffi in API mode.

Everything is in pyproject.toml except the extension itself; here we only check, before
compiling, that a C compiler and the Linux KVM headers exist, so a missing toolchain is one
clear sentence instead of a page of compiler output.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# What a plain (non-editable) install carries of guest/: the sources vmm builds on first use
# (kernel config and build script, test init, agent). An editable install reads guest/ in place.
GUEST_PARTS = ("kernel", "init", "agent")

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler():
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def _check_toolchain():
    cc = _compiler()
    if not cc:
        sys.exit("error: vmm needs a C compiler to build its core (csrc/); "
                 "install one, e.g. `apt-get install build-essential`")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <linux/kvm.h>\n#include <Python.h>\nint main(void){return KVM_API_VERSION;}\n")
        inc = sysconfig.get_paths()["include"]
        r = subprocess.run([cc, "-I", inc, "-c", src, "-o", os.path.join(tmp, "probe.o")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            missing = "linux/kvm.h" if "kvm.h" in r.stderr else "Python.h" if "Python.h" in r.stderr else None
            hint = {
                "linux/kvm.h": "the Linux kernel headers (`apt-get install linux-libc-dev`)",
                "Python.h": "the Python development headers (`apt-get install python3-dev`)",
            }.get(missing, "a working C toolchain")
            sys.exit(f"error: cannot compile the vmm C core with {cc}: it needs {hint}.\n{r.stderr.strip()}")


if any(a in sys.argv for a in ("build_ext", "build", "install", "develop", "bdist_wheel", "editable_wheel")):
    _check_toolchain()

class BuildPyWithGuest(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = os.path.join(self.build_lib, "vmm", "_guest")
        for part in GUEST_PARTS:
            shutil.copytree(os.path.join(HERE, "guest", part), os.path.join(dest, part),
                            dirs_exist_ok=True)


class BuildExtWithLauncher(build_ext):
    """The extension, then the compiled launcher vmm-boot from the same C core
    (csrc/build_launcher.py), as package data: vmm/bin/vmm-boot, in the source tree for an
    in-place or editable build, else in the build tree that gets installed."""

    def run(self):
        super().run()
        sys.path.insert(0, os.path.join(HERE, "csrc"))
        import build_launcher

        in_place = self.inplace or getattr(self, "editable_mode", False)
        out = os.path.join(HERE if in_place else self.build_lib, "vmm", "bin", build_launcher.NAME)
        inputs = [*build_launcher.sources(), build_launcher.__file__,
                  *glob.glob(os.path.join(HERE, "csrc", "**", "*.h"), recursive=True)]
        if not self.force and os.path.exists(out) and \
                os.path.getmtime(out) >= max(os.path.getmtime(p) for p in inputs):
            return
        try:
            build_launcher.build(out)
        except RuntimeError as e:
            sys.exit(f"error: {e}")


setup(cffi_modules=["csrc/build_core.py:ffibuilder"],
      cmdclass={"build_py": BuildPyWithGuest, "build_ext": BuildExtWithLauncher})
