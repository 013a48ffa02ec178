"""cffi (API mode) builder for vmm._core.

The Python-visible C interface is declared once, in core_api.h, between the markers
`/* cffi-begin */` and `/* cffi-end */`: that slice is what cffi parses (it cannot take
the preprocessor), and the whole header is what the C files include, so the two can't drift. Functions written
in Python and called from C are marked `/* python-callback */` there (see _cdef).
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _cdef():
    with open(os.path.join(HERE, "core_api.h")) as f:
        text = f.read()
    m = re.search(r"/\* cffi-begin \*/(.*)/\* cffi-end \*/", text, re.S)
    if not m:
        raise RuntimeError("csrc/core_api.h has no cffi-begin/cffi-end block")
    # A declaration marked `/* python-callback */` is a plain prototype to the C compiler
    # and a function implemented in Python to cffi ("Python+C" makes it callable from
    # every C file of the core, not only the generated module).
    return m.group(1).replace("/* python-callback */", 'extern "Python+C"')


def sources():
    """The core's C files, relative to the project root (the launcher links them too)."""
    files = sorted(glob.glob(os.path.join(HERE, "*.c")) + glob.glob(os.path.join(HERE, "virtio", "*.c")))
    return [os.path.relpath(p, os.path.dirname(HERE)) for p in files]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "vmm._core",
    '#include "core_api.h"\n',
    sources=sources(),
    include_dirs=[os.path.relpath(HERE, os.path.dirname(HERE))],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
