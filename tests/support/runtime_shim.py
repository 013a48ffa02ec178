"""A stand-in for containerd's runc shim, for tests: it becomes a child subreaper, runs
`vmm-runtime ... create --pid-file F ID` with the container's stdout and stderr going to
files, then waits for the pid in F (the monitor, reparented to us when `create` exits)
exactly as the shim waits for a container's init, and reports its exit status.

    python -m support.runtime_shim ROOT BUNDLE ID STDOUT STDERR [create args...]

Prints `pid=<n>` once created (or `create=<rc>` and exits if create failed), then
`exit=<status>` when the container has ended (128+N if the monitor died of signal N).
"""
import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv):
    root, bundle, cid, out_path, err_path, *extra = argv
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid_file = os.path.join(os.path.dirname(out_path), f"{cid}.pid")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        r = subprocess.run([sys.executable, "-m", "vmm.runtime", "--root", root, "create",
                            "--bundle", bundle, "--pid-file", pid_file, *extra, cid],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    if r.returncode != 0:
        print(f"create={r.returncode}", flush=True)
        return 0
    with open(pid_file) as f:
        pid = int(f.read())
    print(f"pid={pid}", flush=True)
    while True:
        got, status = os.waitpid(-1, 0)
        if got == pid:
            break
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    print(f"exit={code}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
