"""What `msb run` and `msb exec` run (msb-cli.md, "Command resolution"): a command after
`--` replaces the image CMD and is prefixed by the ENTRYPOINT (--entrypoint, else the
image's); with none, ENTRYPOINT + CMD; with neither, the shell."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence

if TYPE_CHECKING:   # only .entrypoint and .shell are read: `msb exec` passes ExecSettings
    from .config import SandboxConfig


def resolve_command(cfg: SandboxConfig, image_cfg: dict, argv: Sequence[str],
                    tty: bool) -> List[str]:
    entrypoint = list(cfg.entrypoint) if cfg.entrypoint else list(image_cfg.get("entrypoint") or [])
    if argv:
        return entrypoint + list(argv)
    cmd = list(image_cfg.get("cmd") or [])
    if entrypoint or cmd:
        return entrypoint + cmd
    # The shell: interactive on a terminal, reading commands from stdin otherwise.
    return [cfg.shell] + (["-i"] if tty else [])
