"""asyncio flavour of Sandbox, for programs that run many at once.

The blocking calls run in worker threads; each sandbox's frames are still read by its
one client thread, so waiting costs a thread per call in flight, not a socket.
"""
from __future__ import annotations

import asyncio
from typing import Optional, Sequence, Tuple

from ..agent import ExecResult, Process
from ..machine import ExitStatus
from .sandbox import DEFAULT_STOP_TIMEOUT, Sandbox
from .writable_disk import format_writable_disk


class AsyncProcess:
    """asyncio view of a Process: await write/close_stdin/wait; `async for` over output."""

    def __init__(self, proc: Process):
        self.process = proc
        self.pid = proc.pid

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self.process.write, data)

    async def close_stdin(self) -> None:
        await asyncio.to_thread(self.process.close_stdin)

    def signal(self, signo: int) -> None:
        self.process.signal(signo)

    def resize(self, rows: int, cols: int) -> None:
        self.process.resize(rows, cols)

    async def wait(self, timeout: Optional[float] = None) -> ExecResult:
        return await asyncio.to_thread(self.process.wait, timeout)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Tuple[str, bytes]:
        ev = await asyncio.to_thread(self.process.next_event)
        if ev is None:
            raise StopAsyncIteration
        return ev


class AsyncFs:
    """asyncio view of Sandbox.fs; each call looks the sandbox's fs up anew, so a stopped
    sandbox raises SandboxNotRunning as the blocking one does."""

    def __init__(self, sandbox: Sandbox):
        self._sb = sandbox

    async def read(self, path: str, **kw) -> bytes:
        return await asyncio.to_thread(lambda: self._sb.fs.read(path, **kw))

    async def write(self, path: str, data, **kw) -> int:
        return await asyncio.to_thread(lambda: self._sb.fs.write(path, data, **kw))

    async def stat(self, path: str, **kw):
        return await asyncio.to_thread(lambda: self._sb.fs.stat(path, **kw))

    async def list(self, path: str, **kw):
        return await asyncio.to_thread(lambda: self._sb.fs.list(path, **kw))

    async def mkdir(self, path: str, **kw) -> None:
        await asyncio.to_thread(lambda: self._sb.fs.mkdir(path, **kw))

    async def remove(self, path: str, **kw) -> None:
        await asyncio.to_thread(lambda: self._sb.fs.remove(path, **kw))


class AsyncSandbox:
    """asyncio flavour of Sandbox for programs that run many at once.

    The blocking calls run in worker threads; each sandbox's frames are still read by
    its one client thread, so waiting costs a thread per call in flight, not a socket.
    """

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self.fs = AsyncFs(sandbox)

    @classmethod
    async def create(cls, image_disk=None, **kw) -> "AsyncSandbox":
        return cls(await asyncio.to_thread(lambda: Sandbox.create(image_disk, **kw)))

    format_writable_disk = staticmethod(format_writable_disk)

    async def exec(self, argv: Sequence[str], **kw) -> ExecResult:
        return await asyncio.to_thread(lambda: self.sandbox.exec(argv, **kw))

    async def exec_stream(self, argv: Sequence[str], **kw) -> AsyncProcess:
        return AsyncProcess(await asyncio.to_thread(lambda: self.sandbox.exec_stream(argv, **kw)))

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> ExitStatus:
        return await asyncio.to_thread(self.sandbox.stop, timeout)

    @property
    def timeline(self) -> dict:
        return self.sandbox.timeline

    @property
    def running(self) -> bool:
        return self.sandbox.running

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
