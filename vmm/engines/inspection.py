"""What can be asked of a machine's run (Machine.inspect()): before, during and after it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass(frozen=True)
class Inspection:
    """What a machine's engine did, for tests, benchmarks and the curious.

    cmdline: the kernel command line the guest was given, exactly.
    transports: per attached device, in attach order, its name and kind and, on the kvm
      engine, its virtio-mmio transport: base, size, irq, ioeventfd, irqfd (1 if in use),
      status, interrupt_status, notify_exits, notify_events, interrupts, bad_accesses.
    e820: the memory map given to the guest, ((addr, size, type), ...), type 1 RAM,
      2 reserved (kvm; the qemu engine leaves that to QEMU).
    boot: where the kernel went: kind, entry, boot_arg, kernel_end, initrd_addr,
      initrd_size (kvm).
    exit_stats: exit counts by reason (kvm; TCG has no exits).
    exit_stats_at_boot_timer: the same counts as they stood when the guest first wrote the
      boot timer, that write included, copied by the C core at that exit (kvm; {} until then).
    pid: the engine's own process for the VM (qemu), None when it runs in ours.
    """
    engine: str
    cmdline: str = ""
    transports: Tuple[dict, ...] = ()
    e820: Tuple[Tuple[int, int, int], ...] = ()
    boot: dict = field(default_factory=dict)
    exit_stats: dict = field(default_factory=dict)
    exit_stats_at_boot_timer: dict = field(default_factory=dict)
    pid: Optional[int] = None
