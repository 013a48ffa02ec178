"""The runtime part of an image config: what to run, as whom, where, with which env.

Fields are copied only when they have the documented type; a hostile config with, say,
a dict for Cmd yields no Cmd rather than a crash deep in the runtime.
"""
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class ImageConfig:
    entrypoint: Optional[list] = None
    cmd: Optional[list] = None
    env: list = field(default_factory=list)
    working_dir: Optional[str] = None
    user: Optional[str] = None
    exposed_ports: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    stop_signal: Optional[str] = None
    os: Optional[str] = None
    architecture: Optional[str] = None
    variant: Optional[str] = None
    created: Optional[str] = None
    diff_ids: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


def _str_list(v):
    return list(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


def _str(v):
    return v if isinstance(v, str) and v else None


def parse_config(doc: dict) -> ImageConfig:
    c = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    rootfs = doc.get("rootfs") if isinstance(doc.get("rootfs"), dict) else {}
    labels = c.get("Labels") if isinstance(c.get("Labels"), dict) else {}
    ports = c.get("ExposedPorts") if isinstance(c.get("ExposedPorts"), dict) else {}
    return ImageConfig(
        entrypoint=_str_list(c.get("Entrypoint")),
        cmd=_str_list(c.get("Cmd")),
        env=_str_list(c.get("Env")) or [],
        working_dir=_str(c.get("WorkingDir")),
        user=_str(c.get("User")),
        exposed_ports=sorted(p for p in ports if isinstance(p, str)),
        labels={k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)},
        stop_signal=_str(c.get("StopSignal")),
        os=_str(doc.get("os")),
        architecture=_str(doc.get("architecture")),
        variant=_str(doc.get("variant")),
        created=_str(doc.get("created")),
        diff_ids=_str_list(rootfs.get("diff_ids")) or [],
    )
