"""The exceptions vmm raises. Every message names the bad value and, where one exists, the fix."""


class VmmError(Exception):
    """Base of every error vmm raises on purpose."""

    # The C core's own message when the error came from it (vmm._binding.check), else None.
    core_message = None


class ConfigError(VmmError, ValueError):
    """Bad input from the caller: a missing file, not a kernel, too little memory, ..."""


class EngineUnavailable(VmmError):
    """The requested engine cannot run on this host (no /dev/kvm, no qemu-system-x86_64)."""


class GuestError(VmmError):
    """The guest or the engine failed while running (KVM internal error, triple fault, ...)."""
