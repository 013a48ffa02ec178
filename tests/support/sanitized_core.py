"""The C core built with AddressSanitizer + UBSan, and how to run Python under it.

The fuzz tier (tests/test_fuzz_tier.py) re-runs every `@pytest.mark.fuzz` test in a child
pytest whose `vmm._core` is this build. Nothing in vmm/ knows about it:

- build() compiles the same sources with the same setup.py, only with the sanitizer flags
  added through CFLAGS/LDFLAGS, into a cache outside the checkout keyed by its inputs:
  ~/.cache/vmm/sancore/<key>/vmm/_core*.so, key = hash(csrc sources, build_core.py,
  setup.py, flags, compiler, Python). A second call with unchanged inputs is a lookup.
- env() is the environment for a child process: gcc's libasan (and libubsan) preloaded,
  since the Python interpreter itself is not instrumented and the ASan runtime must come
  first; leak detection off (CPython keeps memory until exit on purpose); any report
  aborts. tests/support/sanitized_site/ goes first on PYTHONPATH: its sitecustomize.py
  points the import of `vmm._core` (and only that module) at the sanitized build, so every
  Python process started with this environment, grandchildren included, loads it.
- report() finds a sanitizer report in a child's output, for a failure message that
  quotes it.

Usage (from tests/, or scripts/build-sanitized-core.sh from anywhere):
  python -m support.sanitized_core [build]          build it (or find it) and print its path
  python -m support.sanitized_core fuzz SECONDS     the fuzz tier, SECONDS per fuzzer
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
SITE = SUPPORT / "sanitized_site"

SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined", "-g"]
# detect_leaks=0: CPython does not free everything at exit, so leak reports would be noise.
# abort_on_error=1 / halt_on_error: the first report ends the process with a non-zero status.
ASAN_OPTIONS = "detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1:abort_on_error=1"
CORE_ENV = "VMM_SANITIZED_CORE"   # read by sanitized_site/sitecustomize.py

# The first line of an ASan/UBSan report, or UBSan's "runtime error" line, wherever it is
# quoted (a child pytest prefixes its grandchild's output with "E   ").
_REPORT = re.compile(r"^.*(==\d+==ERROR: (Address|Undefined)Sanitizer|: runtime error: ).*$", re.M)


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "vmm" / "sancore"


def _compiler() -> str:
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("gcc") or cc


def _runtime(name: str) -> str | None:
    """The path of gcc's sanitizer runtime `name` (libasan.so), or None if gcc has none."""
    r = subprocess.run([_compiler(), f"-print-file-name={name}"], capture_output=True, text=True)
    path = r.stdout.strip()
    return os.path.realpath(path) if r.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def available() -> str | None:
    """None if the sanitizers can be used here, else why not (a skip reason)."""
    for lib in ("libasan.so", "libubsan.so"):
        if _runtime(lib) is None:
            return f"{_compiler()} has no {lib} (install gcc's sanitizer runtimes)"
    return None


def key() -> str:
    """Hash of everything the build's output depends on."""
    h = hashlib.sha256()
    files = sorted(glob.glob(str(ROOT / "csrc" / "**" / "*.[ch]"), recursive=True))
    files += [str(ROOT / "csrc" / "build_core.py"), str(ROOT / "setup.py")]
    for f in files:
        h.update(os.path.relpath(f, ROOT).encode() + b"\0")
        h.update(Path(f).read_bytes() + b"\0")
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True).stdout
    h.update(" ".join(SANITIZE).encode() + b"\0" + version.encode() + b"\0")
    h.update((sys.version + (sysconfig.get_config_var("SOABI") or "")).encode())
    return h.hexdigest()[:16]


def _find_so(d: Path) -> Path | None:
    found = sorted(d.glob("vmm/_core*.so"))
    return found[0] if found else None


def build(verbose: bool = False) -> Path:
    """The sanitized vmm/_core*.so, built now unless the cache already has this key."""
    why = available()
    if why:
        raise BuildError(why)
    dest = cache_root() / key()
    so = _find_so(dest)
    if so:
        return so
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the cache entry and rename: a killed build leaves no half entry, and two
    # concurrent builds of the same key both end with one complete one.
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
    try:
        flags = " ".join(SANITIZE)
        env = dict(os.environ, CFLAGS=(os.environ.get("CFLAGS", "") + " " + flags).strip(),
                   LDFLAGS=(os.environ.get("LDFLAGS", "") + " " + flags).strip())
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-b", str(work / "out"),
                            "-t", str(work / "tmp"), "-j", str(os.cpu_count() or 1)],
                           cwd=ROOT, env=env, capture_output=not verbose, text=True)
        built = _find_so(work / "out")
        if r.returncode != 0 or built is None:
            raise BuildError(f"sanitized core build failed (rc {r.returncode}):\n"
                             f"{(r.stdout or '')[-2000:]}{(r.stderr or '')[-4000:]}")
        (work / "entry" / "vmm").mkdir(parents=True)
        os.replace(built, work / "entry" / "vmm" / built.name)
        try:
            os.rename(work / "entry", dest)
        except OSError:
            if not _find_so(dest):   # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _find_so(dest)


