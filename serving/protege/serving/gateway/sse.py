"""What the gateway does to server-sent event streams on their way to the caller (pure).

- A teacher's stream the gateway asked usage for (the caller did not): :class:`UsageFilter`
  takes the usage back out, so the caller sees what it asked for while the record gets
  the usage. Events without ``"usage"`` in them pass as the bytes that came.
- A specialist's token stream: :class:`SpecialistChunks` puts the model name the caller
  asked for in each chunk (and drops the usage it did not ask for); :class:`ResponsesEvents`
  turns the chunks into Responses API events.

Each takes network reads split anywhere and gives whole events: ``feed`` returns the bytes
for the caller and the bytes for the call record; ``close`` what is left at the end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Protocol

from protege.api.responses import ResponsesStream
from protege.capture.assemble import event_data


class StreamTransform(Protocol):
    def start(self) -> bytes: ...  # bytes that precede the upstream's first

    def feed(self, data: bytes) -> tuple[bytes, bytes]: ...  # (to the caller, to the record)

    def close(self) -> tuple[bytes, bytes]: ...

    def error_event(self, message: str, kind: str) -> bytes: ...


# --- the request side ---------------------------------------------------------------------


def wants_usage(request: dict[str, Any]) -> bool:
    """Whether a streamed chat or completions request asked for the usage chunk itself."""
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def with_usage(body: bytes, request: dict[str, Any]) -> bytes:
    """``body`` asking for the usage chunk too (``stream_options.include_usage``).

    Without ``stream_options`` in the request, the field is spliced in front of the others
    and the caller's bytes are otherwise kept; with one, the body is written anew.
    """
    if "stream_options" not in request:
        start = body.index(b"{") + 1
        return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]
    options = request["stream_options"] if isinstance(request["stream_options"], dict) else {}
    return json.dumps({**request, "stream_options": {**options, "include_usage": True}}).encode()


# --- event framing -----------------------------------------------------------------------

_SEPARATORS = (b"\n\n", b"\r\n\r\n")


def _whole(buffer: bytes) -> int:
    """How many bytes of ``buffer`` are whole events (up to and with the last blank line)."""
    return max(
        (at + len(separator) for separator in _SEPARATORS if (at := buffer.rfind(separator)) >= 0),
        default=0,
    )


def _events(data: bytes) -> Iterator[bytes]:
    """Whole events, each with its blank line (``data`` holds only whole events)."""
    start = 0
    while start < len(data):
        ends = [(at, len(sep)) for sep in _SEPARATORS if (at := data.find(sep, start)) >= 0]
        if not ends:
            yield data[start:]
            return
        at, length = min(ends)
        yield data[start : at + length]
        start = at + length


def _json_event(event: bytes) -> dict[str, Any] | None:
    payload = event_data(event)
    if payload is None or payload.strip() == b"[DONE]":
        return None
    try:
        chunk = json.loads(payload)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def _data_event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chat_error_event(message: str, kind: str) -> bytes:
    """The error event that ends a broken chat or completions stream (as OpenAI sends it)."""
    error = {"message": message, "type": "upstream_error", "param": None, "code": kind}
    return _data_event({"error": error})


def responses_error_event(message: str, kind: str, sequence: int) -> bytes:
    """The error event that ends a broken Responses stream."""
    data = {"type": "error", "sequence_number": sequence, "code": kind, "message": message, "param": None}
    return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"


class _Framed:
    """Holds back a partial event until its end arrives."""

    def __init__(self) -> None:
        self._tail = b""

    def _whole_events(self, data: bytes) -> bytes:
        if self._tail:
            data, self._tail = self._tail + data, b""
        end = _whole(data)
        if end < len(data):
            data, self._tail = data[:end], data[end:]
        return data

    def start(self) -> bytes:
        return b""

    def error_event(self, message: str, kind: str) -> bytes:
        return chat_error_event(message, kind)


# --- the teacher's stream --------------------------------------------------------------------

# OpenAI puts "usage": null in every chunk once usage is asked for. Such a key cannot be
# inside a JSON string (a string's quotes are escaped), so it is removed as text.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,\s*')


class UsageFilter(_Framed):
    """The caller's view of a stream the gateway asked usage for: the usage-only chunk dropped,
    ``"usage": null`` removed; every other byte as it came. The record sees all of it."""

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        whole = self._whole_events(data)
        if b'"usage"' not in whole:
            return whole, data
        return b"".join(self._without_usage(event) for event in _events(whole)), data

    def close(self) -> tuple[bytes, bytes]:
        tail, self._tail = self._tail, b""
        return (self._without_usage(tail) if tail else b""), b""

    @staticmethod
    def _without_usage(event: bytes) -> bytes:
        if b'"usage"' not in event:
            return event
        chunk = _json_event(event)
        if chunk is None or "usage" not in chunk:
            return event
        if chunk["usage"] is None:
            return _NULL_USAGE.sub(b"", event, count=1)
        if not chunk.get("choices"):
            return b""  # the usage-only chunk the caller did not ask for
        del chunk["usage"]
        return _data_event(chunk)


# --- a specialist's token stream -------------------------------------------------------------


class SpecialistChunks(_Framed):
    """A specialist's chat chunks as the caller's: its model name, usage only if asked for."""

    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__()
        self.model = model
        self.include_usage = include_usage

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        return self._convert(self._whole_events(data))

    def close(self) -> tuple[bytes, bytes]:
        tail, self._tail = self._tail, b""
        return self._convert(tail)

    def _convert(self, whole: bytes) -> tuple[bytes, bytes]:
        caller, record = [], []
        for event in _events(whole):
            chunk = _json_event(event)
            if chunk is None or "error" in chunk:
                caller.append(event)
                record.append(event)
                continue
            chunk["model"] = self.model
            written = _data_event(chunk)
            record.append(written)
            if "usage" in chunk and not self.include_usage:
                if not chunk.get("choices"):
                    continue
                del chunk["usage"]
                written = _data_event(chunk)
            caller.append(written)
        return b"".join(caller), b"".join(record)


class ResponsesEvents(_Framed):
    """A specialist's chat chunks as Responses API events (:class:`ResponsesStream`)."""

    def __init__(self, writer: ResponsesStream) -> None:
        super().__init__()
        self.writer = writer
        self.ended = False

    def start(self) -> bytes:
        return self.writer.start()

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        events = self._convert(self._whole_events(data))
        return events, events

    def close(self) -> tuple[bytes, bytes]:
        tail, self._tail = self._tail, b""
        events = self._convert(tail)
        if not self.ended:  # the engine ended without [DONE]: what came is the answer
            self.ended = True
            events += self.writer.finish()
        return events, events

    def _convert(self, whole: bytes) -> bytes:
        out = []
        for event in _events(whole):
            if self.ended:
                continue
            if (event_data(event) or b"").strip() == b"[DONE]":
                self.ended = True
                out.append(self.writer.finish())
                continue
            chunk = _json_event(event)
            if chunk is None:
                continue
            if "error" in chunk and "choices" not in chunk:
                error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
                self.ended = True
                out.append(self.writer.fail(str(error.get("message") or error), "specialist_error"))
                continue
            out.append(self.writer.chunk(chunk))
        return b"".join(out)

    def error_event(self, message: str, kind: str) -> bytes:
        self.ended = True
        return self.writer.fail(message, kind)
