"""Capture (S1): the call-log publisher, its journal and shipper, its disk spool, and the listener SDK.

Names are imported on first use, so that a process needing one part (a gateway's shipper
process) does not load the others (the SDK loads the OpenAI client).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protege.capture.connection import NatsEndpoint
    from protege.capture.publisher import BackgroundPublisher, CallLogPublisher
    from protege.capture.recorder import CallObserver, RecordSink
    from protege.capture.sdk import (
        AsyncCapturingTransport,
        CapturingTransport,
        capture_openai,
        capture_tenant,
    )
    from protege.capture.shipper import PublisherStats, StreamSettings, ensure_stream
    from protege.capture.spool import DiskSpool, SpoolFullError, SpoolInUseError

_HOMES = {
    "NatsEndpoint": "connection",
    "BackgroundPublisher": "publisher",
    "CallLogPublisher": "publisher",
    "CallObserver": "recorder",
    "RecordSink": "recorder",
    "AsyncCapturingTransport": "sdk",
    "CapturingTransport": "sdk",
    "capture_openai": "sdk",
    "capture_tenant": "sdk",
    "PublisherStats": "shipper",
    "StreamSettings": "shipper",
    "ensure_stream": "shipper",
    "DiskSpool": "spool",
    "SpoolFullError": "spool",
    "SpoolInUseError": "spool",
}

__all__ = [
    "AsyncCapturingTransport",
    "BackgroundPublisher",
    "CallLogPublisher",
    "CallObserver",
    "CapturingTransport",
    "DiskSpool",
    "NatsEndpoint",
    "PublisherStats",
    "RecordSink",
    "SpoolFullError",
    "SpoolInUseError",
    "StreamSettings",
    "capture_openai",
    "capture_tenant",
    "ensure_stream",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"protege.capture.{_HOMES[name]}"), name)
