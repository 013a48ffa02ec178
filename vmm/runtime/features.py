"""What `vmm-runtime features` reports: the OCI runtime features document (the shape
runc's `features` prints), with the limits a VM puts on it named under "annotations"."""
from __future__ import annotations

from ..agent.capabilities import NAMES as CAPABILITIES
from .bundle import ANNOTATION_CPUS, ANNOTATION_MEMORY, HOST_ONLY_LINUX, NAMESPACES
from .hooks import RUNTIME_STAGES

MOUNT_OPTIONS = ("bind", "rbind", "ro", "rw", "rro", "rrw", "nosuid", "nodev", "noexec")


def features() -> dict:
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.0.2",
        "hooks": list(RUNTIME_STAGES),   # createContainer/startContainer: not run (hooks.py)
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": list(NAMESPACES),
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": False, "v2": False, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {
            "io.github.vmm.runtime": "microvm",
            "io.github.vmm.sizing": f"{ANNOTATION_CPUS}, {ANNOTATION_MEMORY} (annotations); "
                                    "linux.resources.cpu and .memory size the VM",
            "io.github.vmm.not-applied": "; ".join(sorted(HOST_ONLY_LINUX)),
            "io.github.vmm.pod": "one VM per pod: the CRI sandbox container boots it, the "
                                 "pod's containers run in it (io.kubernetes.cri.* or "
                                 "io.kubernetes.cri-o.* annotations), each in its own root",
        },
    }
