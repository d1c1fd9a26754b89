"""A minimal keep-alive HTTP/1.1 JSON client for load benchmarks on loopback (not a benchmark itself).

Why: a load generator shares the machine's cores with the server it measures. httpx, the project's
client, costs ~2 ms of CPU per request at 32 concurrent (its connection pool's bookkeeping grows
with the pool), as much as the tool-server's whole text search, so on 2 cores it measured mostly
itself and its own scheduling tail. This client costs ~0.2 ms: one connection per concurrent
caller, the request written in one piece, the status line and ``Content-Length`` read, the body
parsed as JSON. It speaks exactly what the tool-server answers (uvicorn: HTTP/1.1, keep-alive,
``Content-Length``); anything else (chunked bodies, redirects, TLS) is refused, not handled.

    async with LoopbackClient("http://127.0.0.1:8080", headers={"Authorization": "Bearer t"}) as c:
        status, body = await c.post_json("/v1/text_search", {"query": "x", "top_k": 10})
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class LoopbackClient:
    """One keep-alive connection; use one client per concurrent caller."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout_s: float = 30.0):
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None or url.port is None:
            raise ValueError(f"{base_url!r}: LoopbackClient speaks plain http://host:port only")
        self.host, self.port, self.timeout_s = url.hostname, url.port, timeout_s
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {url.hostname}:{url.port}\r\n{extra}Content-Type: application/json\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LoopbackClient:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """``(status, parsed JSON body)`` of ``POST path`` with ``body`` as JSON."""
        return await asyncio.wait_for(self._post(path, json.dumps(body).encode()), self.timeout_s)

    async def _post(self, path: str, data: bytes) -> tuple[int, Any]:
        assert self._reader is not None and self._writer is not None, "use `async with`"
        self._writer.write(f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(data)}\r\n\r\n".encode()
                           + data)
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        if "content-length" not in fields:
            raise RuntimeError(f"{path}: answer without Content-Length ({fields.get('transfer-encoding')})")
        payload = await self._reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            raise RuntimeError(f"{path}: the server closed the connection (HTTP {status})")
        return status, json.loads(payload)
