"""Sandbox networking: the Network config (network.py), published ports (ports.py) and the
egress policy (policy.py) our virtio-net device enforces on the guest's transmit path.

`Network` is exported lazily, so `import vmm.net` loads neither the C core nor sockets."""

__all__ = ["Network"]


def __getattr__(name):
    if name == "Network":
        from .network import Network
        return Network
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
