"""The pooled HTTP client to the teacher: any OpenAI-compatible endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from protege.config import TeacherSettings
from protege.serving.gateway.headers import forwarded_headers


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    content_type: str
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # those the caller gets too


class TeacherClient:
    """Posts request bodies unchanged to ``<url><path>``; the API key never leaves here.

    ``path`` is the caller's path below ``/v1``: ``/chat/completions``, ``/responses``,
    ``/completions``, ``/embeddings``.
    """

    def __init__(self, settings: TeacherSettings, connections: int = 512) -> None:
        if settings.url is None:
            raise ValueError(
                "teacher.url is not set; set PROTEGE_TEACHER__URL to an OpenAI-compatible /v1 URL"
            )
        self.base_url = str(settings.url).rstrip("/")
        self.timeout_seconds = settings.timeout_seconds
        self._headers = {"Content-Type": "application/json"}
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=self.timeout_seconds),
                headers=self._headers,
                auto_decompress=True,
            )
        return self._session

    async def complete(self, body: bytes, path: str = "/chat/completions") -> UpstreamReply:
        """A non-streamed call: the whole reply, within the call timeout."""
        async with self.session.post(
            self.base_url + path,
            data=body,
            timeout=aiohttp.ClientTimeout(total=self.timeout_seconds, connect=10),
        ) as response:
            return UpstreamReply(
                response.status,
                response.content_type,
                await response.read(),
                forwarded_headers(response.raw_headers),
            )

    async def open_stream(self, body: bytes, path: str = "/chat/completions") -> aiohttp.ClientResponse:
        """Start a streamed call; the caller reads it with :func:`chunks` and releases it."""
        return await self.session.post(self.base_url + path, data=body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it arrives, each network read passed on at once (no re-buffering)."""
    async for data in response.content.iter_any():
        yield data
