"""Which of the upstream's response headers the caller gets (pure).

Only those an OpenAI client acts on or shows: when to retry (``retry-after``,
``retry-after-ms``), the request id to quote to the provider (``x-request-id``), the
processing time (``openai-processing-ms``) and the rate-limit budget (``x-ratelimit-*``).
An allow-list, so hop-by-hop headers (``connection``, ``transfer-encoding``, ...), the
body's framing (``content-length``, ``content-encoding``: the gateway's body is already
decompressed) and ``set-cookie`` never pass.
"""

from __future__ import annotations

from collections.abc import Iterable

FORWARDED = frozenset({b"retry-after", b"retry-after-ms", b"x-request-id", b"openai-processing-ms"})
RATE_LIMIT_PREFIX = b"x-ratelimit-"


def forwarded_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers (raw, as aiohttp keeps them) that the caller's response carries."""
    return [
        (name, value)
        for name, value in ((name.lower(), value) for name, value in raw)
        if name in FORWARDED or name.startswith(RATE_LIMIT_PREFIX)
    ]
