"""Advisory file locks between processes (and threads) sharing one MSB_HOME.

flock(2) locks belong to an open file description, so two threads of one process that
each open the lock file exclude each other exactly like two processes do.
"""
import contextlib
import fcntl
import os


@contextlib.contextmanager
def file_lock(path, shared=False):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)       # closing releases the lock
