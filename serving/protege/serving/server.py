"""Run an ASGI app with uvicorn on a background thread (tests, benchmarks, `protege up`)."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn

from protege.config import GatewaySettings
from protege.services.process import free_port


class ServerThread:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, **options: Any) -> None:
        self.host = host
        self.port = port or free_port(host)
        # Idle connections outlive the clients' own pool expiry (httpx: 5 s, aiohttp: 15 s), so a
        # client never sends on a connection the server is closing at that moment: the gateway's rule.
        options.setdefault("timeout_keep_alive", GatewaySettings.model_fields["keep_alive_seconds"].default)
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", access_log=False, **options
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name=f"uvicorn:{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> Self:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
