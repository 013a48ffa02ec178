"""vmm.research: the boot-latency lab (issue 13): measurements a researcher runs on the
monitor, each in its own module (density.py: many sandboxes at once)."""
