"""PII removal before anything is stored: offline detectors and consistent placeholders."""

from protege.pii.detectors import DETECTORS, Finding, PiiType, detect
from protege.pii.redactor import (
    PiiBackend,
    RecordRedaction,
    builtin_backend,
    presidio_backend,
    redact_record,
)
from protege.pii.settings import backend_from_settings

__all__ = [
    "DETECTORS",
    "Finding",
    "PiiBackend",
    "PiiType",
    "RecordRedaction",
    "backend_from_settings",
    "builtin_backend",
    "detect",
    "presidio_backend",
    "redact_record",
]
