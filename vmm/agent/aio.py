"""asyncio flavour of the agent client."""
from __future__ import annotations

import asyncio
from typing import List, Optional, Sequence

from .client import DEFAULT_VSOCK_PORT, AgentClient
from .results import DirEntry, ExecResult, FileStat, ReadyInfo


class AsyncAgentClient:
    """asyncio flavour: the blocking client's calls run in worker threads.

    Frames are demultiplexed by the client's one reader thread either way; the threads
    here only wait, so hundreds of concurrent execs across sandboxes cost threads but no
    extra sockets. exec_stream is an async iterator over the output.
    """

    def __init__(self, client: AgentClient):
        self.client = client

    @classmethod
    async def connect(cls, path: str, port: Optional[int] = DEFAULT_VSOCK_PORT,
                      timeout: float = 10.0) -> "AsyncAgentClient":
        return cls(await asyncio.to_thread(AgentClient.connect, path, port, timeout))

    async def wait_ready(self, timeout: Optional[float] = None) -> ReadyInfo:
        return await asyncio.to_thread(self.client.wait_ready, timeout)

    async def exec(self, argv: Sequence[str], **kw) -> ExecResult:
        return await asyncio.to_thread(lambda: self.client.exec(argv, **kw))

    async def exec_stream(self, argv: Sequence[str], **kw):
        proc = await asyncio.to_thread(lambda: self.client.exec_stream(argv, **kw))
        while True:
            ev = await asyncio.to_thread(proc.next_event)
            if ev is None:
                return
            yield ev

    async def read(self, path: str, **kw) -> bytes:
        return await asyncio.to_thread(lambda: self.client.fs.read(path, **kw))

    async def write(self, path: str, data, **kw) -> int:
        return await asyncio.to_thread(lambda: self.client.fs.write(path, data, **kw))

    async def stat(self, path: str) -> FileStat:
        return await asyncio.to_thread(self.client.fs.stat, path)

    async def list(self, path: str) -> List[DirEntry]:
        return await asyncio.to_thread(self.client.fs.list, path)

    async def mkdir(self, path: str, **kw) -> None:
        await asyncio.to_thread(lambda: self.client.fs.mkdir(path, **kw))

    async def remove(self, path: str, **kw) -> None:
        await asyncio.to_thread(lambda: self.client.fs.remove(path, **kw))

    async def shutdown(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.client.shutdown, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
