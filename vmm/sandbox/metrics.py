"""A running sandbox's resource figures, computed by its supervisor (which owns the VM's
processes and devices) for `msb metrics`.

    cpu_percent       CPU time of the supervisor and its children (QEMU, passt) since the
                      previous sample, over the wall time between them (100 = one core)
    memory_bytes      the guest's memory in use (MemTotal - MemAvailable of its
                      /proc/meminfo, read through the agent); the host RSS when the agent
                      does not answer
    host_rss_bytes    resident memory of the supervisor and its children, on the host
    disk_*_bytes      our virtio-blk devices' byte counters (csrc: vmm_vdev_counters)
    net_rx/tx_bytes   our virtio-net devices': rx = delivered to the guest, tx = taken from it
    uptime_secs       since the sandbox became ready

The device counters come from the devices themselves: on the qemu engine they are served
by vhost-user back ends running inside the supervisor process (vmm/engines/
vhost_backends.py), on the kvm engine they are in-process devices; Machine.device_stats
reads either.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from typing import Optional

import psutil

MEMINFO_TIMEOUT_S = 2.0


def _processes():
    me = psutil.Process(os.getpid())
    out = [me]
    try:
        out += me.children(recursive=True)
    except psutil.Error:
        pass
    return out


def _cpu_and_rss():
    cpu = 0.0
    rss = 0
    for p in _processes():
        try:
            with p.oneshot():
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
        except psutil.Error:
            continue   # ended between listing and reading
    return cpu, rss


def guest_memory(sandbox) -> Optional[dict]:
    """{"total": bytes, "available": bytes} from the guest's /proc/meminfo, or None."""
    try:
        text = sandbox.fs.read("/proc/meminfo").decode(errors="replace")
    except Exception:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    if "MemTotal" not in values:
        return None
    return {"total": values["MemTotal"],
            "available": values.get("MemAvailable", values.get("MemFree", 0))}


class Metrics:
    """Samples for one running sandbox; sample() is safe from several threads."""

    def __init__(self, sandbox, memory_limit_bytes: int):
        self._sb = sandbox
        self._limit = memory_limit_bytes
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._prev = (time.monotonic(), _cpu_and_rss()[0])

    def sample(self, name: str) -> dict:
        with self._lock:
            now = time.monotonic()
            cpu, rss = _cpu_and_rss()
            prev_t, prev_cpu = self._prev
            self._prev = (now, cpu)
        wall = now - prev_t
        cpu_percent = 100.0 * (cpu - prev_cpu) / wall if wall > 0 else 0.0
        guest = guest_memory(self._sb)
        disk_r = disk_w = rx = tx = 0
        for dev in self._sb.machine.device_stats:
            if dev["kind"] == "blk":
                disk_r += dev.get("bytes_read", 0)
                disk_w += dev.get("bytes_written", 0)
            elif dev["kind"] == "net":
                rx += dev.get("bytes_read", 0)
                tx += dev.get("bytes_written", 0)
        return {
            "name": name,
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu_percent": round(max(cpu_percent, 0.0), 1),
            "memory_bytes": guest["total"] - guest["available"] if guest else rss,
            "memory_limit_bytes": self._limit,
            "disk_read_bytes": disk_r,
            "disk_write_bytes": disk_w,
            "net_rx_bytes": rx,
            "net_tx_bytes": tx,
            "uptime_secs": int(now - self._started),
            "host_rss_bytes": rss,
            "guest_memory_total_bytes": guest["total"] if guest else None,
        }
