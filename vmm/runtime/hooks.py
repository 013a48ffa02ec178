"""OCI hooks, run as runc runs them: each a program given the container's state as JSON on
its stdin, with its own args (args[0] is its argv[0]), env and timeout.

Docker needs them: its bridge network is set up by a `prestart` hook (dockerd's own
binary, `libnetwork-setkey`) that reads the state's pid and moves the container's veth
into /proc/PID/ns/net. So the container's pid must be in the container's new network
namespace when the hooks run (the monitor unshares one, netns.new_namespace), and the
VM then takes over whatever interface the hook left there.

The stages that run in the runtime's namespace are run: `prestart` and `createRuntime`
during create (after the namespace exists, before the VM takes its interface; a failure
fails create, as runc), `poststart` after start and `poststop` at delete (a failure is
logged, as runc). `createContainer` and `startContainer` run inside the container in
runc; a VM's guest is not where host programs run, so they are not run and are named in
the container's not-applied notes.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ConfigError

RUNTIME_STAGES = ("prestart", "createRuntime", "poststart", "poststop")
CONTAINER_STAGES = ("createContainer", "startContainer")
MAX_HOOKS = 64
MAX_ARGS = 4096
MAX_STRING = 64 << 10
DEFAULT_TIMEOUT_S = 120   # runc has none; a hook that never ends must not hold create forever
OUTPUT_MAX = 4096         # of a failed hook's stdout/stderr, in the error


class HookError(ConfigError):
    """A hook is malformed in config.json, or a hook that must succeed failed."""


@dataclass(frozen=True)
class Hook:
    path: str
    args: Tuple[str, ...]
    env: Optional[Tuple[str, ...]]
    timeout: Optional[int]


def parse_hooks(raw: Any, notes: List[str]) -> Tuple[Tuple[str, Hook], ...]:
    """config.json's "hooks" as (stage, Hook) pairs in order; HookError naming a bad field.
    Container-side stages are noted in notes (not run)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise HookError("hooks: not an object")
    out: List[Tuple[str, Hook]] = []
    for stage, hooks in raw.items():
        if stage not in RUNTIME_STAGES + CONTAINER_STAGES:
            raise HookError(f"hooks.{stage}: unknown hook stage")
        if hooks is None:
            continue
        if not isinstance(hooks, list) or len(hooks) > MAX_HOOKS:
            raise HookError(f"hooks.{stage}: not a list of at most {MAX_HOOKS} hooks")
        for i, h in enumerate(hooks):
            hook = _hook(h, f"hooks.{stage}[{i}]")
            if stage in CONTAINER_STAGES:
                notes.append(f"hooks.{stage}: not run (it runs inside the container in runc; "
                             "the guest cannot run host programs)")
            else:
                out.append((stage, hook))
    return tuple(out)


def _hook(h: Any, where: str) -> Hook:
    if not isinstance(h, dict):
        raise HookError(f"{where}: not an object")
    path = h.get("path")
    if not _string(path) or not path.startswith("/"):
        raise HookError(f"{where}.path: not an absolute path")
    args = _strings(h.get("args"), f"{where}.args")
    env = _strings(h.get("env"), f"{where}.env") if h.get("env") is not None else None
    timeout = h.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or not 1 <= timeout <= 86400):
        raise HookError(f"{where}.timeout: not a whole number of seconds from 1 to 86400")
    return Hook(path, args, env, timeout)


def _string(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_STRING and "\0" not in v


def _strings(v: Any, where: str) -> Tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or len(v) > MAX_ARGS or not all(_string(s) for s in v):
        raise HookError(f"{where}: not a list of strings")
    return tuple(v)


def run_hooks(hooks, stage: str, state: Dict[str, Any], log, must_succeed: bool) -> None:
    """Runs the hooks of one stage in order with state on stdin. A failure raises
    HookError when must_succeed (create's stages), else is logged and the rest still run."""
    data = json.dumps(state).encode()
    for n, hook in enumerate(h for s, h in hooks if s == stage):
        try:
            _run_one(hook, data)
        except HookError as e:
            msg = f"error running {stage} hook #{n}: {e}"
            if must_succeed:
                raise HookError(msg) from None
            log.warning(msg)


def _run_one(hook: Hook, state: bytes) -> None:
    argv0 = hook.args[0] if hook.args else hook.path
    timeout = hook.timeout or DEFAULT_TIMEOUT_S
    try:
        r = subprocess.run([argv0, *hook.args[1:]], executable=hook.path, input=state,
                           capture_output=True, env=_env(hook.env), timeout=timeout,
                           close_fds=True)
    except subprocess.TimeoutExpired:
        raise HookError(f"timeout after {timeout} seconds") from None
    except OSError as e:
        raise HookError(f"{hook.path}: {e.strerror}") from None
    if r.returncode != 0:
        status = f"exit status {r.returncode}" if r.returncode > 0 else \
            f"signal: {-r.returncode}"
        raise HookError(f"{status}, stdout: {_tail(r.stdout)}, stderr: {_tail(r.stderr)}")


def _env(env: Optional[Tuple[str, ...]]) -> Dict[str, str]:
    """The hook's env exactly as given (runc passes nothing else)."""
    out = {}
    for item in env or ():
        k, sep, v = item.partition("=")
        if sep and k:
            out[k] = v
    return out


def _tail(b: bytes) -> str:
    return b[-OUTPUT_MAX:].decode(errors="replace").strip()


def hook_state(cid: str, status: str, pid: int, bundle_path: str, annotations: Dict[str, str]) -> dict:
    """The state a hook reads, as runc gives it (its pid: the container's)."""
    from .state import OCI_VERSION
    out = {"ociVersion": OCI_VERSION, "id": cid, "status": status, "pid": pid,
           "bundle": bundle_path}
    if annotations:
        out["annotations"] = dict(annotations)
    return out
