"""How much host memory a process holds, from Linux's own accounting.

    mem = read_memory(pid)          # ProcMemory, sizes in KiB
    mem.pss, mem.pss_shmem, mem.rss_beyond_shmem
    children(pid)                   # pids of its direct children

RSS counts every page a process maps, so pages several processes share (QEMU's binary and
libraries, the guest kernel file every QEMU maps, guest RAM which QEMU and our vhost-user
devices both map) are counted once per process. PSS splits each shared page among its
users: summed over processes it is the memory they really take, so density is reported
in PSS, with RSS beside it for comparison with other tools.

/proc/<pid>/smaps_rollup gives the PSS split (anon, file, shmem) in one read;
/proc/<pid>/status gives RSS split the same way (RssShmem is guest RAM for QEMU).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

ROLLUP_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Anonymous", "Swap")
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")


@dataclass(frozen=True)
class ProcMemory:
    """One process's memory in KiB (threads: a count)."""
    rss: int = 0
    rss_anon: int = 0
    rss_file: int = 0
    rss_shmem: int = 0
    pss: int = 0
    pss_anon: int = 0
    pss_file: int = 0
    pss_shmem: int = 0
    swap: int = 0
    threads: int = 0

    @property
    def rss_beyond_shmem(self) -> int:
        """RSS without shared memory (for QEMU: without guest RAM)."""
        return self.rss_anon + self.rss_file

    @property
    def pss_beyond_shmem(self) -> int:
        return self.pss - self.pss_shmem

    def __add__(self, other: "ProcMemory") -> "ProcMemory":
        a, b = asdict(self), asdict(other)
        return ProcMemory(**{k: a[k] + b[k] for k in a})

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)


def parse_kib_fields(text: str) -> Dict[str, int]:
    """`Name:   1234 kB` lines (smaps_rollup, status) -> {"Name": 1234}; lines of another
    shape (smaps_rollup's address header, status's text fields) are skipped, and a size
    in another unit is refused rather than misread."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or " " in key.strip():
            continue
        parts = value.split()
        if not parts or not parts[0].isdigit():
            continue
        if len(parts) == 2 and parts[1] != "kB":
            raise ValueError(f"{key}: unexpected unit {parts[1]!r} (expected kB)")
        if len(parts) > 2:
            continue
        out[key.strip()] = int(parts[0])
    return out


def parse_smaps_rollup(text: str) -> Dict[str, int]:
    """The fields of /proc/<pid>/smaps_rollup this module uses, in KiB (0 when a kernel
    does not report one: Pss_Anon/File/Shmem came in Linux 5.6)."""
    fields = parse_kib_fields(text)
    if "Rss" not in fields or "Pss" not in fields:
        raise ValueError("not a smaps_rollup: no Rss and Pss lines")
    return {k: fields.get(k, 0) for k in ROLLUP_FIELDS}


def parse_status(text: str) -> Dict[str, int]:
    """The memory fields of /proc/<pid>/status (Threads is a bare count, not kB)."""
    out = {k: 0 for k in STATUS_FIELDS}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in STATUS_FIELDS and value.split():
            out[key] = int(value.split()[0])
    return out


def memory_from(rollup_text: str, status_text: str) -> ProcMemory:
    r, s = parse_smaps_rollup(rollup_text), parse_status(status_text)
    return ProcMemory(rss=r["Rss"], rss_anon=s["RssAnon"], rss_file=s["RssFile"],
                      rss_shmem=s["RssShmem"], pss=r["Pss"], pss_anon=r["Pss_Anon"],
                      pss_file=r["Pss_File"], pss_shmem=r["Pss_Shmem"], swap=r["Swap"],
                      threads=s["Threads"])


def read_memory(pid: int) -> ProcMemory:
    """pid's memory now. Raises ProcessLookupError if it is gone (or a zombie: a zombie's
    smaps_rollup is empty)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            rollup = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    if not rollup.strip():
        raise ProcessLookupError(pid)
    return memory_from(rollup, status)


def comm(pid: int) -> str:
    """The process's command name ("" if it is gone)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def parent_and_state(stat_text: str) -> Tuple[int, str]:
    """(parent pid, state letter) from a /proc/<pid>/stat line. The command name, in
    parentheses, may itself hold spaces and parentheses: the fields after the last ')'
    are fixed."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def children(pid: int) -> List[int]:
    """Live direct children of pid, found by each process's parent in /proc/<pid>/stat
    (the kernel's own children lists need CONFIG_PROC_CHILDREN, which not every host
    has). Zombies are left out: they hold no memory, and their waiter reaps them."""
    found: List[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                parent, state = parent_and_state(f.read())
        except (OSError, IndexError, ValueError):
            continue   # gone while we looked
        if parent == pid and state != "Z":
            found.append(int(name))
    return sorted(found)