def env(so: Path, base: dict | None = None) -> dict:
    """Environment for a Python child that must run with the sanitized core `so`."""
    e = dict(os.environ if base is None else base)
    preload = [_runtime("libasan.so"), _runtime("libubsan.so")]
    e["LD_PRELOAD"] = " ".join([p for p in preload if p] + ([e["LD_PRELOAD"]] if e.get("LD_PRELOAD") else []))
    e["ASAN_OPTIONS"] = ASAN_OPTIONS
    e["UBSAN_OPTIONS"] = UBSAN_OPTIONS
    e[CORE_ENV] = str(so)
    paths = [str(SITE), str(TESTS), str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else [])
    e["PYTHONPATH"] = os.pathsep.join(paths)
    return e


def report(output: str, context: int = 40) -> str | None:
    """The first sanitizer report in output (with up to `context` lines after its first
    line: the stack), or None."""
    m = _REPORT.search(output)
    if not m:
        return None
    lines = output[m.start():].splitlines()
    return "\n".join(lines[:context])


def check(so: Path, argv: list[str], what: str, timeout: float, extra_env: dict | None = None,
          echo: bool = False) -> str:
    """Runs argv under the sanitized core; its output, or AssertionError naming `what` with
    the sanitizer report quoted (first) if there is one. echo: stream the output too."""
    e = env(so)
    e.update(extra_env or {})
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(argv, cwd=ROOT, env=e, stdout=subprocess.PIPE if echo else out,
                             stderr=subprocess.STDOUT, text=True)
        try:
            if echo:
                for line in p.stdout:
                    out.write(line)
                    sys.stdout.write(line)
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = f"killed after {timeout:.0f} s"
        out.seek(0)
        text = out.read()
    found = report(text)
    if rc != 0 or found:
        raise AssertionError(f"{what} failed under ASan/UBSan (rc {rc})\n"
                             + (f"sanitizer report:\n{found}\n...\n" if found else "")
                             + text[-6000:])
    return text


def fuzz_tests(pytest_args=()) -> list[str]:
    """The ids of the @pytest.mark.fuzz tests (collected without the sanitizers: quicker)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "-m", "fuzz", *pytest_args, str(TESTS)], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                           p for p in [str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")] if p)))
    return [line for line in r.stdout.splitlines() if "::" in line]


def per_fuzzer_seconds(total: float, n: int) -> float:
    """Each fuzzer's budget so that n of them take about `total` seconds under the
    sanitizers: measured, the child pytest's collection costs about 15 s and each test
    about 2 s beyond its budget (start-up, its final checks)."""
    return max(2.0, (total - 15.0 - 2.0 * n) / max(n, 1))


def fuzz_tier(so: Path, seconds: float, timeout: float, pytest_args=(), echo: bool = False) -> str:
    """Every @pytest.mark.fuzz test in a child pytest under the sanitized core, each fuzzer
    with a budget of `seconds`. Its output, or AssertionError (see check())."""
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-m", "fuzz",
            "-o", f"timeout={int(120 + 4 * seconds)}", *pytest_args, str(TESTS)]
    return check(so, argv, "the fuzz tier", timeout, {"VMM_FUZZ_SECONDS": str(seconds)}, echo)


USAGE = """usage: python -m support.sanitized_core [build | fuzz SECONDS [PYTEST ARGS...]]
  build          build the sanitized core (or find it in the cache) and print its path
  fuzz SECONDS   run every fuzz test under it, each fuzzer for SECONDS"""


def main(argv: list[str]) -> int:
    if argv[:1] not in ([], ["build"], ["fuzz"]) or argv[:1] == ["fuzz"] and len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        so = build(verbose=not argv[:1] == ["fuzz"])
        if argv[:1] != ["fuzz"]:
            print(so)
            return 0
        secs = float(argv[1])
        fuzz_tier(so, secs, timeout=3600 + 40 * secs, pytest_args=argv[2:], echo=True)
    except (BuildError, AssertionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
