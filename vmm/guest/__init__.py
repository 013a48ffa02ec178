"""What runs inside the guest, built on the host and cached by its inputs: the guest kernel
(kernel.py, from Debian's linux-source), the test init and its initramfs, and the agent's
initramfs (agent.py)."""
